"""The one table of SMTP wording: each `Kind` as an RFC 5321 code, RFC 3463 status and text.

Every reply a client sees is written here (a smarthost's refusal is passed on
as it came), so a reply can be read, changed and tested in one place; `render`
fills in a refusal's parameters. Texts are
one line of ASCII (a name that is not ASCII is left out), as a client that did
not ask for SMTPUTF8 must get. Whether a reply is temporary (4xx) or ends the
session (421) follows from its code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from submitgw.errors import AddressFlaw, FromFlaw, Kind, Need, Refusal
from submitgw.rules.limits import MESSAGES, RECIPIENTS, format_time, per_window
from submitgw.types import CertificateFlaw

Params = Mapping[str, object]


@dataclass(frozen=True)
class Reply:
    """One reply line as the client gets it."""

    code: int
    status: str
    text: str
    # Only for our own 421s: a smarthost's 421 ends its transaction, not the client's session.
    close: bool = False

    @property
    def line(self) -> str:
        return f"{self.code} {self.status} {self.text}"

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500


@dataclass(frozen=True)
class Wording:
    code: int
    status: str
    # A str.format template over the parameters, or a function of them.
    text: str | Callable[[Params], str]

    def render(self, params: Params) -> Reply:
        text = self.text(params) if callable(self.text) else self.text.format_map(params)
        return Reply(self.code, self.status, text, close=self.code == 421)


USAGE = {
    "EHLO": "EHLO hostname",
    "HELO": "HELO hostname",
    "STARTTLS": "STARTTLS",
    "AUTH": "AUTH mechanism [initial-response]",
    "DATA": "DATA",
    "MAIL": "MAIL FROM: <address> [parameters]",
    "RCPT": "RCPT TO: <address> [parameters]",
}

PATH_COMMAND = {"MAIL": "MAIL FROM:", "RCPT": "RCPT TO:"}

ADDRESS_FLAWS: dict[str, str] = {
    AddressFlaw.TOO_LONG: "too long",
    AddressFlaw.SOURCE_ROUTE: "source routes are not accepted",
    AddressFlaw.QUOTED: "quoted local parts are not accepted",
    AddressFlaw.NO_DOMAIN: "a domain is required",
    AddressFlaw.ROUTING: "routing characters (% and !) are not accepted",
    AddressFlaw.MANY_AT: "more than one @",
    AddressFlaw.IP_LITERAL: "IP address literals are not accepted",
    AddressFlaw.TRAILING_DOT: "trailing dot in the domain",
    AddressFlaw.LOCAL_PART: "invalid local part",
    AddressFlaw.DOMAIN: "invalid domain",
    AddressFlaw.EMPTY: "empty recipient",
}

FROM_FLAWS: dict[str, str] = {
    FromFlaw.MALFORMED: "is malformed or hidden",
    FromFlaw.TOO_LONG: "is too long; the limit is {limit} bytes",
    FromFlaw.TOO_MANY: "has too many addresses; the limit is {limit}",
    FromFlaw.NESTED_COMMENTS: "has comments nested too deeply",
    FromFlaw.NESTED: "is nested too deeply",
    FromFlaw.NOT_UTF8: "is not valid UTF-8",
    FromFlaw.INVALID_LIST: "is not a valid address list",
    FromFlaw.ENCODED_WORD: "has an encoded-word inside an address",
    FromFlaw.NO_ADDRESS: "has no address",
}

# The client holds the certificate, so it may learn what is wrong with it; what the
# inventory knows of the user's account (disabled, its networks) it may not.
NOT_VALID_HERE = "not valid for this gateway"
CERTIFICATE_FLAWS: dict[str, str] = {
    CertificateFlaw.NOT_OURS: "not issued by this gateway",
    CertificateFlaw.NOT_YET_VALID: "not yet valid",
    CertificateFlaw.EXPIRED: "expired",
    CertificateFlaw.CA_CERTIFICATE: "is a CA certificate",
    CertificateFlaw.NOT_CLIENT_AUTH: "not for client authentication",
    CertificateFlaw.NO_MAILBOX: "names no mailbox",
    CertificateFlaw.NOT_IN_INVENTORY: "not known to this gateway",
    CertificateFlaw.REVOKED: "revoked",
    CertificateFlaw.USER_DISABLED: NOT_VALID_HERE,
    CertificateFlaw.OUTSIDE_NETWORKS: NOT_VALID_HERE,
    CertificateFlaw.UNCHECKED: "could not be checked",
}
# The same, when the date that goes with the flaw is known (UTC).
CERTIFICATE_DATED: dict[str, str] = {
    CertificateFlaw.NOT_YET_VALID: "not valid before {date:%Y-%m-%d %H:%M} UTC",
    CertificateFlaw.EXPIRED: "expired on {date:%Y-%m-%d}",
    CertificateFlaw.REVOKED: "revoked on {date:%Y-%m-%d}",
}

# Storage failures: what the client was doing decides who it hears it from.
UNAVAILABLE: dict[str, Wording] = {
    Need.LOGIN: Wording(454, "4.7.0", "Temporary authentication failure, try again later"),
    Need.LIMITS: Wording(451, "4.3.0", "Cannot check sending limits now, try again later"),
    Need.SENDERS: Wording(451, "4.3.0", "Cannot check sender addresses now, try again later"),
    Need.ACCESS_RULES: Wording(421, "4.3.0", "Temporary failure, try again later"),
    Need.CERTIFICATES: Wording(454, "4.7.0", "Temporary authentication failure, try again later"),
    Need.ACCOUNT: Wording(451, "4.3.0", "Temporary failure, try again later"),
}


def _number(p: Params, key: str) -> float:
    value = p[key]
    if not isinstance(value, int | float):
        raise TypeError(f"{key} must be a number, not {value!r}")
    return value


def _ascii_or(name: object, instead: str) -> str:
    text = str(name)
    return text if text.isascii() else instead


def _limit_reached(p: Params) -> str:
    measure, limit, resets = p["measure"], p["limit"], p["resets"]
    window = per_window(int(_number(p, "window")))
    kind = "Message" if measure == MESSAGES else "Recipient"
    text = f"{kind} limit reached for {p['who']}: {limit} {measure} {window}"
    if resets is not None:
        resets_at = _number(p, "resets")
        left = max(0, round(resets_at - _number(p, "now")))
        text += f"; resets at {format_time(resets_at)} (in {left} s)"
    elif measure == RECIPIENTS and _number(p, "limit") > 0:
        text += "; send to the other recipients in a later message"
    return text


def _password_expired(p: Params) -> str:
    url = p.get("url")
    where = f"change it at {url}" if url else "ask your administrator for a new one"
    return f"Password expired, {where}"


def _certificate_flaw(p: Params) -> str:
    flaw = str(p["flaw"])
    if flaw in CERTIFICATE_DATED and isinstance(p.get("date"), datetime):
        return CERTIFICATE_DATED[flaw].format_map(p)
    return CERTIFICATE_FLAWS[flaw]


def _with_certificate_flaw(text: str) -> Callable[[Params], str]:
    """`text`, naming what is wrong with the session's certificate when it has one."""
    return lambda p: f"{text}; certificate {_certificate_flaw(p)}" if p.get("flaw") else text


def _access_denied(p: Params) -> str:
    """The admin's text (made one printable ASCII line by `screening.deny_refusal`)."""
    return str(p.get("text") or "Access denied")


WORDING: dict[Kind, Wording] = {
    Kind.BAD_LINE: Wording(500, "5.5.2", "Syntax error: bare CR, LF or NUL"),
    Kind.LINE_TOO_LONG: Wording(500, "5.5.2", "Line too long"),
    Kind.BAD_UTF8: Wording(500, "5.5.2", "Syntax error: invalid UTF-8"),
    Kind.UNKNOWN_COMMAND: Wording(500, "5.5.1", "Command not recognized"),
    Kind.TOO_MANY_COMMANDS: Wording(421, "4.7.0", "Too many commands, closing connection"),
    Kind.SYNTAX: Wording(501, "5.5.4", lambda p: f"Syntax: {USAGE[str(p['command'])]}"),
    Kind.NEED_BRACKETS: Wording(
        501,
        "5.5.4",
        lambda p: f"Syntax: {PATH_COMMAND[str(p['command'])]} needs the address in angle brackets",
    ),
    Kind.TLS_REQUIRED: Wording(530, "5.7.0", "Must issue a STARTTLS command first"),
    Kind.TLS_ACTIVE: Wording(554, "5.5.1", "TLS already active"),
    Kind.NEED_EHLO: Wording(503, "5.5.1", "Send EHLO first"),
    Kind.ALREADY_AUTHENTICATED: Wording(503, "5.5.1", "Already authenticated"),
    Kind.AUTH_IN_TRANSACTION: Wording(503, "5.5.1", "AUTH not allowed during a mail transaction"),
    Kind.NESTED_MAIL: Wording(503, "5.5.1", "Nested MAIL command"),
    Kind.NEED_MAIL: Wording(503, "5.5.1", "Need MAIL command first"),
    Kind.NEED_RCPT: Wording(503, "5.5.1", "Need RCPT command first"),
    Kind.EXPN_UNSUPPORTED: Wording(502, "5.5.1", "EXPN not supported"),
    Kind.UNKNOWN_MECHANISM: Wording(504, "5.5.4", "Unrecognized authentication mechanism"),
    Kind.AUTH_CANCELLED: Wording(501, "5.7.0", "Authentication cancelled"),
    Kind.BAD_BASE64: Wording(501, "5.5.2", "Cannot decode base64 response"),
    Kind.BAD_PLAIN: Wording(501, "5.5.2", "Malformed PLAIN response"),
    Kind.AUTH_FAILED: Wording(535, "5.7.8", "Authentication credentials invalid"),
    Kind.PASSWORD_EXPIRED: Wording(535, "5.7.8", _password_expired),
    Kind.AUTH_BUSY: Wording(454, "4.7.0", "Too many logins in progress, try again later"),
    Kind.LOGIN_LOCKED: Wording(
        454,
        "4.7.0",
        lambda p: f"Too many failed logins, try again after {format_time(_number(p, 'until'))}",
    ),
    Kind.TOO_MANY_LOGINS: Wording(454, "4.7.0", "Too many logins, try again later"),
    Kind.CERTIFICATE_REFUSED: Wording(
        535, "5.7.8", lambda p: f"Certificate {_certificate_flaw(p)}"
    ),
    Kind.CERTIFICATE_REQUIRED: Wording(
        530, "5.7.0", _with_certificate_flaw("Client certificate required")
    ),
    Kind.AUTH_REQUIRED: Wording(530, "5.7.0", _with_certificate_flaw("Authentication required")),
    Kind.BAD_SENDER: Wording(
        553,
        "5.1.7",
        lambda p: f"Address not accepted: {ADDRESS_FLAWS[str(p['flaw'])]}",
    ),
    Kind.BAD_RECIPIENT: Wording(
        553,
        "5.1.3",
        lambda p: f"Address not accepted: {ADDRESS_FLAWS[str(p['flaw'])]}",
    ),
    Kind.NEEDS_SMTPUTF8: Wording(553, "5.6.7", "Non-ASCII address requires SMTPUTF8"),
    Kind.BAD_PARAMETER: Wording(
        501, "5.5.4", lambda p: f"Invalid parameter {str(p['word'])[:40]!r}"
    ),
    Kind.DUPLICATE_PARAMETER: Wording(
        501, "5.5.4", lambda p: f"Parameter {str(p['name']).upper()[:20]} given twice"
    ),
    Kind.BAD_SIZE: Wording(501, "5.5.4", "SIZE needs a number"),
    Kind.BAD_BODY: Wording(501, "5.5.4", "BODY must be 7BIT or 8BITMIME"),
    Kind.SMTPUTF8_VALUE: Wording(501, "5.5.4", "SMTPUTF8 takes no value"),
    Kind.BAD_AUTH_PARAMETER: Wording(501, "5.5.4", "AUTH needs an xtext value"),
    Kind.MAIL_PARAMETER_UNSUPPORTED: Wording(
        555, "5.5.4", lambda p: f"MAIL parameter {str(p['name'])[:20]} not supported"
    ),
    Kind.RCPT_PARAMETER_UNSUPPORTED: Wording(
        555, "5.5.4", lambda p: f"RCPT parameter {str(p['name'])[:20]} not supported"
    ),
    Kind.NULL_SENDER: Wording(553, "5.7.1", "The null sender is not accepted for submission"),
    Kind.SENDER_NOT_ALLOWED: Wording(
        553,
        "5.7.1",
        lambda p: f"Sender address not allowed for {_ascii_or(p['user'], 'this user')}",
    ),
    Kind.TOO_MANY_MESSAGES: Wording(421, "4.7.0", "Too many messages in one session"),
    Kind.TOO_MANY_RECIPIENTS: Wording(452, "4.5.3", "Too many recipients"),
    Kind.LIMIT_REACHED: Wording(450, "4.7.1", _limit_reached),
    Kind.MESSAGE_TOO_BIG: Wording(552, "5.3.4", "Message too big; the limit is {limit} bytes"),
    Kind.MESSAGE_NUL: Wording(554, "5.6.0", "Message contains NUL characters"),
    Kind.EIGHT_BIT_UNDECLARED: Wording(554, "5.6.0", "8-bit message data requires BODY=8BITMIME"),
    Kind.HEADER_TOO_BIG: Wording(
        554, "5.6.0", "Header section too big; the limit is {limit} bytes"
    ),
    Kind.HEADER_TOO_COMPLEX: Wording(554, "5.6.0", "Header section too complex to check in time"),
    Kind.FROM_UNREADABLE: Wording(
        550,
        "5.7.1",
        lambda p: "From: header " + FROM_FLAWS[str(p["flaw"])].format_map(p),
    ),
    Kind.FROM_NOT_ALLOWED: Wording(550, "5.7.1", "From: header address not allowed for this user"),
    Kind.SMARTHOST_UNAVAILABLE: Wording(451, "4.4.1", "Smarthost unavailable, try again later"),
    Kind.SMARTHOST_UNCONFIRMED: Wording(
        451,
        "4.4.2",
        "Smarthost did not confirm the message; it may or may not have been queued",
    ),
    Kind.ACCESS_DENIED: Wording(554, "5.7.1", _access_denied),
    Kind.SHUTTING_DOWN: Wording(421, "4.3.2", "Service shutting down, closing connection"),
    Kind.SHUTDOWN_REFUSED: Wording(421, "4.3.2", "Service shutting down, try again later"),
    Kind.TOO_MANY_CONNECTIONS: Wording(421, "4.7.0", "Too many connections, try again later"),
    Kind.TOO_MANY_FROM_CLIENT: Wording(
        421, "4.7.0", "Too many connections from your address, try later"
    ),
    Kind.EVICTED: Wording(421, "4.7.0", "Too many connections, closing this one"),
    Kind.TOO_MANY_ERRORS: Wording(421, "4.7.0", "Too many errors, closing connection"),
    Kind.IDLE_TIMEOUT: Wording(421, "4.4.2", "{hostname} Idle timeout, closing connection"),
    Kind.LOGIN_TIMEOUT: Wording(421, "4.4.2", "{hostname} No login in time, closing connection"),
    Kind.SESSION_EXPIRED: Wording(
        421, "4.4.2", "{hostname} Session lifetime exceeded, closing connection"
    ),
    Kind.DATA_TOO_LONG: Wording(421, "4.4.2", "{hostname} Session too long, closing connection"),
    Kind.INTERNAL_ERROR: Wording(421, "4.3.0", "Internal error, closing connection"),
}


