"""What an SMTP session in a given state may do next, and its per-session caps.

The session (`smtp/session.py`) reads and writes the wire; before each step it
asks one of these functions, which raise the `Refusal` to give or return what
the step needs. Keeping the decisions here lets each be tested without a
socket, and keeps the order of the checks (and so the reply a client sees
first) in one readable place per command.
"""

from __future__ import annotations

import re

from submitgw.errors import AuthFailed, Kind, Refusal
from submitgw.rules.certificates import auth_required, check_required
from submitgw.rules.policy import (
    certificate_alone_allowed,
    certificate_identity,
)
from submitgw.types import CertificateUser, CertificateVerdict, Identity

# RFC 3207 4: before TLS a client may only greet, start TLS and do harmless things.
PRE_TLS_COMMANDS = frozenset({"EHLO", "HELO", "STARTTLS", "NOOP", "RSET", "QUIT"})
# Commands that move no mail: a client can repeat them forever to hold a slot.
JUNK_COMMANDS = frozenset({"NOOP", "RSET", "VRFY", "EXPN", "HELP", "EHLO", "HELO"})
PASSWORD_MECHANISMS = frozenset({"PLAIN", "LOGIN"})
_HELO_NAME = re.compile(r"[A-Za-z0-9.:_\-\[\]]+")


def split_command(raw: bytes, *, command_limit: int, auth_limit: int) -> tuple[str, str | None]:
    """The verb (upper case) and argument of one command line, or why it is unreadable."""
    line = raw.rstrip(b"\r\n")
    if b"\x00" in line or b"\r" in line or not raw.endswith(b"\r\n"):
        raise Refusal(Kind.BAD_LINE)
    verb_bytes, _, arg_bytes = line.partition(b" ")
    verb = verb_bytes.decode("ascii", "replace").upper()
    if len(raw) > (auth_limit if verb == "AUTH" else command_limit):
        raise Refusal(Kind.LINE_TOO_LONG)
    try:
        arg = arg_bytes.decode("utf-8").strip() or None
    except UnicodeDecodeError:
        raise Refusal(Kind.BAD_UTF8) from None
    return verb, arg


def admit_command(verb: str, *, known: bool, tls: bool, junk: int, max_junk: int) -> int:
    """Whether `verb` may run at all now; returns the session's junk count after it.

    Junk commands are counted even before TLS, so a client cannot idle on NOOP
    without ever starting TLS; everything that touches accounts or mail waits for TLS.
    """
    if not known:
        raise Refusal(Kind.UNKNOWN_COMMAND)
    if verb in JUNK_COMMANDS:
        junk += 1
        if junk > max_junk:
            raise Refusal(Kind.TOO_MANY_COMMANDS)
    if not tls and verb not in PRE_TLS_COMMANDS:
        raise Refusal(Kind.TLS_REQUIRED)
    return junk


def check_error_count(errors: int, max_errors: int) -> None:
    """A client that keeps getting 4xx/5xx replies is probing, not submitting: end it."""
    if errors >= max_errors:
        raise Refusal(Kind.TOO_MANY_ERRORS)


def time_left(
    now: float, *, deadline: float, login_deadline: float, identified: bool
) -> tuple[float, Kind]:
    """Seconds until the session's lifetime, or a stranger's time to log in, ends; and which."""
    if not identified and login_deadline < deadline:
        return login_deadline - now, Kind.LOGIN_TIMEOUT
    return deadline - now, Kind.SESSION_EXPIRED


def helo_name(arg: str | None, *, extended: bool) -> str:
    """The name a client greets with, as it may appear in the Received header."""
    if not arg:
        raise Refusal(Kind.SYNTAX, command="EHLO" if extended else "HELO")
    name = arg.split()[0][:255]
    return name if _HELO_NAME.fullmatch(name) else "invalid-helo"


