"""Judging a client certificate, and what a session with a flawed one is told.

Each flaw has its own certificate: made by the bundled CA where it can make one,
by cryptography's builder for the shapes it never issues.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import pki
from submitgw.errors import Kind, Need, Refusal, Unavailable
from submitgw.rules.certificates import (
    Finding,
    auth_required,
    check_external,
    check_required,
    judge,
)
from submitgw.rules.session import mail_identity
from submitgw.types import CERTIFICATE, CertificateFlaw, CertificateUser, CertificateVerdict

ALICE = "alice@example.org"
NOW = datetime.now(UTC)
CA = pki.CA.create("judging test CA")
OTHER_CA = pki.CA.create("judging test CA")  # the same name, another key


def made(
    *,
    ca: pki.CA = CA,
    eku: list[x509.ObjectIdentifier] | None = None,
    san: bool = True,
    basic_ca: bool | None = None,
    start: datetime = NOW - timedelta(days=1),
    end: datetime = NOW + timedelta(days=30),
) -> x509.Certificate:
    """A client certificate shaped by hand; eku=[] leaves the extension out."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder: Any = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ALICE)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(ALICE)]), critical=False
        )
    if eku != []:
        usages = eku or [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if basic_ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=basic_ca, path_length=None), critical=True
        )
    cert: x509.Certificate = builder.sign(ca.key, hashes.SHA256())
    return cert


def test_a_certificate_the_ca_issued_is_fine() -> None:
    # Judged now, not at NOW: collection may be minutes ago, more than the CA backdates.
    assert judge(CA.issue_client_cert(ALICE).cert, CA.cert, datetime.now(UTC)) is None
    assert judge(made(), CA.cert, NOW) is None
    assert judge(made(basic_ca=False), CA.cert, NOW) is None


def test_another_ca_is_not_ours() -> None:
    foreign = pki.CA.create("Some other CA").issue_client_cert(ALICE).cert
    assert judge(foreign, CA.cert, NOW) == Finding(CertificateFlaw.NOT_OURS)


def test_our_ca_name_with_another_key_is_not_ours() -> None:
    """Same issuer name, signature by another key: a forgery, not ours."""
    assert judge(made(ca=OTHER_CA), CA.cert, NOW) == Finding(CertificateFlaw.NOT_OURS)


def test_not_yet_valid_names_when_it_starts() -> None:
    cert = made(start=NOW + timedelta(days=2), end=NOW + timedelta(days=30))
    assert judge(cert, CA.cert, NOW) == Finding(
        CertificateFlaw.NOT_YET_VALID, cert.not_valid_before_utc
    )


def test_expired_names_when_it_ended() -> None:
    cert = made(start=NOW - timedelta(days=30), end=NOW - timedelta(days=1))
    assert judge(cert, CA.cert, NOW) == Finding(CertificateFlaw.EXPIRED, cert.not_valid_after_utc)


def test_the_validity_bounds_are_judged_at_now() -> None:
    cert = CA.issue_client_cert(ALICE, days=10).cert
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    assert judge(cert, CA.cert, start) is None
    assert judge(cert, CA.cert, end) is None
    early = judge(cert, CA.cert, start - timedelta(seconds=1))
    assert early is not None and early.flaw is CertificateFlaw.NOT_YET_VALID
    late = judge(cert, CA.cert, end + timedelta(seconds=1))
    assert late == Finding(CertificateFlaw.EXPIRED, end)


def test_a_ca_certificate_is_not_a_client() -> None:
    assert judge(made(basic_ca=True), CA.cert, NOW) == Finding(CertificateFlaw.CA_CERTIFICATE)
    # The CA's own certificate verifies as issued by itself.
    assert judge(CA.cert, CA.cert, NOW) == Finding(CertificateFlaw.CA_CERTIFICATE)


@pytest.mark.parametrize(
    "eku",
    [[], [ExtendedKeyUsageOID.SERVER_AUTH], [ExtendedKeyUsageOID.EMAIL_PROTECTION]],
    ids=["no-eku", "server-auth", "email-only"],
)
def test_without_client_auth_usage(eku: list[x509.ObjectIdentifier]) -> None:
    assert judge(made(eku=eku), CA.cert, NOW) == Finding(CertificateFlaw.NOT_CLIENT_AUTH)


