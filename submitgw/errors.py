"""One error tree: what was refused (a `Kind`) and the facts that go with it, never wire text.

Decisions raise a `Refusal` where they are made (rules, services, the session);
the SMTP session words it through `submitgw.smtp.replies`, the self-service
site through its own table in `submitgw.web`, so each client sees one wording
per kind and no Python text ever reaches a client. Whether a refusal is
temporary or ends the session follows from its wording (4xx, 421).
"""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    """Every refusal the gateway can give; `smtp.replies.WORDING` has one entry for each."""

    # The command line itself
    BAD_LINE = "bad-line"
    LINE_TOO_LONG = "line-too-long"
    BAD_UTF8 = "bad-utf8"
    UNKNOWN_COMMAND = "unknown-command"
    TOO_MANY_COMMANDS = "too-many-commands"
    SYNTAX = "syntax"  # params: command (EHLO, HELO, STARTTLS, AUTH, DATA, MAIL, RCPT)
    NEED_BRACKETS = "need-brackets"  # params: command (MAIL, RCPT)
    # Order of commands
    TLS_REQUIRED = "tls-required"
    TLS_ACTIVE = "tls-active"
    NEED_EHLO = "need-ehlo"
    ALREADY_AUTHENTICATED = "already-authenticated"
    AUTH_IN_TRANSACTION = "auth-in-transaction"
    NESTED_MAIL = "nested-mail"
    NEED_MAIL = "need-mail"
    NEED_RCPT = "need-rcpt"
    EXPN_UNSUPPORTED = "expn-unsupported"
    # AUTH
    UNKNOWN_MECHANISM = "unknown-mechanism"
    AUTH_CANCELLED = "auth-cancelled"
    BAD_BASE64 = "bad-base64"
    BAD_PLAIN = "bad-plain"
    AUTH_FAILED = "auth-failed"
    PASSWORD_EXPIRED = "password-expired"  # params: url (str | None)
    AUTH_BUSY = "auth-busy"
    LOGIN_LOCKED = "login-locked"  # params: until (Unix seconds)
    TOO_MANY_LOGINS = "too-many-logins"
    # params (all three): flaw (types.CertificateFlaw; optional for the last two), date
    CERTIFICATE_REFUSED = "certificate-refused"
    CERTIFICATE_REQUIRED = "certificate-required"
    AUTH_REQUIRED = "auth-required"
    # MAIL and RCPT
    BAD_SENDER = "bad-sender"  # params: flaw (AddressFlaw)
    BAD_RECIPIENT = "bad-recipient"  # params: flaw (AddressFlaw)
    NEEDS_SMTPUTF8 = "needs-smtputf8"
    BAD_PARAMETER = "bad-parameter"  # params: word
    DUPLICATE_PARAMETER = "duplicate-parameter"  # params: name
    BAD_SIZE = "bad-size"
    BAD_BODY = "bad-body"
    SMTPUTF8_VALUE = "smtputf8-value"
    BAD_AUTH_PARAMETER = "bad-auth-parameter"
    MAIL_PARAMETER_UNSUPPORTED = "mail-parameter-unsupported"  # params: name
    RCPT_PARAMETER_UNSUPPORTED = "rcpt-parameter-unsupported"  # params: name
    NULL_SENDER = "null-sender"
    SENDER_NOT_ALLOWED = "sender-not-allowed"  # params: user
    TOO_MANY_MESSAGES = "too-many-messages"
    TOO_MANY_RECIPIENTS = "too-many-recipients"
    # params: measure, who, limit, window (seconds), resets (Unix seconds | None), now
    LIMIT_REACHED = "limit-reached"
    # DATA
    MESSAGE_TOO_BIG = "message-too-big"  # params: limit (bytes)
    MESSAGE_NUL = "message-nul"
    EIGHT_BIT_UNDECLARED = "eight-bit-undeclared"
    HEADER_TOO_BIG = "header-too-big"  # params: limit (bytes)
    HEADER_TOO_COMPLEX = "header-too-complex"
    FROM_UNREADABLE = "from-unreadable"  # params: flaw (FromFlaw), limit for some flaws
    FROM_NOT_ALLOWED = "from-not-allowed"
    # The smarthost
    SMARTHOST_UNAVAILABLE = "smarthost-unavailable"
    SMARTHOST_UNCONFIRMED = "smarthost-unconfirmed"
    UPSTREAM_REFUSED = "upstream-refused"  # params: code, status, text (the smarthost's)
    # Storage or a worker failed; params: what (Need)
    UNAVAILABLE = "unavailable"
    # The connection as a whole
    ACCESS_DENIED = "access-denied"  # params: text (the admin's deny_message)
    SHUTTING_DOWN = "shutting-down"
    SHUTDOWN_REFUSED = "shutdown-refused"
    TOO_MANY_CONNECTIONS = "too-many-connections"
    TOO_MANY_FROM_CLIENT = "too-many-connections-from-client"
    EVICTED = "evicted"
    TOO_MANY_ERRORS = "too-many-errors"
    IDLE_TIMEOUT = "idle-timeout"  # params (all timeouts): hostname
    LOGIN_TIMEOUT = "login-timeout"
    SESSION_EXPIRED = "session-expired"
    DATA_TOO_LONG = "data-too-long"
    INTERNAL_ERROR = "internal-error"


