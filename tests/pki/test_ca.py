"""The mini-CA: certificate contents field by field, chain checks by us and by openssl."""

from __future__ import annotations

import hashlib
import ipaddress
import re
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store

from pki import (
    CA,
    REVOCATION_REASONS,
    CAError,
    CAPassphraseRequired,
    IssuedCertificate,
    KeyType,
    certificate_email,
    fingerprint_sha256,
    format_serial,
    load_certificate,
    load_private_key,
    parse_serial,
    write_certificate,
    write_private_key,
)

E = TypeVar("E", bound=x509.ExtensionType)

HOSTNAMES = ["mail.example.org", "smtp.example.org", "192.0.2.25", "2001:db8::25"]


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA.create("submitgw test CA")


@pytest.fixture(scope="module")
def server(
    ca: CA,
) -> IssuedCertificate:
    return ca.issue_server_cert(HOSTNAMES)


def extension(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


def assert_recent_validity(cert: x509.Certificate, days: int) -> None:
    now = datetime.now(UTC)
    assert now - timedelta(minutes=10) < cert.not_valid_before_utc < now
    expected_end = now + timedelta(days=days)
    assert abs(cert.not_valid_after_utc - expected_end) < timedelta(minutes=1)


def test_ca_certificate_fields(ca: CA) -> None:
    cert, key = ca.cert, ca.key

    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert cert.public_key() == key.public_key()
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "submitgw test CA"
    assert cert.serial_number.bit_length() > 64
    assert_recent_validity(cert, 3650)

    constraints = extension(cert, x509.BasicConstraints)
    assert constraints.critical is True
    assert constraints.value.ca is True
    assert constraints.value.path_length == 0

    usage = extension(cert, x509.KeyUsage)
    assert usage.critical is True
    assert usage.value.key_cert_sign is True
    assert usage.value.crl_sign is True
    assert usage.value.digital_signature is False
    assert usage.value.key_encipherment is False

    ski = extension(cert, x509.SubjectKeyIdentifier)
    aki = extension(cert, x509.AuthorityKeyIdentifier)
    assert ski.critical is False and aki.critical is False
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    assert aki.value.key_identifier == ski.value.digest

    cert.verify_directly_issued_by(cert)


def test_ca_days_sets_validity() -> None:
    cert = CA.create("short-lived CA", days=30).cert

    assert_recent_validity(cert, 30)


def test_two_cas_get_different_keys_and_serials() -> None:
    first, second = CA.create("CA"), CA.create("CA")

    assert first.cert.serial_number != second.cert.serial_number
    assert first.key.public_key() != second.key.public_key()


def test_server_certificate_fields(
    ca: CA,
    server: IssuedCertificate,
) -> None:
    ca_cert = ca.cert
    cert, key = server.cert, server.key

    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert cert.public_key() == key.public_key()
    assert cert.issuer == ca_cert.subject
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == HOSTNAMES[0]
    assert cert.serial_number.bit_length() > 64
    assert_recent_validity(cert, 825)

    san = extension(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mail.example.org", "smtp.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.25"),
        ipaddress.ip_address("2001:db8::25"),
    ]

    eku = extension(cert, x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH]

    constraints = extension(cert, x509.BasicConstraints)
    assert constraints.critical is True
    assert constraints.value.ca is False

    usage = extension(cert, x509.KeyUsage)
    assert usage.critical is True
    assert usage.value.digital_signature is True
    assert usage.value.key_cert_sign is False
    assert usage.value.crl_sign is False

    ski = extension(cert, x509.SubjectKeyIdentifier).value
    aki = extension(cert, x509.AuthorityKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    assert aki.key_identifier == extension(ca_cert, x509.SubjectKeyIdentifier).value.digest

    cert.verify_directly_issued_by(ca_cert)


def test_server_certificate_chain_verifies_for_each_name(
    ca: CA,
    server: IssuedCertificate,
) -> None:
    policy = PolicyBuilder().store(Store([ca.cert]))
    subjects = [
        DNSName("mail.example.org"),
        DNSName("smtp.example.org"),
        IPAddress(ipaddress.ip_address("192.0.2.25")),
        IPAddress(ipaddress.ip_address("2001:db8::25")),
    ]

    for subject in subjects:
        chain = policy.build_server_verifier(subject).verify(server.cert, [])
        assert chain == [server.cert, ca.cert]

    with pytest.raises(x509.verification.VerificationError):
        policy.build_server_verifier(DNSName("other.example.org")).verify(server.cert, [])


def test_server_certificate_is_not_signed_by_another_ca(
    server: IssuedCertificate,
) -> None:
    stranger = CA.create("another CA").cert

    with pytest.raises(ValueError):
        server.cert.verify_directly_issued_by(stranger)


def test_server_certificate_never_outlives_its_ca() -> None:
    ca = CA.create("short-lived CA", days=30)

    cert = ca.issue_server_cert(["mail.example.org"], days=825).cert

    assert cert.not_valid_after_utc == ca.cert.not_valid_after_utc


@pytest.mark.parametrize("hostnames", [[], ["h" * 65 + ".example.org"]], ids=["none", "long-cn"])
def test_server_certificate_rejects_unusable_hostnames(ca: CA, hostnames: list[str]) -> None:
    with pytest.raises(ValueError):
        ca.issue_server_cert(hostnames)


def openssl_verify(
    ca_path: Path, cert_path: Path, *checks: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca_path), *checks, str(cert_path)],
        capture_output=True,
        text=True,
    )


