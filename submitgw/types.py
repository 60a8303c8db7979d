"""Values every layer passes around: who a session speaks for, how they may log in, and
the stored settings (access rules, own limits) that the store hands to the rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

PASSWORD = "password"
CERTIFICATE = "certificate"
# Either credential alone: what a new user gets unless told otherwise.
PASSWORD_OR_CERTIFICATE = "password-or-certificate"
TWO_FACTOR = "password+certificate"
AUTH_POLICIES = (PASSWORD, CERTIFICATE, PASSWORD_OR_CERTIFICATE, TWO_FACTOR)
DEFAULT_AUTH_POLICY = PASSWORD_OR_CERTIFICATE


@dataclass(frozen=True)
class CertificateUser:
    """A client certificate that passed every check, and the user it is bound to."""

    user: str
    serial: str
    fingerprint: str
    auth_policy: str
    # False when the user has source networks and this client is outside them:
    # the certificate then identifies nobody (535 5.7.8, like any failed login).
    source_allowed: bool = True
    # What the user may send as, read with the certificate; None: unread.
    senders: tuple[str, ...] | None = field(default=None, compare=False)


class CertificateFlaw(StrEnum):
    """Why a client certificate identifies nobody; also the audit log's `reason`."""

    # Judged from the certificate alone (`rules.certificates.judge`)
    NOT_OURS = "not-ours"  # another issuer, a bad signature, or not readable
    NOT_YET_VALID = "not-yet-valid"  # date: not_before
    EXPIRED = "expired"  # date: not_after
    CA_CERTIFICATE = "ca-certificate"
    NOT_CLIENT_AUTH = "not-client-auth"
    NO_MAILBOX = "no-mailbox"
    # Judged against the inventory (`services.authn.CertificateAuthenticator`)
    NOT_IN_INVENTORY = "not-in-inventory"
    REVOKED = "revoked"  # date: revoked_at
    USER_DISABLED = "user-disabled"
    OUTSIDE_NETWORKS = "outside-networks"
    # Not judged: the inventory could not be read, or the check itself failed
    UNCHECKED = "unchecked"


@dataclass(frozen=True)
class CertificateVerdict:
    """What the gateway made of the certificate a client offered: usable, or why not.

    `fingerprint` is always known; `serial` whenever the certificate could be read,
    `user` once the inventory names one (for the log; a refusal never shows it).
    `holder` is set exactly when there is no `flaw`.
    """

    fingerprint: str
    serial: str | None = None
    user: str | None = None
    flaw: CertificateFlaw | None = None
    date: datetime | None = None
    holder: CertificateUser | None = None

    @property
    def ok(self) -> bool:
        return self.flaw is None


@dataclass(frozen=True)
class Identity:
    """Who a session is speaking for, carried to the Received header and the logs."""

    user: str
    mechanism: str
    cert_serial: str | None = None
    cert_fingerprint: str | None = None
    # "ID LABEL" of the app password used, so a message names the device that sent it.
    app_password: str | None = None
    # What the user may send as (own address first), when read with the login; None: unread.
    senders: tuple[str, ...] | None = field(default=None, compare=False)


class CertificateFacts(Protocol):
    """What the inventory records about a certificate the CA issued, spelled as text.

    `pki.IssuedCertificate` is one; the store takes these rather than X.509 objects
    so that it needs no certificate parsing of its own.
    """

    @property
    def serial(self) -> str: ...
    @property
    def fingerprint_sha256(self) -> str: ...
    @property
    def email(self) -> str | None: ...
    @property
    def subject(self) -> str: ...
    @property
    def not_before(self) -> datetime: ...
    @property
    def not_after(self) -> datetime: ...
    def cert_pem(self) -> bytes: ...


ALLOW = "allow"
DENY = "deny"
ACTIONS = (ALLOW, DENY)


@dataclass(frozen=True)
class Rule:
    """One stored access rule; `rule` is the normalised text `rules.access.parse_rule` produced."""

    id: int
    action: str
    rule: str
    comment: str = ""

    def __str__(self) -> str:
        return f"#{self.id} {self.action} {self.rule}"


@dataclass(frozen=True)
class Override:
    """A user's own sending limits; None keeps the configured default."""

    messages: int | None = None
    recipients: int | None = None
