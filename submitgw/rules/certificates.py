"""Pure decisions about a client certificate: what is wrong with it, and what a client hears.

The TLS handshake takes whatever certificate a client offers, so everything that
makes one usable is decided here and in `services.authn` (which adds what only
the inventory knows). A flawed certificate identifies nobody but ends nothing:
the client is told why at the command that needed it, and may still log in with
a password.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import ExtendedKeyUsageOID

from submitgw.errors import Kind, Need, Refusal, Unavailable
from submitgw.types import CertificateFlaw, CertificateVerdict


@dataclass(frozen=True)
class Finding:
    """A flaw found in the certificate itself, with the date it concerns, if any."""

    flaw: CertificateFlaw
    date: datetime | None = None


@dataclass(frozen=True)
class Facts:
    """What a certificate is under one CA, whatever the time: the costly part of `judge`
    (a signature check and the extensions), so it can be kept per certificate."""

    ours: bool
    not_before: datetime | None = None
    not_after: datetime | None = None
    purpose: Finding | None = None


def facts(cert: x509.Certificate, ca: x509.Certificate) -> Facts:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return Facts(ours=False)
    try:
        purpose = _purpose(cert)
    except ValueError:
        # Signed by us yet with extensions x509 cannot parse: nothing we issued.
        return Facts(ours=False)
    return Facts(True, cert.not_valid_before_utc, cert.not_valid_after_utc, purpose)


def judged(known: Facts, now: datetime) -> Finding | None:
    """None if the certificate is a client certificate of ours, valid at `now`; else its
    first flaw, in the order a person would check: whose it is, when it is valid, what
    it is for, whom it names."""
    if not known.ours or known.not_before is None or known.not_after is None:
        return Finding(CertificateFlaw.NOT_OURS)
    if now < known.not_before:
        return Finding(CertificateFlaw.NOT_YET_VALID, known.not_before)
    if now > known.not_after:
        return Finding(CertificateFlaw.EXPIRED, known.not_after)
    return known.purpose


def judge(cert: x509.Certificate, ca: x509.Certificate, now: datetime) -> Finding | None:
    """None if `cert` is a client certificate `ca` signed, valid at `now`; else its first flaw."""
    return judged(facts(cert, ca), now)


def _purpose(cert: x509.Certificate) -> Finding | None:
    extensions = cert.extensions
    try:
        if extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return Finding(CertificateFlaw.CA_CERTIFICATE)
    except x509.ExtensionNotFound:
        pass
    try:
        usages = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return Finding(CertificateFlaw.NOT_CLIENT_AUTH)
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        return Finding(CertificateFlaw.NOT_CLIENT_AUTH)
    try:
        names = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return Finding(CertificateFlaw.NO_MAILBOX)
    if not names.get_values_for_type(x509.RFC822Name):
        return Finding(CertificateFlaw.NO_MAILBOX)
    return None


def _flaw_params(verdict: CertificateVerdict) -> dict[str, object]:
    return {"flaw": verdict.flaw, "date": verdict.date}


def check_external(verdict: CertificateVerdict) -> None:
    """AUTH EXTERNAL with a flawed certificate: refused with what is wrong with it.

    A certificate that could not be checked is a temporary failure, never a verdict.
    """
    if verdict.flaw is CertificateFlaw.UNCHECKED:
        raise Unavailable(Need.CERTIFICATES)
    if verdict.flaw is not None:
        raise Refusal(Kind.CERTIFICATE_REFUSED, **_flaw_params(verdict))


def check_required(verdict: CertificateVerdict | None, *, required: bool) -> None:
    """On a listener that requires certificates, nothing needing an identity goes
    ahead without a usable one; the client hears why (530), and the session goes on."""
    if not required or (verdict is not None and verdict.ok):
        return
    if verdict is None:
        raise Refusal(Kind.CERTIFICATE_REQUIRED)
    if verdict.flaw is CertificateFlaw.UNCHECKED:
        raise Unavailable(Need.CERTIFICATES)
    raise Refusal(Kind.CERTIFICATE_REQUIRED, **_flaw_params(verdict))


def auth_required(verdict: CertificateVerdict | None) -> Refusal:
    """MAIL from nobody: `530 5.7.0`, naming the certificate's flaw if it offered one,
    since a certificate user would otherwise not know why it was not identified.
    A certificate that could not be checked might have identified it: come back later."""
    if verdict is None or verdict.ok:
        return Refusal(Kind.AUTH_REQUIRED)
    if verdict.flaw is CertificateFlaw.UNCHECKED:
        return Unavailable(Need.CERTIFICATES)
    return Refusal(Kind.AUTH_REQUIRED, **_flaw_params(verdict))
