"""Strict parsing of MAIL FROM / RCPT TO paths and their parameters.

A submission server has no reason to accept the legacy address forms that
relay tricks rely on (source routes, percent hacks, bang paths, quoted local
parts, IP literals), so only `<dot-atom@domain>` passes, and the string that
passes is byte for byte the one forwarded to the smarthost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from submitgw.errors import AddressFlaw, Kind, Refusal

# RFC 5322 atext without "%" and "!", which only serve routing tricks.
_ATEXT = r"A-Za-z0-9#$&'*+/=?^_`{|}~\-"
_ASCII_LOCAL = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
_UTF8_LOCAL = re.compile(rf"[{_ATEXT}\u0080-\U0010ffff]+(?:\.[{_ATEXT}\u0080-\U0010ffff]+)*")
_ASCII_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_UTF8_LABEL = re.compile(r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\u0080-\U0010ffff-]*)")
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")

MAX_PATH = 256
MAX_LOCAL = 64
MAX_DOMAIN = 255


@dataclass(frozen=True)
class MailParams:
    size: int | None = None
    body: str | None = None
    smtputf8: bool = False

    def upstream_options(self) -> list[str]:
        """Parameters passed on to the smarthost (AUTH= is ours alone, and dropped)."""
        options = []
        if self.size is not None:
            options.append(f"SIZE={self.size}")
        if self.body:
            options.append(f"BODY={self.body}")
        if self.smtputf8:
            options.append("SMTPUTF8")
        return options


def _syntax(command: str) -> Refusal:
    return Refusal(Kind.SYNTAX, command=command)


def split_path(arg: str | None, keyword: str, command: str) -> tuple[str, list[str]]:
    """Split `FROM:<addr> P1 P2` into the text inside the brackets and the parameters."""
    if not arg or arg[: len(keyword)].upper() != keyword:
        raise _syntax(command)
    rest = arg[len(keyword) :].lstrip(" ")
    if not rest.startswith("<"):
        raise Refusal(Kind.NEED_BRACKETS, command=command)
    end = rest.find(">")
    if end < 0:
        raise _syntax(command)
    inner, tail = rest[1:end], rest[end + 1 :]
    if tail and not tail.startswith(" "):
        raise _syntax(command)
    return inner, tail.split()


def check_mailbox(address: str, *, smtputf8: bool, kind: Kind) -> None:
    """Reject every address form but `local@domain`; `kind` is BAD_SENDER or BAD_RECIPIENT."""

    def bad(flaw: AddressFlaw) -> Refusal:
        return Refusal(kind, flaw=flaw)

    if not address.isascii() and not smtputf8:
        raise Refusal(Kind.NEEDS_SMTPUTF8)
    if len(address.encode("utf-8")) > MAX_PATH:
        raise bad(AddressFlaw.TOO_LONG)
    if address.startswith("@"):
        raise bad(AddressFlaw.SOURCE_ROUTE)
    if address.startswith('"') or '"' in address or "\\" in address:
        raise bad(AddressFlaw.QUOTED)
    local, at, domain = address.rpartition("@")
    if not at or not local:
        raise bad(AddressFlaw.NO_DOMAIN)
    if "!" in local or "%" in local:
        raise bad(AddressFlaw.ROUTING)
    if "@" in local:
        raise bad(AddressFlaw.MANY_AT)
    if domain.startswith("["):
        raise bad(AddressFlaw.IP_LITERAL)
    if domain.endswith("."):
        raise bad(AddressFlaw.TRAILING_DOT)
    local_re = _UTF8_LOCAL if smtputf8 else _ASCII_LOCAL
    if len(local.encode("utf-8")) > MAX_LOCAL or not local_re.fullmatch(local):
        raise bad(AddressFlaw.LOCAL_PART)
    label_re = _UTF8_LABEL if smtputf8 else _ASCII_LABEL
    labels = domain.split(".")
    if (
        len(domain.encode("utf-8")) > MAX_DOMAIN
        or not all(label_re.fullmatch(label) for label in labels)
        or any(label.endswith("-") or len(label.encode("utf-8")) > 63 for label in labels)
        or labels[-1].isdigit()
    ):
        raise bad(AddressFlaw.DOMAIN)


def _params(words: list[str]) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for word in words:
        key, eq, value = word.partition("=")
        if not key or not key.replace("-", "").isalnum() or (eq and not value):
            raise Refusal(Kind.BAD_PARAMETER, word=word)
        if key.upper() in params:
            raise Refusal(Kind.DUPLICATE_PARAMETER, name=key)
        params[key.upper()] = value if eq else None
    return params


def parse_mail_from(arg: str | None, *, max_size: int) -> tuple[str, MailParams]:
    """Parse a MAIL argument; `<>` comes back as the empty string."""
    inner, words = split_path(arg, "FROM:", "MAIL")
    params = _params(words)
    size = body = None
    smtputf8 = False
    for key, value in params.items():
        if key == "SIZE":
            # isascii: str.isdigit() also accepts digits like "²" that int() refuses.
            if value is None or not (value.isascii() and value.isdigit()) or len(value) > 20:
                raise Refusal(Kind.BAD_SIZE)
            size = int(value)
            if size > max_size:
                raise Refusal(Kind.MESSAGE_TOO_BIG, limit=max_size)
        elif key == "BODY":
            if value is None or value.upper() not in {"7BIT", "8BITMIME"}:
                raise Refusal(Kind.BAD_BODY)
            body = value.upper()
        elif key == "SMTPUTF8":
            if value is not None:
                raise Refusal(Kind.SMTPUTF8_VALUE)
            smtputf8 = True
        elif key == "AUTH":
            if value is None or not _XTEXT.fullmatch(value):
                raise Refusal(Kind.BAD_AUTH_PARAMETER)
        else:
            raise Refusal(Kind.MAIL_PARAMETER_UNSUPPORTED, name=key)
    if inner:
        check_mailbox(inner, smtputf8=smtputf8, kind=Kind.BAD_SENDER)
    return inner, MailParams(size=size, body=body, smtputf8=smtputf8)


def parse_rcpt_to(arg: str | None, *, smtputf8: bool) -> str:
    inner, words = split_path(arg, "TO:", "RCPT")
    params = _params(words)
    if params:
        raise Refusal(Kind.RCPT_PARAMETER_UNSUPPORTED, name=next(iter(params)))
    if not inner:
        raise Refusal(Kind.BAD_RECIPIENT, flaw=AddressFlaw.EMPTY)
    check_mailbox(inner, smtputf8=smtputf8, kind=Kind.BAD_RECIPIENT)
    return inner


def normalise_login(text: str) -> str | None:
    """The canonical form of a user name (an email address), or None if it is not one."""
    candidate = text.strip().lower()
    try:
        check_mailbox(candidate, smtputf8=False, kind=Kind.BAD_SENDER)
    except Refusal:
        return None
    return candidate