# The session's positive replies. EHLO's capability lines and AUTH's 334 challenges
# are protocol, not wording, and stay with the session.
TLS_READY = "220 2.0.0 Ready to start TLS"
AUTHENTICATED = "235 2.7.0 Authentication successful"
SENDER_OK = "250 2.1.0 Sender OK"
RECIPIENT_OK = "250 2.1.5 Recipient OK"
START_DATA = "354 End data with <CR><LF>.<CR><LF>"
OK = "250 2.0.0 OK"
BYE = "221 2.0.0 Bye"
CANNOT_VERIFY = "252 2.5.0 Cannot verify users; send mail and delivery will be attempted"
HELP = "214 2.0.0 See RFC 5321 and RFC 6409"


def greeting(hostname: str) -> str:
    return f"220 {hostname} ESMTP ready"


def accepted(queue_id: str, smarthost_line: str) -> str:
    """The client's 250 after DATA: the gateway's queue id, in the words clients and log
    readers look for, then the smarthost's own reply, which is what accepted it."""
    return f"250 2.0.0 Ok: queued as {queue_id} (smarthost: {smarthost_line[:200]})"


def _upstream(params: Params) -> Reply:
    """A smarthost refusal passed on with its own code and status; never closes our session."""
    code = params["code"]
    assert isinstance(code, int)
    return Reply(code, str(params["status"]), str(params["text"]))


def render(refusal: Refusal) -> Reply:
    """The reply `refusal` gets; every `Kind` has a wording (tests check that)."""
    kind, params = refusal.kind, refusal.params
    if kind is Kind.UPSTREAM_REFUSED:
        return _upstream(params)
    if kind is Kind.UNAVAILABLE:
        return UNAVAILABLE[str(params["what"])].render(params)
    return WORDING[kind].render(params)


def line(refusal: Refusal) -> str:
    return render(refusal).line
