"""The mini-CA: certificate contents field by field, chain checks by us and by openssl."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeAlias, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store

from pki import (
    create_ca,
    issue_server_cert,
    load_certificate,
    load_private_key,
    write_certificate,
    write_private_key,
)

E = TypeVar("E", bound=x509.ExtensionType)
Issued: TypeAlias = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]

HOSTNAMES = ["mail.example.org", "smtp.example.org", "192.0.2.25", "2001:db8::25"]


@pytest.fixture(scope="module")
def ca() -> Issued:
    return create_ca("submitgw test CA")


@pytest.fixture(scope="module")
def server(
    ca: Issued,
) -> Issued:
    return issue_server_cert(ca[0], ca[1], HOSTNAMES)


def extension(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


def assert_recent_validity(cert: x509.Certificate, days: int) -> None:
    now = datetime.now(UTC)
    assert now - timedelta(minutes=10) < cert.not_valid_before_utc < now
    expected_end = now + timedelta(days=days)
    assert abs(cert.not_valid_after_utc - expected_end) < timedelta(minutes=1)


def test_ca_certificate_fields(ca: Issued) -> None:
    cert, key = ca

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
    cert, _key = create_ca("short-lived CA", days=30)

    assert_recent_validity(cert, 30)


def test_two_cas_get_different_keys_and_serials() -> None:
    first, first_key = create_ca("CA")
    second, second_key = create_ca("CA")

    assert first.serial_number != second.serial_number
    assert first_key.public_key() != second_key.public_key()


def test_server_certificate_fields(
    ca: Issued,
    server: Issued,
) -> None:
    ca_cert, _ca_key = ca
    cert, key = server

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
    ca: Issued,
    server: Issued,
) -> None:
    policy = PolicyBuilder().store(Store([ca[0]]))
    subjects = [
        DNSName("mail.example.org"),
        DNSName("smtp.example.org"),
        IPAddress(ipaddress.ip_address("192.0.2.25")),
        IPAddress(ipaddress.ip_address("2001:db8::25")),
    ]

    for subject in subjects:
        chain = policy.build_server_verifier(subject).verify(server[0], [])
        assert chain == [server[0], ca[0]]

    with pytest.raises(x509.verification.VerificationError):
        policy.build_server_verifier(DNSName("other.example.org")).verify(server[0], [])


def test_server_certificate_is_not_signed_by_another_ca(
    server: Issued,
) -> None:
    stranger, _key = create_ca("another CA")

    with pytest.raises(ValueError):
        server[0].verify_directly_issued_by(stranger)


def test_server_certificate_never_outlives_its_ca() -> None:
    ca_cert, ca_key = create_ca("short-lived CA", days=30)

    cert, _key = issue_server_cert(ca_cert, ca_key, ["mail.example.org"], days=825)

    assert cert.not_valid_after_utc == ca_cert.not_valid_after_utc


@pytest.mark.parametrize("hostnames", [[], ["h" * 65 + ".example.org"]], ids=["none", "long-cn"])
def test_server_certificate_rejects_unusable_hostnames(ca: Issued, hostnames: list[str]) -> None:
    with pytest.raises(ValueError):
        issue_server_cert(ca[0], ca[1], hostnames)


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
    ca: Issued,
    server: Issued,
) -> None:
    ca_path, cert_path = tmp_path / "ca.crt", tmp_path / "server.crt"
    write_certificate(ca_path, ca[0])
    write_certificate(cert_path, server[0])

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


def test_private_key_file_is_0600_and_round_trips(tmp_path: Path, ca: Issued) -> None:
    path = tmp_path / "ca.key"

    write_private_key(path, ca[1])

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = load_private_key(path)
    assert loaded.public_key() == ca[1].public_key()


def test_certificate_file_is_0644_and_round_trips(tmp_path: Path, ca: Issued) -> None:
    path = tmp_path / "ca.crt"

    write_certificate(path, ca[0])

    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert load_certificate(path) == ca[0]


def test_writers_refuse_to_overwrite(tmp_path: Path, ca: Issued) -> None:
    key_path, cert_path = tmp_path / "ca.key", tmp_path / "ca.crt"
    key_path.write_bytes(b"keep me")
    cert_path.write_bytes(b"keep me too")

    with pytest.raises(FileExistsError):
        write_private_key(key_path, ca[1])
    with pytest.raises(FileExistsError):
        write_certificate(cert_path, ca[0])

    assert key_path.read_bytes() == b"keep me"
    assert cert_path.read_bytes() == b"keep me too"


def test_writer_refuses_a_planted_symlink(tmp_path: Path, ca: Issued) -> None:
    target = tmp_path / "elsewhere"
    link = tmp_path / "ca.key"
    link.symlink_to(target)

    with pytest.raises(FileExistsError):
        write_private_key(link, ca[1])

    assert not target.exists()


def test_encrypted_private_key_round_trip(tmp_path: Path, ca: Issued) -> None:
    path = tmp_path / "ca.key"

    write_private_key(path, ca[1], passphrase=b"correct horse")

    assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_private_key(path, passphrase=b"correct horse")
    assert loaded.public_key() == ca[1].public_key()
    with pytest.raises(ValueError):
        load_private_key(path, passphrase=b"wrong horse")
    with pytest.raises(TypeError):
        load_private_key(path)


def test_loaded_ca_key_issues_verifiable_certificates(tmp_path: Path, ca: Issued) -> None:
    write_certificate(tmp_path / "ca.crt", ca[0])
    write_private_key(tmp_path / "ca.key", ca[1], passphrase=b"pw")
    ca_cert = load_certificate(tmp_path / "ca.crt")
    ca_key = load_private_key(tmp_path / "ca.key", passphrase=b"pw")

    cert, _key = issue_server_cert(ca_cert, ca_key, ["mail.example.org"])

    cert.verify_directly_issued_by(ca[0])
