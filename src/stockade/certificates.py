"""Small X.509 building blocks the development CAs, the cluster CA and the TLS setup share."""

from __future__ import annotations

from cryptography import x509


def key_usage(
    *, digital_signature: bool = False, key_encipherment: bool = False, ca: bool = False
) -> x509.KeyUsage:
    """RFC 5280 4.2.1.3 key usage with only what a certificate needs: signing,
    key encipherment, or (``ca``) signing certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )
