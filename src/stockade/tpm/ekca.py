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

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from stockade.errors import StockadeError
from stockade.home import stockade_home, write_atomic
from stockade.tpm.dev_ca import DevelopmentCa

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
class EkCa(DevelopmentCa):
    """An EK CA living in ``directory``; create or load it with :meth:`load_or_create`."""

    LABEL: ClassVar[str] = "EK"

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
        return cls.open(directory or default_directory())

    def _loaded(self) -> None:
        self.write_swtpm_config()

    def _created(self) -> None:
        write_atomic(self.certserial_path, "1\n")

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


def _localca_executable() -> str:
    for candidate in _LOCALCA_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise EkCaError("swtpm_localca not found; install the Debian package swtpm-tools")
