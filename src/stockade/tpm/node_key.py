"""The node's TLS key: an ECC P-256 signing key that exists only inside the node's TPM.

It is created under the owner-hierarchy primary key with the parent template
tpm2-openssl and tpm2-tss-engine use (``tpm2_pytss.tsskey.TSSPrivKey``), and
kept on disk as a ``TSS2 PRIVATE KEY`` PEM: the public area plus the private
area wrapped by that primary. Only the TPM whose owner seed made the primary can
load it, so the file is useless anywhere else; openssl and curl use it through
the tpm2-openssl provider (docs/tpm-tls-client.md).

TPM2_Certify, signed by the node's attestation key, is the proof for the cluster
CA that the key is in the same TPM as the AK (``stockade.evidence.certify``).
Every call leaves no transient object loaded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_ECC, TPM2_RH, TPM2_ST
from tpm2_pytss.tsskey import TSSPrivKey
from tpm2_pytss.types import TPM2B_DIGEST, TPMT_SIG_SCHEME, TPMT_TK_HASHCHECK

from stockade.errors import InputError
from stockade.evidence.errors import EvidenceError
from stockade.evidence.public import TpmPublic
from stockade.home import write_atomic
from stockade.tpm.ak import AttestationKey, loaded_ak
from stockade.tpm.device import Tpm, parse_tcti, tpm_command

TPM2OPENSSL_TCTI = "TPM2OPENSSL_TCTI"
PEM_LABEL = b"-----BEGIN TSS2 PRIVATE KEY-----"

# An OPENSSL_CONF for openssl and curl with a TPM-resident key (docs/tpm-tls-client.md):
# both providers active; tpm2 preferred (so the TPM key signs in the TPM), but
# digests and the DRBG from the default provider (a TPM hash sequence per TLS
# transcript exhausts a TPM's few object slots; curl refuses tpm2's DRBG).
OPENSSL_TPM2_CONF = """\
openssl_conf = openssl_init

[openssl_init]
providers = provider_sect
alg_section = algorithm_sect
random = random_sect

[provider_sect]
default = default_sect
tpm2 = tpm2_sect

[default_sect]
activate = 1

[tpm2_sect]
activate = 1

[algorithm_sect]
default_properties = ?provider=tpm2,tpm2.digest!=yes

