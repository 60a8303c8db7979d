"""Create a private CA and the certificates it issues, and store them safely on disk.

Certificate builders share `_end_entity` so that each later certificate kind
(client, …) only adds what makes it different.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeAlias, TypeGuard, get_args

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pki import names

PrivateKey: TypeAlias = CertificateIssuerPrivateKeyTypes
FilePath: TypeAlias = str | os.PathLike[str]

# Tolerates clocks of peers that are slightly behind ours.
BACKDATE = timedelta(minutes=5)
# The CA's own lifetime, and so the longest any certificate it signs can be valid.
MAX_DAYS = 3650
CN_MAX_LENGTH = 64


KEY_TYPES = ("ec", "rsa")
RSA_KEY_BITS = 2048


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _new_client_key(key_type: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    """P-256 by default; RSA for the few mail clients and smart cards that cannot use EC."""
    if key_type == "ec":
        return _new_key()
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    raise ValueError(f"key type must be one of {', '.join(KEY_TYPES)}: {key_type!r}")


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


def _can_issue(key: PrivateKeyTypes) -> TypeGuard[PrivateKey]:
    """Only signing keys can issue: not DH, X25519, X448 or ML-KEM."""
    return isinstance(key, get_args(CertificateIssuerPrivateKeyTypes))


def _is_issuer_public_key(
    key: CertificatePublicKeyTypes,
) -> TypeGuard[CertificateIssuerPublicKeyTypes]:
    return isinstance(key, get_args(CertificateIssuerPublicKeyTypes))


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        public_key = ca_cert.public_key()
        if not _is_issuer_public_key(public_key):
            raise TypeError(f"a {type(public_key).__name__} cannot issue certificates") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
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
    public_key: CertificateIssuerPublicKeyTypes,
    days: int,
) -> x509.CertificateBuilder:
    """A non-CA certificate signed by `ca_cert`, never outliving it."""
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"a certificate is valid for 1 to {MAX_DAYS} days, not {days}")
    not_after = min(datetime.now(UTC) + timedelta(days=days), ca_cert.not_valid_after_utc)
    return (
        _base(subject, ca_cert.subject, public_key, not_after)
        .add_extension(_authority_key_id(ca_cert), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
    )


def _domain_subtrees(domains: list[str]) -> list[x509.GeneralName]:
    """Both RFC 5280 forms per domain: `d` covers mailboxes at d, `.d` those at subdomains."""
    if not domains:
        raise ValueError("permitted_domains must name at least one domain (or be None)")
    subtrees: list[x509.GeneralName] = []
    for text in domains:
        domain = text.strip().lower().lstrip(".")
        if not domain or not domain.isascii() or any(c in domain for c in "@ \t"):
            raise ValueError(f"not a mail domain: {text!r}")
        subtrees += [x509.RFC822Name(domain), x509.RFC822Name("." + domain)]
    return subtrees


def create_ca(
    common_name: str,
    *,
    days: int = MAX_DAYS,
    permitted_domains: list[str] | None = None,
    server_names: list[str] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA that may sign end-entity certificates only (path length 0).

    Clients are told to trust this CA, so it should vouch for nothing else: critical
    NameConstraints limit server certificates to `server_names` (DNS names and the
    names below them, IP addresses) and client certificates to mailboxes at
    `permitted_domains`. Verifiers enforce them, even on what a stolen key signs.
    A list left as None leaves that name form unconstrained.
    """
    key = _new_key()
    name = _name(common_name)
    public_key = key.public_key()
    builder = (
        _base(name, name, public_key, datetime.now(UTC) + timedelta(days=days))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
    )
    permitted: list[x509.GeneralName] = []
    excluded: list[x509.GeneralName] = []
    if server_names is not None:
        permitted, excluded = names.server_subtrees(server_names)
    if permitted_domains is not None:
        permitted += _domain_subtrees(permitted_domains)
    if permitted or excluded:
        constraints = x509.NameConstraints(
            permitted_subtrees=permitted or None, excluded_subtrees=excluded or None
        )
        builder = builder.add_extension(constraints, critical=True)
    return builder.sign(key, _hash_for(key)), key


def _name_constraints(ca_cert: x509.Certificate) -> x509.NameConstraints | None:
    try:
        return ca_cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None


def issue_server_cert(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    hostnames: list[str],
    *,
    days: int = 825,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A TLS server certificate for `hostnames`: DNS names or IP addresses (`pki.names`).

    CN repeats the first DNS name that fits in one for old clients. Without such a
    name the subject is empty and the SAN critical (RFC 5280 4.2.1.6): a CN of digits
    would be read as a DNS name by NameConstraints checks and fail them.
    """
    entries = names.server_names(hostnames)
    if not entries:
        raise ValueError("a server certificate needs at least one hostname")
    constraints = _name_constraints(ca_cert)
    if constraints is not None:
        names.check_server_names(constraints, entries)
    dns = [e.value for e in entries if isinstance(e, x509.DNSName)]
    cn = next((name for name in dns if len(name) <= CN_MAX_LENGTH), None)
    subject = _name(cn) if cn is not None else x509.Name([])
    key = _new_key()
    cert = (
        _end_entity(ca_cert, subject, key.public_key(), days)
        .add_extension(x509.SubjectAlternativeName(entries), critical=cn is None)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, _hash_for(ca_key))
    )
    return cert, key


def _mailbox(email: str) -> str:
    """Light shape check only: full address rules belong to the caller (submitgw.rules.address)."""
    address = email.strip().lower()
    local, at, domain = address.rpartition("@")
    if not (at and local and domain) or not address.isascii() or any(c.isspace() for c in address):
        raise ValueError(f"not a plain local@domain address: {email!r}")
    return address


def _rfc822_matches(constraint: str, address: str) -> bool:
    """RFC 5280 4.2.1.10: a mailbox, a host (`example.org`) or a domain (`.example.org`)."""
    constraint = constraint.lower()
    domain = address.rpartition("@")[2]
    if "@" in constraint:
        return address == constraint
    if constraint.startswith("."):
        return domain.endswith(constraint)
    return domain == constraint


def _check_name_constraints(ca_cert: x509.Certificate, address: str) -> None:
    """Refuse to issue what every verifier would reject anyway, with a clearer reason."""
    constraints = _name_constraints(ca_cert)
    if constraints is None:
        return
    excluded = [
        n.value for n in constraints.excluded_subtrees or [] if isinstance(n, x509.RFC822Name)
    ]
    permitted = [
        n.value for n in constraints.permitted_subtrees or [] if isinstance(n, x509.RFC822Name)
    ]
    if any(_rfc822_matches(c, address) for c in excluded) or (
        permitted and not any(_rfc822_matches(c, address) for c in permitted)
    ):
        allowed = ", ".join(c for c in permitted if not c.startswith(".")) or "none"
        raise ValueError(f"the CA may not certify {address} (permitted domains: {allowed})")


def issue_client_cert(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    email: str,
    *,
    days: int = 365,
    key_type: str = "ec",
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey]:
    """A TLS client (and S/MIME-capable) certificate binding a new key to one mailbox.

    The mailbox is the rfc822Name SAN, which is what verifiers check against
    NameConstraints; CN repeats it for humans reading certificate lists.
    """
    address = _mailbox(email)
    _check_name_constraints(ca_cert, address)
    key = _new_client_key(key_type)
    cert = (
        _end_entity(ca_cert, _name(address), key.public_key(), days)
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(address)]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.EMAIL_PROTECTION]
            ),
            critical=False,
        )
        .sign(ca_key, _hash_for(ca_key))
    )
    return cert, key


def certificate_email(cert: x509.Certificate) -> str | None:
    """The mailbox a certificate is for (first rfc822Name SAN, lower-cased), if any."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    addresses = san.get_values_for_type(x509.RFC822Name)
    return addresses[0].lower() if addresses else None


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


def write_secret_file(path: FilePath, data: bytes) -> None:
    """Key material in another encoding (PKCS#12): mode 0600, never replacing a file."""
    _write_new(path, data, 0o600)


def write_certificate(path: FilePath, cert: x509.Certificate) -> None:
    _write_new(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def load_certificate(path: FilePath) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def load_private_key(path: FilePath, passphrase: bytes | None = None) -> PrivateKey:
    """Raises TypeError if the key cannot sign certificates, ValueError on a wrong passphrase."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=passphrase)
    if not _can_issue(key):
        raise TypeError(f"{path}: a {type(key).__name__} cannot sign certificates")
    return key