def extensions(*, tls: bool, certificate: bool, max_size: int) -> list[str]:
    """The EHLO keywords: AUTH is offered only inside TLS, EXTERNAL only when the client
    sent a certificate (even a flawed one, so that EXTERNAL can say what is wrong with it)."""
    offered = ["PIPELINING", f"SIZE {max_size}", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"]
    if not tls:
        return [*offered, "STARTTLS"]
    return [*offered, "AUTH PLAIN LOGIN EXTERNAL" if certificate else "AUTH PLAIN LOGIN"]


def check_starttls(arg: str | None, *, tls: bool) -> None:
    if tls:
        raise Refusal(Kind.TLS_ACTIVE)
    if arg:
        raise Refusal(Kind.SYNTAX, command="STARTTLS")


def parse_auth(
    arg: str | None, *, esmtp: bool, authenticated: bool, in_transaction: bool, certificate: bool
) -> tuple[str, str | None]:
    """The mechanism (upper case) and initial response of an AUTH command allowed now.

    RFC 4954 4: AUTH follows EHLO, happens once, and never inside a transaction.
    EXTERNAL needs a certificate in this session; a flawed one is refused with its
    reason (`rules.certificates.check_external`).
    """
    if not esmtp:
        raise Refusal(Kind.NEED_EHLO)
    if authenticated:
        raise Refusal(Kind.ALREADY_AUTHENTICATED)
    if in_transaction:
        raise Refusal(Kind.AUTH_IN_TRANSACTION)
    words = (arg or "").split()
    if not words or len(words) > 2:
        raise Refusal(Kind.SYNTAX, command="AUTH")
    mechanism = words[0].upper()
    if mechanism not in PASSWORD_MECHANISMS and not (mechanism == "EXTERNAL" and certificate):
        raise Refusal(Kind.UNKNOWN_MECHANISM)
    return mechanism, words[1] if len(words) == 2 else None


def external_identity(cert: CertificateUser, wanted: bytes) -> Identity:
    """RFC 4422 appendix A: the certificate logs in, as its own user or as nobody."""
    if wanted and wanted.decode("utf-8", "replace").strip().lower() != cert.user:
        raise AuthFailed()
    return certificate_identity(cert, "EXTERNAL")


def certificate_login(cert: CertificateUser | None, *, listener_allows: bool) -> Identity | None:
    """Who a certificate alone logs in, without AUTH, or None.

    Only a user whose policy takes the certificate alone, from an allowed network, on
    a listener that lets certificates stand in for AUTH; everyone else still has to log in.
    """
    if cert is None or not listener_allows:
        return None
    if not certificate_alone_allowed(cert.auth_policy) or not cert.source_allowed:
        return None
    return certificate_identity(cert, "CERTIFICATE")


def mail_identity(
    identity: Identity | None,
    *,
    greeted: bool,
    cert: CertificateUser | None,
    certificate_without_auth: bool,
    verdict: CertificateVerdict | None = None,
    certificate_required: bool = False,
) -> Identity:
    """Who a MAIL command sends as; the open-relay rule: nobody unidentified sends.

    A client refused for want of an identity hears what was wrong with the
    certificate it offered, if any: that may be why it was not identified.
    """
    if not greeted:
        raise Refusal(Kind.NEED_EHLO)
    if identity is not None:
        return identity
    check_required(verdict, required=certificate_required)
    identity = certificate_login(cert, listener_allows=certificate_without_auth)
    if identity is None:
        raise auth_required(verdict)
    return identity


def check_new_transaction(*, in_transaction: bool, messages: int, max_messages: int) -> None:
    """One transaction at a time, and at most `max_messages` accepted per session."""
    if in_transaction:
        raise Refusal(Kind.NESTED_MAIL)
    if messages >= max_messages:
        raise Refusal(Kind.TOO_MANY_MESSAGES)


def check_recipient(*, in_transaction: bool, recipients: int, max_recipients: int) -> None:
    """RCPT needs a MAIL first, and one message reaches at most `max_recipients`."""
    if not in_transaction:
        raise Refusal(Kind.NEED_MAIL)
    if recipients >= max_recipients:
        raise Refusal(Kind.TOO_MANY_RECIPIENTS)


def check_data(arg: str | None, *, in_transaction: bool, recipients: int) -> None:
    if not in_transaction:
        raise Refusal(Kind.NEED_MAIL)
    if not recipients:
        raise Refusal(Kind.NEED_RCPT)
    if arg:
        raise Refusal(Kind.SYNTAX, command="DATA")
