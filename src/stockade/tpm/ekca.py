"""A project-local EK CA: the "TPM vendor" that endorses Stockade's software TPMs.

Real TPMs carry EK certificates from their vendor's CA. A software TPM gets
them from this CA instead: a self-signed root and an intermediate "EK issuing
CA" that ``swtpm_localca`` (driven by ``swtpm_setup``) signs EK and platform
certificates with. Verifiers trust :meth:`EkCa.trusted_roots` the way they
trust a vendor root, and nothing here touches the system-wide
``/var/lib/swtpm-localca``.

Layout of the directory (default ``$STOCKADE_HOME/ek-ca``)::

    root-cert.pem  root-key.pem         self-signed root (key 0600)
    issuer-cert.pem  issuer-key.pem     EK issuing CA, signed by the root (key 0600)
    certserial                          next serial swtpm_localca assigns
    swtpm-localca.conf  swtpm-localca.options  swtpm_setup.conf
"""

from __future__ import annotations

import datetime
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from stockade.certificates import key_usage
from stockade.errors import InputError, StockadeError
from stockade.home import locked, stockade_home, write_atomic

_ROOT_VALIDITY = datetime.timedelta(days=20 * 365)
_ISSUER_VALIDITY = datetime.timedelta(days=10 * 365)
# swtpm_localca's wrapper moved between releases; the binary is what both call.
_LOCALCA_CANDIDATES = ("swtpm_localca", "/usr/bin/swtpm_localca", "/usr/share/swtpm/swtpm-localca")


class EkCaError(StockadeError):
    """The EK CA could not be created, loaded or used to issue a certificate."""

    exit_code = 2


def default_directory() -> Path:
    """``$STOCKADE_HOME/ek-ca``, with ``STOCKADE_HOME`` defaulting to ``~/.stockade``."""
    return stockade_home() / "ek-ca"


@dataclass(frozen=True)
class TpmIdentity:
    """What a TPM says about itself; swtpm_localca writes it into the EK certificate."""

    manufacturer: str = "id:00001014"  # "IBM", as libtpms reports
    model: str = "swtpm"
    version: str = "id:20191023"
    spec_family: str = "2.0"
    spec_level: int = 0
    spec_revision: int = 164


