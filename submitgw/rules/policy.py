"""Pure relay-policy decisions: who may send what, once the session has an identity."""

from __future__ import annotations

from submitgw.errors import AuthFailed, Kind, Refusal
from submitgw.rules.binding import address_allowed
from submitgw.types import (
    CERTIFICATE,
    PASSWORD,
    PASSWORD_OR_CERTIFICATE,
    TWO_FACTOR,
    CertificateUser,
    Identity,
)


def require_identity(identity: Identity | None) -> Identity:
    """The open-relay rule: no transaction starts for an unidentified client."""
    if identity is None:
        raise Refusal(Kind.AUTH_REQUIRED)
    return identity


def check_sender(identity: Identity, sender: str, allowed: list[str]) -> None:
    """Decide whether `identity` may use `sender` as its envelope sender.

    Bounces come from MTAs, never from a submitting user, so the null sender is
    refused. Otherwise the sender must be the user's own address, which is always
    allowed (the login proves it is theirs, and no binding can take it away), or
    match one of `allowed` (addresses and `@domain` patterns, see `binding`).
    """
    if not sender:
        raise Refusal(Kind.NULL_SENDER)
    if not address_allowed(sender, [identity.user, *allowed]):
        raise Refusal(Kind.SENDER_NOT_ALLOWED, user=identity.user)


def check_header_from(from_addresses: list[str], allowed: list[str]) -> None:
    """Every From: address must be one the user may send as (`allowed` holds their own).

    The envelope sender is what bounces see; the From: header is what the
    recipient sees, so a forged one is the forgery that matters to people.
    """
    for address in from_addresses:
        if not address_allowed(address, allowed):
            raise Refusal(Kind.FROM_NOT_ALLOWED)


def password_allowed(policy: str, login: str, cert: CertificateUser | None) -> bool:
    """Whether a correct password logs `login` in, given the session's certificate.

    A certificate-only user never logs in with a password; a two-factor user only
    with their own certificate in the same session; and a certificate of one user
    never goes with the password of another.
    """
    if cert is not None and cert.user != login:
        return False
    if policy in (PASSWORD, PASSWORD_OR_CERTIFICATE):
        return True
    if policy == TWO_FACTOR:
        return cert is not None
    return False


def certificate_alone_allowed(policy: str) -> bool:
    """Whether a valid certificate of the user, without a password, logs them in."""
    return policy in (CERTIFICATE, PASSWORD_OR_CERTIFICATE)


def certificate_identity(cert: CertificateUser, mechanism: str) -> Identity:
    """The identity a certificate alone gives, to users whose policy lets it."""
    if not certificate_alone_allowed(cert.auth_policy) or not cert.source_allowed:
        raise AuthFailed()
    return Identity(cert.user, mechanism, cert.serial, cert.fingerprint, senders=cert.senders)
