"""Values every layer passes around: who a session speaks for, how they may log in, and
the stored settings (access rules, own limits) that the store hands to the rules."""

from __future__ import annotations

from dataclasses import dataclass

PASSWORD = "password"
CERTIFICATE = "certificate"
TWO_FACTOR = "password+certificate"


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


@dataclass(frozen=True)
class Identity:
    """Who a session is speaking for, carried to the Received header and the logs."""

    user: str
    mechanism: str
    cert_serial: str | None = None
    cert_fingerprint: str | None = None
    # "ID LABEL" of the app password used, so a message names the device that sent it.
    app_password: str | None = None


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
