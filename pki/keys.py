"""Key types the CA generates, and how each one signs."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeAlias, TypeGuard, get_args

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)

PrivateKey: TypeAlias = CertificateIssuerPrivateKeyTypes
# What this CA generates for the certificates it issues.
IssuedKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
RSA_KEY_BITS = 2048


class KeyType(StrEnum):
    """P-256 by default; RSA for the few mail clients and smart cards that cannot use EC."""

    EC = "ec"
    RSA = "rsa"

    def generate(self) -> IssuedKey:
        if self is KeyType.RSA:
            return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
        return ec.generate_private_key(ec.SECP256R1())

    @classmethod
    def of(cls, key: object) -> KeyType:
        """The type to renew an existing key or public key with: RSA stays RSA, all else is EC."""
        if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
            return cls.RSA
        return cls.EC


def can_sign_certificates(key: object) -> TypeGuard[PrivateKey]:
    return isinstance(key, get_args(CertificateIssuerPrivateKeyTypes))


def is_issuer_public_key(key: object) -> TypeGuard[CertificateIssuerPublicKeyTypes]:
    return isinstance(key, get_args(CertificateIssuerPublicKeyTypes))


def signing_hash(key: PrivateKey) -> hashes.SHA256 | None:
    """EdDSA and ML-DSA keys sign without a separate digest; the others use SHA-256."""
    if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | dsa.DSAPrivateKey):
        return hashes.SHA256()
    return None
