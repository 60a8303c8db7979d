"""Pure relay-policy decisions: who may send what, once the session has an identity."""

from __future__ import annotations

from submitgw.auth import Identity
from submitgw.errors import SmtpReply


def require_identity(identity: Identity | None) -> Identity:
    """The open-relay rule: no transaction starts for an unidentified client."""
    if identity is None:
        raise SmtpReply(530, "5.7.0", "Authentication required")
    return identity


def check_sender(identity: Identity, sender: str) -> None:
    """Decide whether `identity` may use `sender` as its envelope sender.

    Bounces come from MTAs, never from a submitting user, so the null sender is
    refused. Binding users to their own addresses extends this check.
    """
    if not sender:
        raise SmtpReply(553, "5.7.1", "The null sender is not accepted for submission")
