"""What the gateway does to a message between the client's final dot and the smarthost.

Line endings are normalised to CRLF before anything else, so a bare CR or LF can
never make the smarthost see an end-of-data the gateway did not see (SMTP
smuggling); the relay then dot-stuffs the normalised text.

A message is handled as the pieces the DATA decoder read (`*_pieces`), never joined:
each step copies at most the piece it changes, so a big message is held about once.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from submitgw.errors import Kind, Refusal

_HEADER_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.MULTILINE)
_ANGLED = re.compile(r"\s*<([^<>]*)>")
# Crockford's base32: no I, L, O or U (a queue id read aloud or retyped stays itself),
# digits before letters (ids sort as their numbers do); two digits per 10 bits.
_BASE32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DIGIT_PAIRS = [a + b for a in _BASE32 for b in _BASE32]


@dataclass(frozen=True)
class Trace:
    """What the Received header says about the session."""

    helo: str
    client_ip: str | None
    hostname: str
    user: str
    # The gateway's queue id of this message (`new_queue_id`), RFC 5321 4.4's "id" clause.
    queue_id: str
    tls: str | None
    recipient: str | None
    cert_serial: str | None = None


class LineEnds:
    """Line ends of a message in pieces, each made a bare LF in a few C-speed passes.

    A CR at the end of one piece may be the start of a CRLF that the next piece ends,
    so it waits for the next piece (or for `end`); whatever the cut, the pieces give
    what the whole message would.
    """

    __slots__ = ("_cr",)

    def __init__(self) -> None:
        self._cr = False

    def lf(self, piece: bytes) -> bytes:
        if self._cr:
            piece = b"\r" + piece
        self._cr = piece.endswith(b"\r")
        if self._cr:
            piece = piece[:-1]
        # Two passes of bytes.replace: a regex substitution costs an object per line.
        return piece.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    def crlf(self, piece: bytes) -> bytes:
        """`piece` with CRLF line ends; itself (no copy) when it has nothing else."""
        if not self._cr and piece.count(b"\r") == piece.count(b"\r\n") == piece.count(b"\n"):
            return piece
        return self.lf(piece).replace(b"\n", b"\r\n")

    def end(self) -> bytes:
        """The line end a final CR stands for, if the last piece ended in one."""
        return b"\n" if self._cr else b""


def new_queue_id(now: float | None = None) -> str:
    """18 characters of base32: 48 bits of milliseconds since 1970, then 40 random bits.

    Ids sort by time as plain text, and gateways sharing a database need no
    coordination: two ids collide only within one millisecond with the same 40 bits.
    """
    millis = int((time.time() if now is None else now) * 1000) & (2**48 - 1)
    value = (millis << 40) | secrets.randbits(40)
    return "".join(_DIGIT_PAIRS[(value >> shift) & 1023] for shift in range(80, -1, -10))


def normalise_message_id(text: str) -> str | None:
    """A Message-ID as stored and searched: the inside of its angle brackets, if it has them."""
    m = _ANGLED.match(text)
    value = m.group(1) if m else text
    value = " ".join(value.split())
    return value or None


def normalise(data: bytes, *, eight_bit_declared: bool) -> bytes:
    """Reject what cannot be relayed faithfully, then make every line end in CRLF."""
    pieces = normalise_pieces([data], eight_bit_declared=eight_bit_declared)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def normalise_pieces(pieces: list[bytes], *, eight_bit_declared: bool) -> list[bytes]:
    """`normalise` for a message in pieces, piece by piece in place: the message is never
    joined, so a big one is held about once (a piece that changes is copied alone)."""
    if any(b"\x00" in piece for piece in pieces):
        raise Refusal(Kind.MESSAGE_NUL)
    if not eight_bit_declared and not all(piece.isascii() for piece in pieces):
        raise Refusal(Kind.EIGHT_BIT_UNDECLARED)
    ends = LineEnds()
    for i, piece in enumerate(pieces):
        pieces[i] = ends.crlf(piece)
    if ends.end():
        pieces.append(b"\r\n")
    return pieces


def received_header(trace: Trace, now: datetime) -> bytes:
    client = f" ([{trace.client_ip}])" if trace.client_ip else ""
    tls = f"\r\n\t(using {trace.tls})" if trace.tls else ""
    rcpt = f"\r\n\tfor <{trace.recipient}>" if trace.recipient else ""
    cert = f", certificate serial {trace.cert_serial}" if trace.cert_serial else ""
    text = (
        f"Received: from {trace.helo}{client}\r\n"
        f"\t(authenticated sender: {trace.user}{cert})\r\n"
        f"\tby {trace.hostname} with ESMTPSA id {trace.queue_id}{tls}{rcpt};\r\n"
        f"\t{format_datetime(now)}\r\n"
    )
    return text.encode("utf-8")


def message_id(data: bytes) -> str | None:
    """The first Message-ID header's value, unfolded and without its angle brackets."""
    headers = header_section([data])
    for m in _HEADER_NAME.finditer(headers):
        if m.group(1).lower() != b"message-id":
            continue
        end = headers.find(b"\r\n", m.end())
        while end >= 0 and headers[end + 2 : end + 3] in (b" ", b"\t"):
            end = headers.find(b"\r\n", end + 2)
        value = headers[m.end() : end if end >= 0 else len(headers)]
        return normalise_message_id(value.decode("utf-8", "replace"))
    return None


