"""The private CA (`CA`) and the certificates it issues (`IssuedCertificate`).

Certificate builders share `_end_entity` so that each certificate kind (server,
client) only adds what makes it different. Files are read and written by `pki.files`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pki import files, names
from pki.bundle import pkcs12_bundles
from pki.crl import crl_number, revoked_entry
from pki.identity import certificate_email, fingerprint_sha256, format_serial
from pki.keys import IssuedKey, KeyType, PrivateKey, is_issuer_public_key, signing_hash

# Tolerates clocks of peers that are slightly behind ours.
BACKDATE = timedelta(minutes=5)
# The CA's own lifetime, and so the longest any certificate it signs can be valid.
MAX_DAYS = 3650
CN_MAX_LENGTH = 64


def _name(common_name: str) -> x509.Name:
    if not 0 < len(common_name) <= CN_MAX_LENGTH:
        raise ValueError(f"common name must be 1 to {CN_MAX_LENGTH} characters: {common_name!r}")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


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
        ski = None
    if ski is not None:
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    public_key = ca_cert.public_key()
    if not is_issuer_public_key(public_key):
        raise TypeError(f"a {type(public_key).__name__} cannot have signed certificates")
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)


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


def _name_constraints(ca_cert: x509.Certificate) -> x509.NameConstraints | None:
    try:
        return ca_cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None


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


def _check_mailbox_constraints(ca_cert: x509.Certificate, address: str) -> None:
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


class CAError(Exception):
    """The CA's files cannot be used; the text says why in one line."""