def test_a_server_certificate_of_ours_is_not_a_client() -> None:
    server = CA.issue_server_cert(["gw.example.org"]).cert
    assert judge(server, CA.cert, NOW) == Finding(CertificateFlaw.NOT_CLIENT_AUTH)


def test_without_a_mailbox() -> None:
    assert judge(made(san=False), CA.cert, NOW) == Finding(CertificateFlaw.NO_MAILBOX)


def test_the_issuer_is_checked_before_anything_else() -> None:
    """A foreign certificate is `not ours` whatever else is wrong with it."""
    odd = made(ca=OTHER_CA, eku=[], san=False, end=NOW - timedelta(days=1))
    assert judge(odd, CA.cert, NOW) == Finding(CertificateFlaw.NOT_OURS)


# --- what the session is told --------------------------------------------------------------

HOLDER = CertificateUser(ALICE, "1A", "ab" * 32, CERTIFICATE)
OK = CertificateVerdict("ab" * 32, "1A", ALICE, holder=HOLDER)
DAY = datetime(2026, 1, 2, tzinfo=UTC)
EXPIRED = CertificateVerdict("cd" * 32, "2B", flaw=CertificateFlaw.EXPIRED, date=DAY)
UNCHECKED = CertificateVerdict("ef" * 32, flaw=CertificateFlaw.UNCHECKED)


def test_external_with_a_flawed_certificate_says_what_is_wrong() -> None:
    check_external(OK)
    with pytest.raises(Refusal) as info:
        check_external(EXPIRED)
    assert info.value.kind is Kind.CERTIFICATE_REFUSED
    assert info.value.params == {"flaw": CertificateFlaw.EXPIRED, "date": DAY}


def test_a_certificate_not_checked_is_a_temporary_failure() -> None:
    for call in (
        lambda: check_external(UNCHECKED),
        lambda: check_required(UNCHECKED, required=True),
        lambda: mail_identity(
            None, greeted=True, cert=None, certificate_without_auth=True, verdict=UNCHECKED
        ),
    ):
        with pytest.raises(Unavailable) as info:
            call()
        assert info.value.what is Need.CERTIFICATES


def test_required_certificates() -> None:
    check_required(OK, required=True)
    check_required(None, required=False)
    check_required(EXPIRED, required=False)
    with pytest.raises(Refusal) as missing:
        check_required(None, required=True)
    assert missing.value.kind is Kind.CERTIFICATE_REQUIRED and not missing.value.params
    with pytest.raises(Refusal) as flawed:
        check_required(EXPIRED, required=True)
    assert flawed.value.kind is Kind.CERTIFICATE_REQUIRED
    assert flawed.value.params["flaw"] is CertificateFlaw.EXPIRED


def test_auth_required_names_the_flaw_of_the_certificate_offered() -> None:
    assert auth_required(None).params == {}
    assert auth_required(OK).params == {}
    assert auth_required(EXPIRED).params == {"flaw": CertificateFlaw.EXPIRED, "date": DAY}


def test_mail_without_identity() -> None:
    """Nobody unidentified sends; the reply names the certificate's flaw, or that one is
    required on a listener that requires one."""

    def mail(verdict: CertificateVerdict | None, *, required: bool = False) -> Refusal:
        with pytest.raises(Refusal) as info:
            mail_identity(
                None,
                greeted=True,
                cert=verdict.holder if verdict else None,
                certificate_without_auth=True,
                verdict=verdict,
                certificate_required=required,
            )
        return info.value

    assert mail(None).kind is Kind.AUTH_REQUIRED and not mail(None).params
    assert mail(EXPIRED).kind is Kind.AUTH_REQUIRED
    assert mail(EXPIRED).params["flaw"] is CertificateFlaw.EXPIRED
    assert mail(None, required=True).kind is Kind.CERTIFICATE_REQUIRED
    assert mail(EXPIRED, required=True).kind is Kind.CERTIFICATE_REQUIRED
    identity = mail_identity(
        None,
        greeted=True,
        cert=HOLDER,
        certificate_without_auth=True,
        verdict=OK,
        certificate_required=True,
    )
    assert identity.user == ALICE and identity.mechanism == "CERTIFICATE"