@dataclass(frozen=True)
class EkCa:
    """An EK CA living in ``directory``; create or load it with :meth:`load_or_create`."""

    directory: Path

    @property
    def root_cert_path(self) -> Path:
        return self.directory / "root-cert.pem"

    @property
    def root_key_path(self) -> Path:
        return self.directory / "root-key.pem"

    @property
    def issuer_cert_path(self) -> Path:
        return self.directory / "issuer-cert.pem"

    @property
    def issuer_key_path(self) -> Path:
        return self.directory / "issuer-key.pem"

    @property
    def certserial_path(self) -> Path:
        return self.directory / "certserial"

    @property
    def localca_config_path(self) -> Path:
        return self.directory / "swtpm-localca.conf"

    @property
    def localca_options_path(self) -> Path:
        return self.directory / "swtpm-localca.options"

    @property
    def swtpm_setup_config_path(self) -> Path:
        return self.directory / "swtpm_setup.conf"

    @classmethod
    def load_or_create(cls, directory: Path | None = None) -> EkCa:
        """Load the CA in ``directory``, creating it (once, under a lock) if missing."""
        directory = (directory or default_directory()).expanduser().absolute()
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(f"cannot create EK CA directory {directory}: {error}") from error
        ca = cls(directory)
        with locked(directory / ".lock"):
            if not ca.issuer_key_path.exists():
                ca._create()
            ca.write_swtpm_config()
        ca.issuer_certificate()  # fail early on a damaged directory
        return ca

    def root_certificate(self) -> x509.Certificate:
        return _load_cert(self.root_cert_path)

    def issuer_certificate(self) -> x509.Certificate:
        return _load_cert(self.issuer_cert_path)

    def trusted_roots(self) -> list[x509.Certificate]:
        """Trust anchors for EK certificates this CA issues."""
        return [self.root_certificate()]

    def intermediates(self) -> list[x509.Certificate]:
        """Untrusted intermediates a validator needs to build a path to the root."""
        return [self.issuer_certificate()]

    def write_swtpm_config(self) -> Path:
        """Write the swtpm_localca and swtpm_setup config files; return ``swtpm_setup.conf``.

        ``swtpm_setup --config <returned path>`` then signs EK and platform
        certificates with this CA's issuer key.
        """
        localca = _localca_executable()
        write_atomic(
            self.localca_config_path,
            f"statedir = {self.directory}\n"
            f"signingkey = {self.issuer_key_path}\n"
            f"issuercert = {self.issuer_cert_path}\n"
            f"certserial = {self.certserial_path}\n",
        )
        write_atomic(
            self.localca_options_path,
            "--platform-manufacturer Stockade\n--platform-version 2.1\n--platform-model swtpm\n",
        )
        write_atomic(
            self.swtpm_setup_config_path,
            f"create_certs_tool = {localca}\n"
            f"create_certs_tool_config = {self.localca_config_path}\n"
            f"create_certs_tool_options = {self.localca_options_path}\n"
            "active_pcr_banks = sha256\n",
        )
        return self.swtpm_setup_config_path

    def issue_ek_certificate(
        self,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        tpm: TpmIdentity | None = None,
    ) -> x509.Certificate:
        """Sign a TCG EK certificate for ``public_key`` the way swtpm_setup does.

        Used for EKs swtpm_setup does not create itself (the ECC P-256 EK of
        template L-2).
        """
        tpm = tpm or TpmIdentity()
        if isinstance(public_key, rsa.RSAPublicKey):
            ek_param = format(public_key.public_numbers().n, "x")
        else:
            numbers = public_key.public_numbers()
            size = (public_key.curve.key_size + 7) // 8
            ek_param = (
                f"x={numbers.x.to_bytes(size, 'big').hex()},"
                f"y={numbers.y.to_bytes(size, 'big').hex()},id={public_key.curve.name}"
            )
        with tempfile.TemporaryDirectory(prefix="stockade-ekcert-") as out:
            command = [
                _localca_executable(),
                "--type", "ek",
                "--ek", ek_param,
                "--dir", out,
                "--tpm-spec-family", tpm.spec_family,
                "--tpm-spec-level", str(tpm.spec_level),
                "--tpm-spec-revision", str(tpm.spec_revision),
                "--tpm-manufacturer", tpm.manufacturer,
                "--tpm-model", tpm.model,
                "--tpm-version", tpm.version,
                "--tpm2",
                "--configfile", str(self.localca_config_path),
                "--optsfile", str(self.localca_options_path),
            ]  # fmt: skip
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            cert_file = Path(out) / "ek.cert"
            if result.returncode != 0 or not cert_file.exists():
                detail = (result.stderr or result.stdout).strip().splitlines()
                raise EkCaError(
                    f"swtpm_localca could not issue an EK certificate "
                    f"(exit {result.returncode}): {detail[-1] if detail else 'no output'}"
                )
            return x509.load_der_x509_certificate(cert_file.read_bytes())

    def _create(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        tag = secrets.token_hex(4)
        root_key = ec.generate_private_key(ec.SECP384R1())
        root_name = _name(f"Stockade EK Root CA {tag}")
        root = _ca_certificate(
            subject=root_name,
            subject_key=root_key.public_key(),
            issuer=root_name,
            issuer_key=root_key,
            not_before=now,
            not_after=now + _ROOT_VALIDITY,
            path_length=1,
        )
        issuer_key = ec.generate_private_key(ec.SECP384R1())
        issuer = _ca_certificate(
            subject=_name(f"Stockade EK Issuing CA {tag}"),
            subject_key=issuer_key.public_key(),
            issuer=root_name,
            issuer_key=root_key,
            not_before=now,
            not_after=now + _ISSUER_VALIDITY,
            path_length=0,
        )
        # swtpm_localca (GnuTLS) reads the SEC1 "EC PRIVATE KEY" form.
        write_atomic(self.root_key_path, _private_pem(root_key), mode=0o600)
        write_atomic(self.root_cert_path, root.public_bytes(serialization.Encoding.PEM))
        write_atomic(self.issuer_cert_path, issuer.public_bytes(serialization.Encoding.PEM))
        write_atomic(self.certserial_path, "1\n")
        # The issuer key is written last: its presence marks a complete CA.
        write_atomic(self.issuer_key_path, _private_pem(issuer_key), mode=0o600)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Stockade"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_certificate(
    *,
    subject: x509.Name,
    subject_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    path_length: int,
) -> x509.Certificate:
    ca_usage = key_usage(ca=True)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(subject_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(ca_usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA384())
    )


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read EK CA certificate {path}: {error}") from error


def _localca_executable() -> str:
    for candidate in _LOCALCA_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise EkCaError("swtpm_localca not found; install the Debian package swtpm-tools")
