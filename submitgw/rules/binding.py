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
from dataclasses import dataclass
from email import policy as email_policy
from email.errors import (
    MessageDefect,
    NonASCIILocalPartDefect,
    ObsoleteHeaderDefect,
    UndecodableBytesDefect,
)
from email.headerregistry import AddressHeader
from typing import Any

from submitgw.errors import FromFlaw, Kind, Refusal
from submitgw.rules.address import check_mailbox

# Case folding keeps these two: IDNA 2008 (UTS 46, non-transitional) treats them
# as letters of their own, so "straße.example" is not "strasse.example".
_DEVIATIONS = frozenset("ßς")
# A field whose name is From, also with blanks before the colon (RFC 5322 obs-syntax),
# which Python's parser skips but other MTAs and mail readers take as a From: header.
_FROM_FIELD = re.compile(rb"^from[ \t]*:", re.IGNORECASE | re.MULTILINE)
# Where Python's parser stops reading header fields (its feedparser.headerRE, negated).
_HEADER_END = re.compile(rb"^(?!From |[\x21-\x39\x3b-\x7e]*:|[\t ])", re.MULTILINE)
# The From: fields that parser keeps: the name exactly, no blank before the colon.
_PARSED_FROM = re.compile(rb"^from:", re.IGNORECASE | re.MULTILINE)
# The end of a field: a line break not followed by a continuation line.
_FIELD_END = re.compile(rb"\r\n(?![ \t])")
_SPECIAL = re.compile(rb'[\\"(),]')
_BACKSLASH, _QUOTE, _OPEN, _CLOSE, _COMMA = b'\\"(),'
# The From: value most mail carries, which every reader reads alike: an optional display
# name of plain words or one quoted string without escapes, then <addr>; or a bare addr.
# Local part and domain are dot-atoms of the commonest characters, nothing folded.
_SIMPLE_ADDRESS = rb"[A-Za-z0-9_+=-]+(?:\.[A-Za-z0-9_+=-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"
_SIMPLE_FROM = re.compile(
    rb'(?:(?:[A-Za-z0-9]+(?: [A-Za-z0-9]+)* |"[ !#-\[\]-~]*" ?)?<(?P<angle>'
    + _SIMPLE_ADDRESS
    + rb")>|(?P<bare>"
    + _SIMPLE_ADDRESS
    + rb"))"
)
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
        check_mailbox(address, smtputf8=True, kind=Kind.BAD_SENDER)
    except Refusal:
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


@dataclass(frozen=True)
class HeaderLimits:
    """What the From: check reads at most; see `[limits]` in the configuration."""

    max_header_bytes: int = 1048576
    max_from_length: int = 8192
    max_from_addresses: int = 50
    max_comment_depth: int = 10


_DEFAULT_LIMITS = HeaderLimits()


def _unreadable(flaw: FromFlaw, **params: object) -> Refusal:
    return Refusal(Kind.FROM_UNREADABLE, flaw=flaw, **params)


def _header_block(content: bytes) -> bytes:
    """The header section up to the first empty line, as mail readers see it; ends in CRLF."""
    if content.startswith(b"\r\n"):
        return b""
    end = content.find(b"\r\n\r\n")
    block = content if end < 0 else content[: end + 2]
    return block if not block or block.endswith(b"\n") else block + b"\r\n"


def _from_fields(block: bytes, limits: HeaderLimits) -> list[bytes]:
    """The raw values of the From: fields Python's parser would find, in linear time.

    Python's parser reads header fields up to the first line that is neither a
    field, a continuation nor a "From " line (`_HEADER_END`); every `from:` line
    there is a From: field with its continuation lines. Any other line that looks
    like a From: field is a header some other program may read: refused.
    """
    found = _HEADER_END.search(block)
    section = block if found is None else block[: found.start()]
    if len(section) > limits.max_header_bytes:
        raise Refusal(Kind.HEADER_TOO_BIG, limit=limits.max_header_bytes)
    starts = [m.start() for m in _PARSED_FROM.finditer(section)]
    if len(starts) > limits.max_from_addresses:
        raise _too_many(limits)
    known = set(starts)
    if any(m.start() not in known for m in _FROM_FIELD.finditer(block)):
        raise _unreadable(FromFlaw.MALFORMED)
    values: list[bytes] = []
    total = 0
    for start in starts:
        end = _FIELD_END.search(section, start)
        field = section[start : end.start() + 2 if end else len(section)]
        # As the parser's header_source_parse: blanks after the colon go, folds stay.
        first_end = field.find(b"\n") + 1 or len(field)
        raw = (field[len(b"from:") : first_end].lstrip(b" \t") + field[first_end:]).rstrip(b"\r\n")
        total += len(raw)
        if total > limits.max_from_length:
            raise _unreadable(FromFlaw.TOO_LONG, limit=limits.max_from_length)
        values.append(raw)
    return values