def prepare(data: bytes, trace: Trace, now: datetime | None = None) -> bytes:
    """Add Received:, and Message-ID:/Date: when missing (RFC 6409 section 8)."""
    return b"".join(prepare_pieces([data], trace, now))


def prepare_pieces(pieces: list[bytes], trace: Trace, now: datetime | None = None) -> list[bytes]:
    """`prepare` for a CRLF-normalised message in pieces: the added headers become pieces
    of their own, and only the piece the header section ends in is cut in two."""
    now = now or datetime.now(UTC)
    pieces = [piece for piece in pieces if piece]
    if pieces and _last(pieces, 2) != b"\r\n":
        pieces.append(b"\r\n")
    headers, rest = _split_pieces(pieces)
    names = _header_names(headers)
    extra = b""
    if b"message-id" not in names:
        token = secrets.token_hex(12)
        extra += f"Message-ID: <{token}@{trace.hostname}>\r\n".encode("ascii")
    if b"date" not in names:
        extra += f"Date: {format_datetime(now)}\r\n".encode("ascii")
    if extra and not rest:
        rest = [b"\r\n"]
    return [received_header(trace, now), *headers, *([extra] if extra else []), *rest]


def header_section(pieces: list[bytes]) -> bytes:
    """The header block of a CRLF-normalised message in pieces (as `prepare` sees it),
    joined: all that the From: check reads."""
    return b"".join(_split_pieces([piece for piece in pieces if piece])[0])


def _first(pieces: list[bytes], count: int) -> bytes:
    """The first `count` bytes of the non-empty `pieces` joined."""
    head = b""
    for piece in pieces:
        head += piece[: count - len(head)]
        if len(head) >= count:
            break
    return head


def _last(pieces: list[bytes], count: int) -> bytes:
    """The last `count` bytes of the non-empty `pieces` joined."""
    tail = b""
    for piece in reversed(pieces):
        tail = piece[-count:] + tail
        if len(tail) >= count:
            return tail[-count:]
    return tail


def _header_end(pieces: list[bytes]) -> int:
    """Where the first CRLF CRLF of the joined pieces starts, plus 2; -1 if none."""
    start = 0
    before = b""  # the last bytes (at most 3) of the pieces before this one
    for piece in pieces:
        seam = (before + piece[:3]).find(b"\r\n\r\n")
        if seam >= 0:
            return start - len(before) + seam + 2
        found = piece.find(b"\r\n\r\n")
        if found >= 0:
            return start + found + 2
        before = (before + piece[-3:])[-3:]
        start += len(piece)
    return -1


def _split_pieces(pieces: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """`_split` over non-empty pieces: only the piece the header block ends in is cut."""
    if _first(pieces, 2) == b"\r\n":
        return [], pieces
    offset = _header_end(pieces)
    if offset < 0:
        return pieces, []
    start = 0
    for i, piece in enumerate(pieces):
        cut = offset - start
        if cut == len(piece):
            return pieces[: i + 1], pieces[i + 1 :]
        if cut < len(piece):
            return [*pieces[:i], piece[:cut]], [piece[cut:], *pieces[i + 1 :]]
        start += len(piece)
    raise AssertionError("the header end lies within the pieces")


def _header_names(pieces: list[bytes]) -> set[bytes]:
    """The lower-cased field names `_HEADER_NAME` finds in the joined pieces; a line cut
    between pieces is matched whole, and only that line is joined."""
    names: set[bytes] = set()
    partial = b""  # the start of a line that an earlier piece ended inside
    for piece in pieces:
        start = 0
        if partial:
            lf = piece.find(b"\n")
            if lf < 0:
                partial += piece
                continue
            line = partial + piece[: lf + 1]
            names.update(m.group(1).lower() for m in _HEADER_NAME.finditer(line))
            start = lf + 1
        names.update(m.group(1).lower() for m in _HEADER_NAME.finditer(piece, start))
        partial = piece[piece.rfind(b"\n") + 1 :]
    names.update(m.group(1).lower() for m in _HEADER_NAME.finditer(partial))
    return names
