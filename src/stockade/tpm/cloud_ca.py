"""A project-local "cloud" AK CA: provisions a software TPM the way GCE provisions a Shielded
VM's vTPM, for development and tests.

GCE writes an AK template to NV and the certificate its CA issued for the key that template
gives under the endorsement hierarchy (``stockade.tpm.cloud_ak``); this CA does the same to a
swtpm: ``provision_cloud_ak`` writes the template (restricted signing, fixedTPM, fixedParent,
sensitiveDataOrigin, userWithAuth: ``stockade.evidence.templates.ak_template``) to 0x01c10003
(ECC P-256) or 0x01c10001 (RSA 2048), makes the key, and writes a certificate for it with a
GCE-style instance identity extension to 0x01c10002 or 0x01c10000. Verifiers trust
:meth:`CloudCa.trusted_roots` with ``verifier serve --ak-ca``.

Layout of the directory (default ``$STOCKADE_HOME/cloud-ca``)::

    root-cert.pem  root-key.pem       self-signed root (key 0600)
    issuer-cert.pem  issuer-key.pem   AK issuing CA, signed by the root (key 0600)
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPMA_NV
from tpm2_pytss.types import TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC

from stockade.certificates import key_usage
from stockade.evidence.ak_certificate import GCE_INSTANCE_OID, GceInstance, encode_gce_instance
from stockade.evidence.templates import KeyKind, ak_template
from stockade.home import stockade_home
from stockade.tpm.ak import loaded_primary_ak
from stockade.tpm.cloud_ak import GCE_AK_NV, CloudAk, read_cloud_ak
from stockade.tpm.dev_ca import DevelopmentCa, ca_name
from stockade.tpm.device import Tpm, tpm_command

_AK_VALIDITY = datetime.timedelta(days=365)
NV_CHUNK = 512
# Written by the owner, readable with the owner's or the index's (empty) auth.
NV_ATTRIBUTES = (
    TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.AUTHREAD | TPMA_NV.NO_DA | TPMA_NV.PPREAD
)
DEFAULT_INSTANCE = GceInstance(
    zone="us-central1-a",
    project_id="stockade-dev",
    project_number=123456789012,
    instance_id=4242424242424242424,
    instance_name="dev-vm",
    security_version=1,
    is_production=False,
)

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def default_directory() -> Path:
    return stockade_home() / "cloud-ca"


def issue_ak_certificate(
    public_key: PublicKey,
    *,
    issuer: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    instance: GceInstance | None = DEFAULT_INSTANCE,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> x509.Certificate:
    """An AK certificate as GCE's CA issues them: digitalSignature, not a CA, and the
    instance identity extension (non-critical) when ``instance`` is given."""
    start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    usage = key_usage(digital_signature=True)
    name = instance.instance_name if instance is not None else "ak"
    builder = (
        x509.CertificateBuilder()
        .subject_name(ca_name(name))
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after or start + _AK_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if instance is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(GCE_INSTANCE_OID, encode_gce_instance(instance)),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class CloudCa(DevelopmentCa):
    """A development cloud AK CA in ``directory``: :meth:`load_or_create`."""

    LABEL: ClassVar[str] = "Cloud AK"

    @classmethod
    def load_or_create(cls, directory: Path | None = None) -> CloudCa:
        return cls.open(directory or default_directory())

    def issue_ak_certificate(
        self,
        public_key: PublicKey,
        instance: GceInstance | None = DEFAULT_INSTANCE,
        *,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> x509.Certificate:
        return issue_ak_certificate(
            public_key,
            issuer=self.issuer_certificate(),
            issuer_key=self.issuer_key(),
            instance=instance,
            not_before=not_before,
            not_after=not_after,
        )


def write_nv(tpm: Tpm, index: int, data: bytes) -> None:
    """(Re)define ``index`` with the owner and write ``data`` to it."""
    if index in tpm.nv_indices():
        with tpm_command("NV_UndefineSpace"):
            handle = tpm.esys.tr_from_tpmpublic(index)
            tpm.esys.nv_undefine_space(handle, auth_handle=ESYS_TR.OWNER)
    nv_public = TPM2B_NV_PUBLIC(
        nvPublic=TPMS_NV_PUBLIC(
            nvIndex=index, nameAlg=TPM2_ALG.SHA256, attributes=NV_ATTRIBUTES, dataSize=len(data)
        )
    )
    with tpm_command("NV_DefineSpace"):
        handle = tpm.esys.nv_define_space(b"", nv_public, auth_handle=ESYS_TR.OWNER)
    with tpm_command("NV_Write"):
        for offset in range(0, len(data), NV_CHUNK):
            tpm.esys.nv_write(
                handle, data[offset : offset + NV_CHUNK], offset, auth_handle=ESYS_TR.OWNER
            )


def provision_cloud_ak(
    tpm: Tpm,
    ca: CloudCa,
    kind: KeyKind = KeyKind.ECC,
    instance: GceInstance | None = DEFAULT_INSTANCE,
) -> CloudAk:
    """Write the AK template of ``kind`` to NV, make its key, and write the CA's certificate
    for that key beside it, as GCE does; returns what the agent will read back."""
    indices = GCE_AK_NV[kind]
    template = ak_template(kind).marshal()
    write_nv(tpm, indices.template, template)
    with loaded_primary_ak(tpm, template) as (_, public):
        key = public.public_key()
    certificate = ca.issue_ak_certificate(key, instance)
    write_nv(tpm, indices.certificate, certificate.public_bytes(serialization.Encoding.DER))
    return read_cloud_ak(tpm, kind)
