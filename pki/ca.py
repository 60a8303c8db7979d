"""Create a private CA and the certificates it issues, and store them safely on disk.

Certificate builders share `_end_entity` so that each later certificate kind
(client, …) only adds what makes it different.
"""

from __future__ import annotations

import ipaddress
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey: TypeAlias = CertificateIssuerPrivateKeyTypes
FilePath: TypeAlias = str | os.PathLike[str]

# Tolerates clocks of peers that are slightly behind ours.
BACKDATE = timedelta(minutes=5)
CN_MAX_LENGTH = 64


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    if not 0 < len(common_name) <= CN_MAX_LENGTH:
        raise ValueError(f"common name must be 1 to {CN_MAX_LENGTH} characters: {common_name!r}")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _hash_for(key: PrivateKey) -> hashes.SHA256 | None:
    """EdDSA and ML-DSA keys sign without a separate digest; the others use SHA-256."""
    if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | dsa.DSAPrivateKey):
        return hashes.SHA256()
    return None


def _base(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: CertificateIssuerPublicKeyTypes,
    not_after: datetime,
) -> x509.CertificateBuilder:
    """Fields every certificate gets: random serial, backdated validity, SKI."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.now(UTC) - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _key_usage(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _end_entity(
    ca_cert: x509.Certificate,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    days: int,
) -> x509.CertificateBuilder:
    """A non-CA certificate signed by `ca_cert`, never outliving it."""
    not_after = min(datetime.now(UTC) + timedelta(days=days), ca_cert.not_valid_after_utc)
    return (
        _base(subject, ca_cert.subject, public_key, not_after)
        .add_extension(_authority_key_id(ca_cert), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
    )


def create_ca(
    common_name: str, *, days: int = 3650
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA that may sign end-entity certificates only (path length 0)."""
    key = _new_key()
    name = _name(common_name)
    public_key = key.public_key()
    cert = (
        _base(name, name, public_key, datetime.now(UTC) + timedelta(days=days))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(key, _hash_for(key))
    )
    return cert, key


def _san_entry(hostname: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        return x509.DNSName(hostname)


def issue_server_cert(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    hostnames: list[str],
    *,
    days: int = 825,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A TLS server certificate for `hostnames` (DNS names or IP addresses); CN is the first."""
    if not hostnames:
        raise ValueError("a server certificate needs at least one hostname")
    key = _new_key()
    cert = (
        _end_entity(ca_cert, _name(hostnames[0]), key.public_key(), days)
        .add_extension(
            x509.SubjectAlternativeName([_san_entry(name) for name in hostnames]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, _hash_for(ca_key))
    )
    return cert, key


def _write_new(path: FilePath, data: bytes, mode: int) -> None:
    """Create `path` with `mode` from the first byte on; never replace an existing file.

    O_EXCL also refuses to follow a symlink planted at `path`.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)  # the umask may have narrowed it
            file.write(data)
    except BaseException:
        os.unlink(path)
        raise


def write_private_key(path: FilePath, key: PrivateKey, passphrase: bytes | None = None) -> None:
    """PKCS#8 PEM, mode 0600; encrypted when a passphrase is given (an empty one is refused)."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if passphrase is None
        else serialization.BestAvailableEncryption(passphrase)
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    _write_new(path, pem, 0o600)


def write_certificate(path: FilePath, cert: x509.Certificate) -> None:
    _write_new(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def load_certificate(path: FilePath) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def load_private_key(path: FilePath, passphrase: bytes | None = None) -> PrivateKey:
    """Raises TypeError if the key cannot sign certificates, ValueError on a wrong passphrase."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=passphrase)
    if not isinstance(key, CertificateIssuerPrivateKeyTypes):
        raise TypeError(f"{path}: a {type(key).__name__} cannot sign certificates")
    return key
