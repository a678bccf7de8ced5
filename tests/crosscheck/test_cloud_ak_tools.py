"""The development cloud CA provisions a swtpm as GCE provisions a Shielded VM: tpm2-tools
reads the same AK template and certificate from NV 0x01c10003 / 0x01c10002 (with the owner's
auth, as go-tpm-tools reads GCE's), and makes the same key from that template."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from crosscheck.conftest import make_tools
from stockade.evidence.ak_certificate import GCE_INSTANCE_OID, gce_instance
from stockade.evidence.public import TpmPublic
from stockade.evidence.templates import KeyKind, ak_template
from stockade.tpm.cloud_ak import GCE_AK_NV
from stockade.tpm.cloud_ca import DEFAULT_INSTANCE, CloudCa, provision_cloud_ak
from stockade.tpm.device import Tpm


def test_tpm2_nvread_sees_the_gce_template_and_certificate(software_tpm, tmp_path):
    ca = CloudCa.load_or_create(tmp_path / "cloud-ca")
    with Tpm(software_tpm.tcti) as device:
        cloud = provision_cloud_ak(device, ca, KeyKind.ECC)
    tools = make_tools(software_tpm.tcti, tmp_path)
    indices = GCE_AK_NV[KeyKind.ECC]
    assert (indices.certificate, indices.template) == (0x01C10002, 0x01C10003)
    tools("tpm2_nvread", hex(indices.template), "-C", "o", "-o", "template.bin")
    tools("tpm2_nvread", hex(indices.certificate), "-C", "o", "-o", "cert.der")
    template = (tmp_path / "template.bin").read_bytes()
    assert template == ak_template(KeyKind.ECC).marshal()
    assert TpmPublic.unmarshal(template).attributes == ak_template(KeyKind.ECC).attributes
    certificate = x509.load_der_x509_certificate((tmp_path / "cert.der").read_bytes())
    assert certificate.public_bytes(serialization.Encoding.DER) == cloud.certificate
    assert certificate.extensions.get_extension_for_oid(GCE_INSTANCE_OID).critical is False
    assert gce_instance(certificate) == DEFAULT_INSTANCE
    # tpm2-tools, given the same template fields, makes the same key under the endorsement
    # hierarchy: the certificate certifies the key the template gives on this TPM.
    tools(
        "tpm2_createprimary", "-C", "e", "-g", "sha256", "-G", "ecc256:ecdsa-sha256:null",
        "-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign",
        "-c", "ak.ctx",
    )  # fmt: skip
    tools("tpm2_readpublic", "-c", "ak.ctx", "-o", "ak.pub")
    made = TpmPublic.unmarshal_tpm2b((tmp_path / "ak.pub").read_bytes())
    assert made.public_key().public_numbers() == certificate.public_key().public_numbers()
    assert made.marshal() == cloud.ak.public.marshal()