class CAPassphraseRequired(CAError):
    """The CA key is encrypted and no passphrase was given."""


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate the CA signed, its new private key, and the CA that signed it."""

    cert: x509.Certificate
    key: IssuedKey
    ca_cert: x509.Certificate

    @property
    def serial(self) -> str:
        return format_serial(self.cert.serial_number)

    @property
    def fingerprint_sha256(self) -> str:
        return fingerprint_sha256(self.cert)

    @property
    def email(self) -> str | None:
        return certificate_email(self.cert)

    @property
    def key_type(self) -> KeyType:
        return KeyType.of(self.key)

    @property
    def subject(self) -> str:
        return self.cert.subject.rfc4514_string()

    @property
    def not_before(self) -> datetime:
        return self.cert.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.cert.not_valid_after_utc

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def private_key_pem(self, passphrase: bytes | None = None) -> bytes:
        return files.private_key_pem(self.key, passphrase)

    def pkcs12(self, password: bytes) -> tuple[bytes, bytes]:
        """(modern, legacy) password-protected key + certificate + CA (see `pki.bundle`)."""
        return pkcs12_bundles(self.cert, self.key, self.ca_cert, password)

    def write_cert(self, path: files.FilePath) -> None:
        files.write_certificate(path, self.cert)

    def write_private_key(self, path: files.FilePath, passphrase: bytes | None = None) -> None:
        files.write_private_key(path, self.key, passphrase)


class CA:
    """A CA certificate and its key: issues server and client certificates and signs CRLs."""

    def __init__(self, cert: x509.Certificate, key: PrivateKey) -> None:
        if key.public_key() != cert.public_key():
            raise ValueError("the CA key does not belong to the CA certificate")
        self.cert = cert
        self.key = key

    @classmethod
    def create(
        cls,
        common_name: str,
        *,
        days: int = MAX_DAYS,
        permitted_domains: list[str] | None = None,
        server_names: list[str] | None = None,
    ) -> CA:
        """A self-signed CA that may sign end-entity certificates only (path length 0).

        Clients are told to trust this CA, so it should vouch for nothing else: critical
        NameConstraints limit server certificates to `server_names` (DNS names and the
        names below them, IP addresses) and client certificates to mailboxes at
        `permitted_domains`. Verifiers enforce them, even on what a stolen key signs.
        A list left as None leaves that name form unconstrained.
        """
        key = KeyType.EC.generate()
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
        return cls(builder.sign(key, signing_hash(key)), key)

    @classmethod
    def load(
        cls, cert_path: files.FilePath, key_path: files.FilePath, passphrase: bytes | None = None
    ) -> CA:
        """The CA from its PEM files; CAError saying in one line what is wrong with them.

        A passphrase for a key that is not encrypted is an error too: whoever gave it
        believes the key is protected when it is not.
        """
        try:
            cert = files.load_certificate(cert_path)
            data = Path(key_path).read_bytes()
        except OSError as exc:
            raise CAError(f"cannot read the CA: {exc.filename}: {exc.strerror}") from exc
        except ValueError as exc:
            raise CAError(f"CA certificate {cert_path} is not PEM") from exc
        encrypted = files.is_encrypted_pem(data)
        if encrypted and passphrase is None:
            raise CAPassphraseRequired(f"CA key {key_path} is encrypted")
        if not encrypted and passphrase is not None:
            raise CAError(f"a CA passphrase was given but CA key {key_path} is not encrypted")
        try:
            key = files.parse_private_key(data, passphrase, name=str(key_path))
        except (ValueError, TypeError) as exc:
            if encrypted:
                raise CAError(f"wrong CA passphrase for {key_path}") from exc
            reason = (str(exc).splitlines() or ["unreadable"])[0]
            raise CAError(f"cannot use CA key {key_path}: {reason}") from exc
        if key.public_key() != cert.public_key():
            raise CAError(f"CA key {key_path} does not match {cert_path}")
        return cls(cert, key)

    def write(
        self, cert_path: files.FilePath, key_path: files.FilePath, passphrase: bytes | None = None
    ) -> None:
        """The key (0600) first, so a CA certificate on disk always has its key beside it."""
        files.write_private_key(key_path, self.key, passphrase)
        files.write_certificate(cert_path, self.cert)

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def name_constraints(self) -> x509.NameConstraints | None:
        return _name_constraints(self.cert)

    def _issued(self, builder: x509.CertificateBuilder, key: IssuedKey) -> IssuedCertificate:
        return IssuedCertificate(builder.sign(self.key, signing_hash(self.key)), key, self.cert)

    def issue_server_cert(self, hostnames: list[str], *, days: int = 825) -> IssuedCertificate:
        """A TLS server certificate for `hostnames`: DNS names or IP addresses (`pki.names`).

        CN repeats the first DNS name that fits in one for old clients. Without such a
        name the subject is empty and the SAN critical (RFC 5280 4.2.1.6): a CN of digits
        would be read as a DNS name by NameConstraints checks and fail them.
        """
        entries = names.server_names(hostnames)
        if not entries:
            raise ValueError("a server certificate needs at least one hostname")
        constraints = self.name_constraints
        if constraints is not None:
            names.check_server_names(constraints, entries)
        dns = [e.value for e in entries if isinstance(e, x509.DNSName)]
        cn = next((name for name in dns if len(name) <= CN_MAX_LENGTH), None)
        subject = _name(cn) if cn is not None else x509.Name([])
        key = KeyType.EC.generate()
        builder = (
            _end_entity(self.cert, subject, key.public_key(), days)
            .add_extension(x509.SubjectAlternativeName(entries), critical=cn is None)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
        return self._issued(builder, key)

    def issue_client_cert(
        self, email: str, *, days: int = 365, key_type: KeyType | str = KeyType.EC
    ) -> IssuedCertificate:
        """A TLS client (and S/MIME-capable) certificate binding a new key to one mailbox.

        The mailbox is the rfc822Name SAN, which is what verifiers check against
        NameConstraints; CN repeats it for humans reading certificate lists.
        """
        try:
            kind = KeyType(key_type)
        except ValueError:
            choices = ", ".join(KeyType)
            raise ValueError(f"key type must be one of {choices}: {key_type!r}") from None
        address = _mailbox(email)
        _check_mailbox_constraints(self.cert, address)
        key = kind.generate()
        builder = (
            _end_entity(self.cert, _name(address), key.public_key(), days)
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(address)]), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.EMAIL_PROTECTION]
                ),
                critical=False,
            )
        )
        return self._issued(builder, key)

    def crl(
        self,
        revoked: list[tuple[int, datetime, str | None]],
        *,
        next_update_days: int = 7,
    ) -> x509.CertificateRevocationList:
        """A CRL listing `(serial, revoked_at, reason)` entries, valid for `next_update_days`.

        Verifiers that require a fresh CRL reject it after nextUpdate, so it has to be
        rebuilt (e.g. from cron) at least that often.
        """
        if not 1 <= next_update_days <= MAX_DAYS:
            raise ValueError(f"next_update_days must be 1 to {MAX_DAYS}, not {next_update_days}")
        now = datetime.now(UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - BACKDATE)
            .next_update(now + timedelta(days=next_update_days))
            .add_extension(x509.CRLNumber(crl_number()), critical=False)
            .add_extension(_authority_key_id(self.cert), critical=False)
        )
        for serial, revoked_at, reason in revoked:
            builder = builder.add_revoked_certificate(revoked_entry(serial, revoked_at, reason))
        return builder.sign(self.key, signing_hash(self.key))