def _too_many(limits: HeaderLimits) -> Refusal:
    return _unreadable(FromFlaw.TOO_MANY, limit=limits.max_from_addresses)


def _shape(value: bytes) -> tuple[int, int]:
    """(deepest comment nesting, commas outside quotes and comments) of a From: value.

    A linear scan of the characters that matter, as Python's parser reads them
    (backslash escapes inside quoted strings and comments); it decides whether
    the value is handed to that parser at all.
    """
    depth = deepest = commas = 0
    quoted = False
    escaped = -1
    for match in _SPECIAL.finditer(value):
        at = match.start()
        if at == escaped:
            continue
        char = value[at]
        if char == _BACKSLASH:
            if quoted or depth:
                escaped = at + 1
        elif depth:
            if char == _OPEN:
                depth += 1
                deepest = max(deepest, depth)
            elif char == _CLOSE:
                depth -= 1
        elif quoted:
            quoted = char != _QUOTE
        elif char == _QUOTE:
            quoted = True
        elif char == _OPEN:
            depth = 1
            deepest = max(deepest, 1)
        elif char == _COMMA:
            commas += 1
    return deepest, commas


def _real(text: str) -> str:
    """Undo the parser's surrogate escapes: headers are UTF-8 under SMTPUTF8 (RFC 6532)."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeError as exc:
        raise _unreadable(FromFlaw.NOT_UTF8) from exc


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


def from_addresses(content: bytes, limits: HeaderLimits = _DEFAULT_LIMITS) -> list[str]:
    """Every address of every From: header of a CRLF-normalised message.

    A message without any From: header claims no author and gives an empty list.
    A From: header that is empty, syntactically broken, hidden from Python's parser
    (`From :`, or after a line that ends its header parsing), or has an encoded-word
    in an address raises `550 5.7.1`: other programs may read such a header
    differently, and the check is only as good as the reading it agrees with.

    Python's address parser takes time worse than linear in its input and
    recurses once per nested comment, so it only sees From: values within
    `limits` (checked by linear scans first): more gets `550 5.7.1`, a header
    section over `max_header_bytes` gets `554 5.6.0`.
    """
    raw_values = _from_fields(_header_block(content), limits)
    estimate = 0
    for raw in raw_values:
        deepest, commas = _shape(raw)
        if deepest > limits.max_comment_depth:
            raise _unreadable(FromFlaw.NESTED_COMMENTS)
        estimate += commas + 1
    if estimate > limits.max_from_addresses:
        raise _too_many(limits)
    addresses: list[str] = []
    try:
        for raw_bytes in raw_values:
            addresses.extend(_addresses(raw_bytes.decode("ascii", "surrogateescape")))
    except Refusal:
        raise
    except RecursionError as exc:
        raise _unreadable(FromFlaw.NESTED) from exc
    except Exception as exc:
        # The parser has crashed on some malformed lists (IndexError on 'From: "').
        raise _unreadable(FromFlaw.INVALID_LIST) from exc
    if len(addresses) > limits.max_from_addresses:
        raise _too_many(limits)
    return addresses


def simple_from_addresses(
    content: bytes, limits: HeaderLimits = _DEFAULT_LIMITS
) -> list[str] | None:
    """`from_addresses`, when every From: value has the simple shape; None otherwise.

    Linear in the header section and free of Python's header parser, so it may
    run on the event loop; it gives what the parser would (a property test
    compares the two) and refuses what `from_addresses` refuses on limits.
    """
    found: list[str] = []
    for raw in _from_fields(_header_block(content), limits):
        simple = _SIMPLE_FROM.fullmatch(raw)
        if simple is None:
            return None
        found.append((simple["angle"] or simple["bare"]).decode("ascii"))
    return found


def _addresses(raw: str) -> list[str]:
    header = email_policy.default.header_fetch_parse("From", raw)
    if any(not _tolerated(defect) for defect in header.defects):
        raise _unreadable(FromFlaw.INVALID_LIST)
    unfolded = "".join(raw.splitlines())
    if _encoded_word_in_address(AddressHeader.value_parser(unfolded)):
        raise _unreadable(FromFlaw.ENCODED_WORD)
    found = [f"{_real(a.username)}@{_real(a.domain)}" for a in header.addresses]
    if not found:
        raise _unreadable(FromFlaw.NO_ADDRESS)
    return found