[random_sect]
properties = provider=default
"""


@dataclass(frozen=True)
class NodeKey:
    """A TPM-resident key: its ``TSS2 PRIVATE KEY`` PEM (what tpm2-openssl loads) and public."""

    pem: bytes
    public: TpmPublic

    @classmethod
    def from_pem(cls, pem: bytes) -> NodeKey:
        """Parse a ``TSS2 PRIVATE KEY`` PEM; ``InputError`` when it is not one."""
        if PEM_LABEL not in pem:
            raise InputError("not a TSS2 PRIVATE KEY PEM (no BEGIN TSS2 PRIVATE KEY line)")
        try:
            tss_key = TSSPrivKey.from_pem(pem)
            public = TpmPublic.unmarshal_tpm2b(bytes(tss_key.public.marshal()))
        except (ValueError, TypeError, EvidenceError) as error:
            raise InputError(f"malformed TSS2 PRIVATE KEY: {error}") from None
        return cls(pem, public)


def _tss_key(key: NodeKey) -> TSSPrivKey:
    return TSSPrivKey.from_pem(key.pem)


def create_node_key(tpm: Tpm) -> NodeKey:
    """Create an ECC P-256 signing key under the owner-hierarchy primary; nothing stays loaded."""
    with tpm_command("Create"):
        tss_key = TSSPrivKey.create_ecc(tpm.esys, curveID=TPM2_ECC.NIST_P256)
    return NodeKey(
        bytes(tss_key.to_pem()),
        TpmPublic.unmarshal_tpm2b(bytes(tss_key.public.marshal())),
    )


def certify_node_key(
    tpm: Tpm, key: NodeKey, ak: AttestationKey, nonce: bytes
) -> tuple[bytes, bytes]:
    """TPM2_Certify(object=``key``, signer=``ak``, qualifyingData=``nonce``).

    Returns (TPMS_ATTEST bytes, TPMT_SIGNATURE bytes) for
    ``stockade.evidence.certify.verify_certify``. Both keys are flushed afterwards.
    """
    tss_key = _tss_key(key)
    scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)  # the AK's own scheme
    with loaded_ak(tpm, ak) as ak_handle:
        with tpm_command("Load"):
            handle = tss_key.load(tpm.esys)
        with tpm.transient(handle), tpm_command("Certify"):
            attest, signature = tpm.esys.certify(
                handle,
                ak_handle,
                nonce,
                scheme,
                session1=ESYS_TR.PASSWORD,
                session2=ESYS_TR.PASSWORD,
            )
    return bytes(attest), bytes(signature.marshal())


@contextlib.contextmanager
def loaded_node_key(tpm: Tpm, key: NodeKey) -> Iterator[ESYS_TR]:
    """The key loaded under its primary for the block; flushed afterwards."""
    tss_key = _tss_key(key)
    with tpm_command("Load"):
        handle = tss_key.load(tpm.esys)
    with tpm.transient(handle):
        yield handle


def sign_digest_with(tpm: Tpm, handle: ESYS_TR, digest: bytes) -> bytes:
    """TPM2_Sign of a SHA-256 ``digest`` by the loaded (unrestricted) P-256 key ``handle``:
    the signature as IEEE P1363 ``r || s`` (32 bytes each), as RFC 9421 and JWS want it."""
    if len(digest) != 32:
        raise ValueError("sign_digest_with signs SHA-256 digests (32 bytes)")
    scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
    scheme.details.any.hashAlg = TPM2_ALG.SHA256
    # An unrestricted key needs no proof that the TPM hashed the data: a NULL ticket.
    ticket = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)
    with tpm_command("Sign"):
        signature = tpm.esys.sign(handle, TPM2B_DIGEST(digest), scheme, ticket)
    r = bytes(signature.signature.ecdsa.signatureR)
    s = bytes(signature.signature.ecdsa.signatureS)
    return r.rjust(32, b"\0") + s.rjust(32, b"\0")


def sign_digest(tpm: Tpm, key: NodeKey, digest: bytes) -> bytes:
    """Load ``key``, sign ``digest`` (see :func:`sign_digest_with`), flush."""
    with loaded_node_key(tpm, key) as handle:
        return sign_digest_with(tpm, handle, digest)


def save_node_key(key: NodeKey, path: Path) -> None:
    """Write the PEM atomically, mode 0600 (any TPM user could load it, and sign)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, key.pem, 0o600)


def load_node_key(path: Path) -> NodeKey:
    """Read a key ``save_node_key`` (or ``openssl genpkey -provider tpm2``) wrote."""
    try:
        pem = path.read_bytes()
    except OSError as error:
        raise InputError(f"cannot read node key {path}: {error.strerror or error}") from None
    try:
        return NodeKey.from_pem(pem)
    except InputError as error:
        raise InputError(f"{path}: {error}") from None


def openssl_tpm_env(tcti: str) -> dict[str, str]:
    """The variables a tpm2-openssl process needs to reach the TPM at ``tcti``.

    tpm2-openssl passes ``TPM2OPENSSL_TCTI`` to ``Tss2_TctiLdr_Initialize``,
    which takes the same ``name:configuration`` strings as Stockade
    (``swtpm:host=127.0.0.1,port=N``, ``device:/dev/tpmrm0``). Merge the result
    into ``os.environ``; it is not a whole environment.
    """
    parse_tcti(tcti)
    return {TPM2OPENSSL_TCTI: tcti}


# tpm2-openssl on OpenSSL 3.0 (docs/tpm-tls-client.md): the default provider first, tpm2
# preferred for operations on keys, digests in software.
OPENSSL_TPM2_FLAGS = (
    "-provider",
    "default",
    "-provider",
    "tpm2",
    "-propquery",
    "?provider=tpm2,tpm2.digest!=yes",
)


def tpm2_provider_module() -> Path | None:
    """The tpm2-openssl provider module OpenSSL would load, or None where it is missing."""
    import re
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        return None
    out = subprocess.run(
        ["openssl", "version", "-m"], capture_output=True, text=True, check=False
    ).stdout
    match = re.search(r'MODULESDIR: "([^"]+)"', out)
    module = Path(match.group(1)) / "tpm2.so" if match else None
    return module if module is not None and module.exists() else None
