"""Sender binding, the pure part: how addresses compare, and which ones a message claims.

A user may send as their own address and as the patterns an admin bound to them
(`local@domain`, or `@domain` for every address at exactly that domain). The
envelope sender has already passed the strict path parser; the From: header has
not, so reading it is where the tricks are, and every doubt there is a refusal.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from email import policy as email_policy
from email.errors import (
    MessageDefect,
    NonASCIILocalPartDefect,
    ObsoleteHeaderDefect,
    UndecodableBytesDefect,
)
from email.headerregistry import AddressHeader
from email.parser import BytesHeaderParser
from typing import Any

from submitgw.address import check_mailbox
from submitgw.errors import SmtpReply

# Case folding keeps these two: IDNA 2008 (UTS 46, non-transitional) treats them
# as letters of their own, so "straße.example" is not "strasse.example".
_DEVIATIONS = frozenset("ßς")
# A field whose name is From, also with blanks before the colon (RFC 5322 obs-syntax),
# which Python's parser skips but other MTAs and mail readers take as a From: header.
_FROM_FIELD = re.compile(rb"^from[ \t]*:", re.IGNORECASE | re.MULTILINE)
# Obsolete syntax that Python reports only in the display name, never in the address.
_HARMLESS_OBSOLETE = frozenset({"period in 'phrase'", "comment found without atom"})


class InvalidPattern(ValueError):
    def __init__(self, text: str) -> None:
        super().__init__(f"{text!r} is not a sender address (local@domain) or domain (@domain)")
        self.text = text


def fold(text: str) -> str:
    """The comparison form of an address part: Unicode canonical caseless form, in NFC.

    With SMTPUTF8 one name has several spellings: composed or decomposed accents,
    and upper/lower case in every script (`ÄLICE@BÜCHER.example` is
    `älice@bücher.example`). Unicode's canonical caseless match (D145: decompose,
    case-fold, normalise again) makes them one; NFC at the end keeps stored
    patterns readable. Full case folding would also turn ß into "ss" and final ς
    into σ, but IDNA 2008 keeps them distinct, so those two are left alone: a
    binding to one domain must never allow a different one.
    """
    decomposed = unicodedata.normalize("NFD", text)
    folded = "".join(c if c in _DEVIATIONS else c.casefold() for c in decomposed)
    return unicodedata.normalize("NFC", folded)


def split_address(address: str) -> tuple[str, str] | None:
    """(local part, domain) of a plain `local@domain`; None for every other form.

    The same rules as the envelope parser (no quoted local parts, source routes,
    % or ! routing, IP literals, trailing dots), so no such form can match a binding.
    """
    try:
        check_mailbox(address, smtputf8=True, status="5.7.1")
    except SmtpReply:
        return None
    local, _, domain = address.rpartition("@")
    return local, domain


def normalise_pattern(text: str) -> str:
    """The stored form of `local@domain` or `@domain`: its comparison form (lower-case).

    Stored folded, like user addresses are stored lower-case, so the database's
    unique constraint sees `Bob@Example.org` and `bob@example.org` as one binding.
    """
    candidate = text.strip()
    parts = split_address("x" + candidate if candidate.startswith("@") else candidate)
    if parts is None:
        raise InvalidPattern(text)
    local = "" if candidate.startswith("@") else fold(parts[0])
    pattern = f"{local}@{fold(parts[1])}"
    if split_address("x" + pattern if not local else pattern) is None:
        raise InvalidPattern(text)
    return pattern


def address_allowed(address: str, allowed: Iterable[str]) -> bool:
    """Whether `address` matches one of the `allowed` addresses or `@domain` patterns.

    Domains compare case-insensitively and must be equal: `@example.org` does not
    cover `sub.example.org`, which may belong to someone else. Local parts compare
    case-insensitively too: user addresses are case-insensitive logins here, and
    every mail system in use treats `Alice@` and `alice@` as one mailbox, so refusing
    a capitalised spelling would protect nobody and break mail clients that keep it.
    """
    parts = split_address(address)
    if parts is None:
        return False
    local, domain = fold(parts[0]), fold(parts[1])
    for pattern in allowed:
        pattern_local, at, pattern_domain = pattern.rpartition("@")
        if not at or not pattern_domain or fold(pattern_domain) != domain:
            continue
        if not pattern_local or fold(pattern_local) == local:
            return True
    return False


def _unreadable(why: str) -> SmtpReply:
    return SmtpReply(550, "5.7.1", f"From: header {why}")


def _header_block(content: bytes) -> bytes:
    """The header section up to (not including) the first empty line, as mail readers see it."""
    if content.startswith(b"\r\n"):
        return b""
    end = content.find(b"\r\n\r\n")
    return content if end < 0 else content[: end + 2]


def _real(text: str) -> str:
    """Undo the parser's surrogate escapes: headers are UTF-8 under SMTPUTF8 (RFC 6532)."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeError as exc:
        raise _unreadable("is not valid UTF-8") from exc


def _encoded_word_in_address(token: Any, inside: bool = False) -> bool:
    """An RFC 2047 encoded-word inside an addr-spec, which Python decodes but nobody should.

    `=?utf-8?q?alice?= @example.org` reads as alice@example.org to Python; to an
    MTA its local part is the literal text, a different mailbox.
    """
    kind = getattr(token, "token_type", None)
    inside = inside or kind == "addr-spec"
    if inside and kind == "encoded-word":
        return True
    return isinstance(token, list) and any(_encoded_word_in_address(t, inside) for t in token)


def _tolerated(defect: MessageDefect) -> bool:
    if isinstance(defect, UndecodableBytesDefect | NonASCIILocalPartDefect):
        return True  # 8-bit UTF-8 addresses; _real decodes them strictly
    return isinstance(defect, ObsoleteHeaderDefect) and str(defect) in _HARMLESS_OBSOLETE


def from_addresses(content: bytes) -> list[str]:
    """Every address of every From: header of a CRLF-normalised message.

    A message without any From: header claims no author and gives an empty list.
    A From: header that is empty, syntactically broken, hidden from Python's parser
    (`From :`, or after a line that ends its header parsing), or has an encoded-word
    in an address raises `550 5.7.1`: other programs may read such a header
    differently, and the check is only as good as the reading it agrees with.
    """
    block = _header_block(content)
    parsed = BytesHeaderParser(policy=email_policy.default).parsebytes(block + b"\r\n")
    fields = [(name, raw) for name, raw in parsed.raw_items() if name.lower() == "from"]
    if len(fields) != len(_FROM_FIELD.findall(block)):
        raise _unreadable("is malformed or hidden")
    addresses: list[str] = []
    for name, raw in fields:
        header = email_policy.default.header_fetch_parse(name, raw)
        if any(not _tolerated(defect) for defect in header.defects):
            raise _unreadable("is not a valid address list")
        unfolded = "".join(raw.splitlines())
        if _encoded_word_in_address(AddressHeader.value_parser(unfolded)):
            raise _unreadable("has an encoded-word inside an address")
        found = [f"{_real(a.username)}@{_real(a.domain)}" for a in header.addresses]
        if not found:
            raise _unreadable("has no address")
        addresses.extend(found)
    return addresses
