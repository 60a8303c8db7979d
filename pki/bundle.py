"""PKCS#12 files: a client's key, certificate and CA in one password-protected file.

Two encodings of the same contents, because importers disagree on what they can
open: current ones read PBES2/AES-256 with a SHA-256 MAC (OpenSSL 3's default),
while older Windows, macOS Keychain and Android importers only read the
PKCS#12 PBE scheme SHA1/3DES with a SHA-1 MAC. OpenSSL 3 itself
opens both without `-legacy` (3DES is in its default provider; `-legacy` is
needed only for RC2, which is not used here).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from pki.identity import certificate_email

# PBKDF2 rounds for the modern file; the legacy one stays at the 2048 that the
# old importers it exists for were written against.
MODERN_KDF_ROUNDS = 100_000
LEGACY_KDF_ROUNDS = 2048


def _friendly_name(cert: x509.Certificate) -> bytes:
    """The label clients show in their certificate pickers: the mailbox if there is one."""
    email = certificate_email(cert)
    if email is not None:
        return email.encode("ascii")
    return cert.subject.rfc4514_string().encode("utf-8")


def pkcs12_bundles(
    cert: x509.Certificate,
    key: pkcs12.PKCS12PrivateKeyTypes,
    ca_cert: x509.Certificate,
    password: bytes,
) -> tuple[bytes, bytes]:
    """(modern, legacy) PKCS#12 encodings of key + cert + CA; an empty password is refused.

    Unencrypted or empty-password PKCS#12 files are importable by anyone who
    finds them, and some clients silently treat "" as "no protection".
    """
    if not password:
        raise ValueError("a PKCS#12 password must not be empty")
    if cert.public_key() != key.public_key():
        raise ValueError("the private key does not belong to the certificate")
    builder = serialization.PrivateFormat.PKCS12.encryption_builder
    modern = (
        builder()
        .kdf_rounds(MODERN_KDF_ROUNDS)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(password)
    )
    legacy = (
        builder()
        .kdf_rounds(LEGACY_KDF_ROUNDS)
        .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
        .hmac_hash(hashes.SHA1())
        .build(password)
    )
    name = _friendly_name(cert)
    return (
        pkcs12.serialize_key_and_certificates(name, key, cert, [ca_cert], modern),
        pkcs12.serialize_key_and_certificates(name, key, cert, [ca_cert], legacy),
    )