def test_openssl_verifies_server_certificate(
    tmp_path: Path,
    ca: CA,
    server: IssuedCertificate,
) -> None:
    ca_path, cert_path = tmp_path / "ca.crt", tmp_path / "server.crt"
    write_certificate(ca_path, ca.cert)
    write_certificate(cert_path, server.cert)

    for checks in (
        ["-purpose", "sslserver", "-verify_hostname", "smtp.example.org"],
        ["-purpose", "sslserver", "-verify_ip", "192.0.2.25"],
    ):
        result = openssl_verify(ca_path, cert_path, *checks)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{cert_path}: OK"

    wrong_name = openssl_verify(ca_path, cert_path, "-verify_hostname", "other.example.org")
    assert wrong_name.returncode != 0
    assert "hostname mismatch" in wrong_name.stderr + wrong_name.stdout


def test_private_key_file_is_0600_and_round_trips(tmp_path: Path, ca: CA) -> None:
    path = tmp_path / "ca.key"

    write_private_key(path, ca.key)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = load_private_key(path)
    assert loaded.public_key() == ca.key.public_key()


def test_certificate_file_is_0644_and_round_trips(tmp_path: Path, ca: CA) -> None:
    path = tmp_path / "ca.crt"

    write_certificate(path, ca.cert)

    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert load_certificate(path) == ca.cert


def test_writers_refuse_to_overwrite(tmp_path: Path, ca: CA) -> None:
    key_path, cert_path = tmp_path / "ca.key", tmp_path / "ca.crt"
    key_path.write_bytes(b"keep me")
    cert_path.write_bytes(b"keep me too")

    with pytest.raises(FileExistsError):
        write_private_key(key_path, ca.key)
    with pytest.raises(FileExistsError):
        write_certificate(cert_path, ca.cert)

    assert key_path.read_bytes() == b"keep me"
    assert cert_path.read_bytes() == b"keep me too"


def test_writer_refuses_a_planted_symlink(tmp_path: Path, ca: CA) -> None:
    target = tmp_path / "elsewhere"
    link = tmp_path / "ca.key"
    link.symlink_to(target)

    with pytest.raises(FileExistsError):
        write_private_key(link, ca.key)

    assert not target.exists()


def test_encrypted_private_key_round_trip(tmp_path: Path, ca: CA) -> None:
    path = tmp_path / "ca.key"

    write_private_key(path, ca.key, passphrase=b"correct horse")

    assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_private_key(path, passphrase=b"correct horse")
    assert loaded.public_key() == ca.key.public_key()
    with pytest.raises(ValueError):
        load_private_key(path, passphrase=b"wrong horse")
    with pytest.raises(TypeError):
        load_private_key(path)