class AddressFlaw(StrEnum):
    """Why an envelope address was refused (`BAD_SENDER`, `BAD_RECIPIENT`)."""

    TOO_LONG = "too-long"
    SOURCE_ROUTE = "source-route"
    QUOTED = "quoted"
    NO_DOMAIN = "no-domain"
    ROUTING = "routing"
    MANY_AT = "many-at"
    IP_LITERAL = "ip-literal"
    TRAILING_DOT = "trailing-dot"
    LOCAL_PART = "local-part"
    DOMAIN = "domain"
    EMPTY = "empty"


class FromFlaw(StrEnum):
    """Why a From: header could not be read safely (`FROM_UNREADABLE`)."""

    MALFORMED = "malformed"
    TOO_LONG = "too-long"  # with limit
    TOO_MANY = "too-many"  # with limit
    NESTED_COMMENTS = "nested-comments"
    NESTED = "nested"
    NOT_UTF8 = "not-utf8"
    INVALID_LIST = "invalid-list"
    ENCODED_WORD = "encoded-word"
    NO_ADDRESS = "no-address"


class Need(StrEnum):
    """What could not be read or written when storage failed (`UNAVAILABLE`)."""

    LOGIN = "login"
    LIMITS = "limits"
    SENDERS = "senders"
    ACCESS_RULES = "access-rules"
    CERTIFICATES = "certificates"
    ACCOUNT = "account"


class Refusal(Exception):
    """A refusal of `kind`; `params` are the facts its wording may name."""

    def __init__(self, kind: Kind, **params: object) -> None:
        super().__init__(kind.value)
        self.kind = kind
        self.params = params

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind.value}, {self.params!r})"


# Kinds that callers tell apart by type, so that `except` reads as what it means.


class AuthFailed(Refusal):
    """Any failed login: one kind for every cause, so nothing is revealed."""

    def __init__(self) -> None:
        super().__init__(Kind.AUTH_FAILED)


class AuthBusy(Refusal):
    def __init__(self) -> None:
        super().__init__(Kind.AUTH_BUSY)


class PasswordExpired(Refusal):
    """The right password, past its age or expired by an admin: not a failed guess."""

    def __init__(self, url: str | None) -> None:
        super().__init__(Kind.PASSWORD_EXPIRED, url=url)


class LoginLocked(Refusal):
    """A login refused unchecked: the account name or the client is locked out.

    One kind for both, and for names that exist or not, so it reveals nothing
    about accounts.
    """

    def __init__(self, until: float) -> None:
        super().__init__(Kind.LOGIN_LOCKED, until=until)
        self.until = until


class TooManyLogins(Refusal):
    """Successful logins of the name or the client used up for the window.

    No time and no side, so it says nothing about which was counted.
    """

    def __init__(self) -> None:
        super().__init__(Kind.TOO_MANY_LOGINS)


class RelayError(Refusal):
    """The smarthost could not be reached (SMARTHOST_UNAVAILABLE) or did not answer in
    time after the message (SMARTHOST_UNCONFIRMED)."""


class Unavailable(Refusal):
    """Storage (or the worker doing the work) failed while `what` was needed.

    Always temporary: a client is told to come back, never that it was refused.
    """

    def __init__(self, what: Need) -> None:
        super().__init__(Kind.UNAVAILABLE, what=what)
        self.what = what
