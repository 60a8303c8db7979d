"""What the gateway does to a message between the client's final dot and the smarthost.

Line endings are normalised to CRLF before anything else, so a bare CR or LF can
never make the smarthost see an end-of-data the gateway did not see (SMTP
smuggling); the relay then dot-stuffs the normalised text.
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
    if b"\x00" in data:
        raise Refusal(Kind.MESSAGE_NUL)
    if not eight_bit_declared and not data.isascii():
        raise Refusal(Kind.EIGHT_BIT_UNDECLARED)
    crlf = data.count(b"\r\n")
    if data.count(b"\r") == crlf == data.count(b"\n"):
        return data
    # Three passes of bytes.replace: a regex substitution costs an object per line.
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def _split(data: bytes) -> tuple[bytes, bytes]:
    """Header block (ending in CRLF) and the rest (starting with the blank line, if any)."""
    if data.startswith(b"\r\n"):
        return b"", data
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return data, b""
    return data[: end + 2], data[end + 2 :]


def _has_header(headers: bytes, name: bytes) -> bool:
    return any(m.group(1).lower() == name for m in _HEADER_NAME.finditer(headers))


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
    headers, _ = _split(data)
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
    now = now or datetime.now(UTC)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    headers, rest = _split(data)
    extra = b""
    if not _has_header(headers, b"message-id"):
        token = secrets.token_hex(12)
        extra += f"Message-ID: <{token}@{trace.hostname}>\r\n".encode("ascii")
    if not _has_header(headers, b"date"):
        extra += f"Date: {format_datetime(now)}\r\n".encode("ascii")
    if extra and not rest:
        rest = b"\r\n"
    return received_header(trace, now) + headers + extra + rest