def test_loaded_ca_key_issues_verifiable_certificates(tmp_path: Path, ca: CA) -> None:
    ca.write(tmp_path / "ca.crt", tmp_path / "ca.key", passphrase=b"pw")

    loaded = CA.load(tmp_path / "ca.crt", tmp_path / "ca.key", passphrase=b"pw")

    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    assert loaded.cert == ca.cert
    cert = loaded.issue_server_cert(["mail.example.org"]).cert
    cert.verify_directly_issued_by(ca.cert)


@pytest.fixture
def ca_files(tmp_path: Path, ca: CA) -> tuple[Path, Path]:
    ca.write(tmp_path / "ca.crt", tmp_path / "ca.key")
    return tmp_path / "ca.crt", tmp_path / "ca.key"


def test_ca_load_says_in_one_line_what_is_wrong(
    tmp_path: Path, ca_files: tuple[Path, Path]
) -> None:
    cert_path, key_path = ca_files
    encrypted = tmp_path / "encrypted.key"
    write_private_key(encrypted, CA.create("x").key, passphrase=b"pw")
    other_key = tmp_path / "other.key"
    write_private_key(other_key, CA.create("other").key)
    not_pem = tmp_path / "not.pem"
    not_pem.write_bytes(b"hello")
    cases: list[tuple[tuple[Path, Path, bytes | None], type[CAError], str]] = [
        ((tmp_path / "gone.crt", key_path, None), CAError, "cannot read the CA: "),
        ((not_pem, key_path, None), CAError, "is not PEM"),
        ((cert_path, encrypted, None), CAPassphraseRequired, "is encrypted"),
        ((cert_path, encrypted, b"wrong"), CAError, "wrong CA passphrase for"),
        ((cert_path, key_path, b"pw"), CAError, "a CA passphrase was given but"),
        ((cert_path, not_pem, None), CAError, "cannot use CA key"),
        ((cert_path, other_key, None), CAError, "does not match"),
    ]
    for (cert_file, key_file, passphrase), kind, message in cases:
        with pytest.raises(kind, match=message) as raised:
            CA.load(cert_file, key_file, passphrase)
        assert "\n" not in str(raised.value)


def test_ca_refuses_a_key_that_is_not_its_own(ca: CA) -> None:
    with pytest.raises(ValueError, match="does not belong"):
        CA(ca.cert, CA.create("other").key)


def test_issued_certificate_spells_itself_like_the_inventory(ca: CA) -> None:
    issued = ca.issue_client_cert("Carol@Example.org", key_type="rsa")

    assert issued.serial == format_serial(issued.cert.serial_number)
    assert issued.fingerprint_sha256 == fingerprint_sha256(issued.cert)
    assert issued.email == "carol@example.org"
    assert issued.key_type is KeyType.RSA
    assert issued.ca_cert == ca.cert
    assert x509.load_pem_x509_certificate(issued.cert_pem()) == issued.cert
    key = serialization.load_pem_private_key(issued.private_key_pem(), None)
    assert key.public_key() == issued.key.public_key()
    assert issued.private_key_pem(b"pw").startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")


def test_issued_certificate_writes_its_key_0600_and_certificate_0644(
    tmp_path: Path, ca: CA
) -> None:
    issued = ca.issue_server_cert(["mail.example.org"])

    issued.write_private_key(tmp_path / "server.key")
    issued.write_cert(tmp_path / "server.crt")

    assert stat.S_IMODE((tmp_path / "server.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "server.crt").stat().st_mode) == 0o644
    assert load_certificate(tmp_path / "server.crt") == issued.cert
    assert load_private_key(tmp_path / "server.key").public_key() == issued.key.public_key()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.crt", "server.key"]


def test_key_type_of_an_existing_key_for_renewals(ca: CA) -> None:
    assert KeyType.of(ca.issue_client_cert("a@example.org").cert.public_key()) is KeyType.EC
    rsa_cert = ca.issue_client_cert("a@example.org", key_type=KeyType.RSA).cert
    assert KeyType.of(rsa_cert.public_key()) is KeyType.RSA
    assert [str(k) for k in KeyType] == ["ec", "rsa"]


# --- CA with name constraints ----------------------------------------------------------------


def test_ca_name_constraints_permit_each_domain_and_its_subdomains() -> None:
    cert = CA.create("constrained CA", permitted_domains=["Example.ORG", ".example.net"]).cert

    constraints = extension(cert, x509.NameConstraints)
    assert constraints.critical is True
    assert constraints.value.permitted_subtrees == [
        x509.RFC822Name("example.org"),
        x509.RFC822Name(".example.org"),
        x509.RFC822Name("example.net"),
        x509.RFC822Name(".example.net"),
    ]
    assert constraints.value.excluded_subtrees is None
    # Everything else is the plain CA's.
    assert extension(cert, x509.BasicConstraints).value.path_length == 0
    assert extension(cert, x509.KeyUsage).value.key_cert_sign is True
    cert.verify_directly_issued_by(cert)


def test_ca_without_domains_has_no_name_constraints(ca: CA) -> None:
    with pytest.raises(x509.ExtensionNotFound):
        extension(ca.cert, x509.NameConstraints)


@pytest.mark.parametrize("domains", [[], [""], ["."], ["alice@example.org"], ["exa mple.org"]])
def test_ca_refuses_unusable_domains(domains: list[str]) -> None:
    with pytest.raises(ValueError):
        CA.create("constrained CA", permitted_domains=domains)


@pytest.fixture(scope="module")
def constrained_ca() -> CA:
    return CA.create("constrained CA", permitted_domains=["example.org"])


@pytest.mark.parametrize("email", ["a@example.org", "b@mail.example.org"])
def test_constrained_ca_issues_inside_its_domains(
    tmp_path: Path, constrained_ca: CA, email: str
) -> None:
    cert = constrained_ca.issue_client_cert(email).cert
    ca_path, cert_path = tmp_path / "ca.crt", tmp_path / "client.crt"
    write_certificate(ca_path, constrained_ca.cert)
    write_certificate(cert_path, cert)

    result = openssl_verify(ca_path, cert_path, "-purpose", "sslclient")

    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("email", ["a@example.net", "a@notexample.org", "a@example.org.evil"])
def test_constrained_ca_refuses_other_domains(constrained_ca: CA, email: str) -> None:
    with pytest.raises(ValueError, match=r"may not certify .*permitted domains: example\.org"):
        constrained_ca.issue_client_cert(email)


def test_verifiers_reject_what_a_constrained_ca_key_signs_outside_its_domains(
    tmp_path: Path, constrained_ca: CA
) -> None:
    """The constraint protects even against our own refusal being bypassed (a stolen key)."""
    ca_cert, ca_key = constrained_ca.cert, constrained_ca.key
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a@example.net")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name("a@example.net")]), False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path = tmp_path / "ca.crt", tmp_path / "forged.crt"
    write_certificate(ca_path, ca_cert)
    write_certificate(cert_path, forged)

    result = openssl_verify(ca_path, cert_path, "-purpose", "sslclient")

    assert result.returncode != 0
    assert "permitted subtree violation" in result.stderr + result.stdout


# --- client certificates ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(ca: CA) -> IssuedCertificate:
    return ca.issue_client_cert("Alice@Example.ORG")


def test_client_certificate_fields(ca: CA, client: IssuedCertificate) -> None:
    ca_cert = ca.cert
    cert, key = client.cert, client.key

    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert cert.public_key() == key.public_key()
    assert cert.issuer == ca_cert.subject
    assert cert.subject.rfc4514_string() == "CN=alice@example.org"
    assert_recent_validity(cert, 365)

    san = extension(cert, x509.SubjectAlternativeName)
    assert san.critical is False
    assert list(san.value) == [x509.RFC822Name("alice@example.org")]

    eku = extension(cert, x509.ExtendedKeyUsage)
    assert eku.critical is False
    assert list(eku.value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ExtendedKeyUsageOID.EMAIL_PROTECTION,
    ]

    usage = extension(cert, x509.KeyUsage)
    assert usage.critical is True
    assert usage.value.digital_signature is True
    for bit in (
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
    ):
        assert getattr(usage.value, bit) is False, bit

    constraints = extension(cert, x509.BasicConstraints)
    assert constraints.critical is True
    assert constraints.value.ca is False

    ski = extension(cert, x509.SubjectKeyIdentifier).value
    aki = extension(cert, x509.AuthorityKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    assert aki.key_identifier == extension(ca_cert, x509.SubjectKeyIdentifier).value.digest

    cert.verify_directly_issued_by(ca_cert)


def test_client_certificate_with_rsa_key(ca: CA) -> None:
    issued = ca.issue_client_cert("bob@example.org", key_type=KeyType.RSA, days=30)
    cert, key = issued.cert, issued.key

    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048
    assert key.public_key().public_numbers().e == 65537
    assert cert.public_key() == key.public_key()
    assert_recent_validity(cert, 30)
    cert.verify_directly_issued_by(ca.cert)


def test_client_serials_are_random_and_at_least_64_bits(ca: CA) -> None:
    serials = [ca.issue_client_cert("s@example.org").cert.serial_number for _ in range(8)]

    assert len(set(serials)) == len(serials)
    # 159 random bits: below 2**57 with probability 2**-102 per sample.
    assert all(serial.bit_length() > 56 for serial in serials)


def test_client_certificate_never_outlives_its_ca() -> None:
    ca = CA.create("short-lived CA", days=30)

    cert = ca.issue_client_cert("a@example.org", days=365).cert

    assert cert.not_valid_after_utc == ca.cert.not_valid_after_utc


@pytest.mark.parametrize(
    ("email", "options"),
    [
        ("alice", {}),
        ("@example.org", {}),
        ("alice@", {}),
        ("a b@example.org", {}),
        ("jürgen@example.org", {}),
        ("a" * 60 + "@example.org", {}),  # longer than a CN may be
        ("a@example.org", {"key_type": "dsa"}),
        ("a@example.org", {"days": 0}),
    ],
)
def test_client_certificate_refuses_unusable_requests(
    ca: CA, email: str, options: dict[str, Any]
) -> None:
    with pytest.raises(ValueError):
        ca.issue_client_cert(email, **options)


def test_openssl_accepts_client_certificate_for_clients_and_mail_only(
    tmp_path: Path, ca: CA, client: IssuedCertificate, server: IssuedCertificate
) -> None:
    ca_path, client_path, server_path = tmp_path / "ca.crt", tmp_path / "c.crt", tmp_path / "s.crt"
    write_certificate(ca_path, ca.cert)
    write_certificate(client_path, client.cert)
    write_certificate(server_path, server.cert)

    for purpose in ("sslclient", "smimesign"):
        result = openssl_verify(ca_path, client_path, "-purpose", purpose)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{client_path}: OK"
    assert openssl_verify(ca_path, client_path, "-purpose", "sslserver").returncode != 0
    # And the other way round: a server certificate is no client certificate.
    assert openssl_verify(ca_path, server_path, "-purpose", "sslclient").returncode != 0


def test_certificate_email(client: IssuedCertificate, server: IssuedCertificate) -> None:
    assert certificate_email(client.cert) == "alice@example.org"
    assert certificate_email(server.cert) is None


# --- fingerprints and serials ----------------------------------------------------------------


def openssl_x509(cert_path: Path, *flags: str) -> str:
    result = subprocess.run(
        ["openssl", "x509", "-in", str(cert_path), "-noout", *flags],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def test_fingerprint_is_sha256_of_der_as_openssl_shows_it(
    tmp_path: Path, client: IssuedCertificate
) -> None:
    cert = client.cert
    der = cert.public_bytes(serialization.Encoding.DER)
    path = tmp_path / "c.crt"
    write_certificate(path, cert)

    fingerprint = fingerprint_sha256(cert)

    assert fingerprint == hashlib.sha256(der).hexdigest()
    assert fingerprint_sha256(der) == fingerprint
    assert re.fullmatch(r"[0-9a-f]{64}", fingerprint)
    shown = openssl_x509(path, "-fingerprint", "-sha256").split("=", 1)[1]
    assert shown.replace(":", "").lower() == fingerprint


def test_serial_text_round_trips_and_accepts_openssl_spellings(
    tmp_path: Path, client: IssuedCertificate
) -> None:
    serial = client.cert.serial_number
    path = tmp_path / "c.crt"
    write_certificate(path, client.cert)
    text = format_serial(serial)

    assert text == f"{serial:X}"
    assert re.fullmatch(r"[1-9A-F][0-9A-F]*", text)
    assert parse_serial(text) == serial
    assert parse_serial(text.lower()) == serial
    assert parse_serial(":".join(text[i : i + 2] for i in range(0, len(text), 2))) == serial
    assert parse_serial(openssl_x509(path, "-serial").split("=", 1)[1]) == serial
    assert parse_serial("00:" + text) == serial
    assert parse_serial(" 1a ") == 0x1A


@pytest.mark.parametrize("text", ["", ":", "0", "00:00", "0x1A", "1G", "12 34", "F" * 41])
def test_parse_serial_refuses_what_is_not_a_serial(text: str) -> None:
    with pytest.raises(ValueError, match="is not a certificate serial number"):
        parse_serial(text)


def test_format_serial_refuses_non_positive_numbers() -> None:
    with pytest.raises(ValueError):
        format_serial(0)


# --- PKCS#12 ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundles(ca: CA, client: IssuedCertificate) -> tuple[bytes, bytes]:
    return client.pkcs12(b"correct horse")


def test_both_pkcs12_files_open_with_cryptography(
    ca: CA, client: IssuedCertificate, bundles: tuple[bytes, bytes]
) -> None:
    for data in bundles:
        loaded = pkcs12.load_pkcs12(data, b"correct horse")

        assert loaded.key is not None
        assert loaded.key.public_key() == client.key.public_key()
        assert loaded.cert is not None
        assert loaded.cert.certificate == client.cert
        assert loaded.cert.friendly_name == b"alice@example.org"
        assert [c.certificate for c in loaded.additional_certs] == [ca.cert]
        with pytest.raises(ValueError):
            pkcs12.load_key_and_certificates(data, b"wrong horse")


def openssl_pkcs12_info(path: Path, password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "pkcs12", "-info", "-noout", "-in", str(path), "-passin", f"pass:{password}"],
        capture_output=True,
        text=True,
    )


def test_both_pkcs12_files_open_with_openssl_and_use_their_schemes(
    tmp_path: Path, bundles: tuple[bytes, bytes]
) -> None:
    """Recorded on OpenSSL 3.0: the legacy file opens without `-legacy` (3DES is no RC2)."""
    modern_path, legacy_path = tmp_path / "a.p12", tmp_path / "a.legacy.p12"
    modern_path.write_bytes(bundles[0])
    legacy_path.write_bytes(bundles[1])

    modern = openssl_pkcs12_info(modern_path, "correct horse")
    legacy = openssl_pkcs12_info(legacy_path, "correct horse")

    assert modern.returncode == 0, modern.stderr
    assert "MAC: sha256" in modern.stderr
    assert "Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC" in modern.stderr
    assert "PRF hmacWithSHA256" in modern.stderr
    assert legacy.returncode == 0, legacy.stderr
    assert "MAC: sha1" in legacy.stderr
    assert "Shrouded Keybag: pbeWithSHA1And3-KeyTripleDES-CBC" in legacy.stderr
    for path in (modern_path, legacy_path):
        wrong = openssl_pkcs12_info(path, "wrong horse")
        assert wrong.returncode != 0
        assert "invalid password" in wrong.stderr


def test_pkcs12_refuses_an_empty_password_or_a_foreign_key(
    ca: CA, client: IssuedCertificate
) -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        client.pkcs12(b"")
    with pytest.raises(ValueError, match="does not belong"):
        IssuedCertificate(client.cert, ca.key, ca.cert).pkcs12(b"pw")


# --- CRL -------------------------------------------------------------------------------------


def crl_entries(ca: CA, count: int) -> list[tuple[int, datetime, str | None]]:
    """Serials of freshly issued certificates, with each kind of reason."""
    reasons: list[str | None] = ["keyCompromise", "superseded", None, "unspecified"]
    at = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    return [
        (ca.issue_client_cert(f"u{n}@example.org").cert.serial_number, at, reasons[n])
        for n in range(count)
    ]


def test_crl_fields_and_signature(ca: CA) -> None:
    entries = crl_entries(ca, 4)

    crl = ca.crl(entries)

    assert crl.issuer == ca.cert.subject
    assert crl.is_signature_valid(ca.cert.public_key())
    assert not crl.is_signature_valid(CA.create("another CA").cert.public_key())
    now = datetime.now(UTC)
    assert crl.last_update_utc <= now
    assert crl.next_update_utc is not None
    assert abs(crl.next_update_utc - (now + timedelta(days=7))) < timedelta(minutes=1)
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == extension(ca.cert, x509.SubjectKeyIdentifier).value.digest
    assert len(crl) == 4
    for serial, at, reason in entries:
        entry = crl.get_revoked_certificate_by_serial_number(serial)
        assert entry is not None
        assert entry.revocation_date_utc == at
        if reason in (None, "unspecified"):
            # RFC 5280 5.3.1: no reason code rather than "unspecified".
            with pytest.raises(x509.ExtensionNotFound):
                entry.extensions.get_extension_for_class(x509.CRLReason)
        else:
            reason_ext = entry.extensions.get_extension_for_class(x509.CRLReason)
            assert reason_ext.value.reason.value == reason


def test_crl_numbers_increase_between_builds(ca: CA) -> None:
    numbers = [
        ca.crl([]).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        for _ in range(3)
    ]

    assert numbers == sorted(numbers)
    assert len(set(numbers)) == 3


def test_crl_next_update_days(ca: CA) -> None:
    crl = ca.crl([], next_update_days=1)

    assert crl.next_update_utc is not None
    assert abs(crl.next_update_utc - (datetime.now(UTC) + timedelta(days=1))) < timedelta(minutes=1)
    with pytest.raises(ValueError):
        ca.crl([], next_update_days=0)


def test_crl_refuses_unknown_reasons(ca: CA) -> None:
    with pytest.raises(ValueError, match="unknown revocation reason 'stolen'"):
        ca.crl([(1234, datetime.now(UTC), "stolen")])
    assert set(REVOCATION_REASONS) >= {
        "unspecified",
        "keyCompromise",
        "superseded",
        "cessationOfOperation",
        "affiliationChanged",
    }


def test_openssl_verifies_the_crl_and_honours_it(tmp_path: Path, ca: CA) -> None:
    revoked = ca.issue_client_cert("gone@example.org").cert
    kept = ca.issue_client_cert("kept@example.org").cert
    crl = ca.crl([(revoked.serial_number, datetime.now(UTC), "keyCompromise")])
    ca_path, crl_path = tmp_path / "ca.crt", tmp_path / "ca.crl"
    write_certificate(ca_path, ca.cert)
    crl_path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    paths = {}
    for name, cert in (("revoked", revoked), ("kept", kept)):
        paths[name] = tmp_path / f"{name}.crt"
        write_certificate(paths[name], cert)

    checked = subprocess.run(
        ["openssl", "crl", "-in", str(crl_path), "-CAfile", str(ca_path), "-verify", "-noout"],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr
    assert "verify OK" in checked.stdout + checked.stderr

    crl_check = ["-crl_check", "-CRLfile", str(crl_path), "-purpose", "sslclient"]
    assert openssl_verify(ca_path, paths["kept"], *crl_check).returncode == 0
    refused = openssl_verify(ca_path, paths["revoked"], *crl_check)
    assert refused.returncode != 0
    assert "certificate revoked" in refused.stdout + refused.stderr
