"""The relay's wire form of a message: line ends, dot-stuffing and the end, at C speed,
whole or piece by piece."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from submitgw.smtp.relay import WireForm, wire_form

# RFC 5321 4.5.2 and the line-end rule, written the slow, obvious way.
_LINE_END = re.compile(rb"\r\n|\r|\n")


def reference(content: bytes) -> bytes:
    lines = _LINE_END.split(content)
    if lines and lines[-1] == b"":
        lines.pop()
    stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
    return b"".join(line + b"\r\n" for line in stuffed) + b".\r\n"


@given(st.binary(max_size=200) | st.text(alphabet="a.\r\n", max_size=60).map(str.encode))
def test_wire_form_is_the_rfc_transparency_with_crlf_line_ends(content: bytes) -> None:
    assert wire_form(content) == reference(content)


def test_no_lone_line_end_reaches_the_smarthost() -> None:
    """Bare LF or CR before a dot must not end DATA upstream (SMTP smuggling)."""
    sent = wire_form(b"a\n.\nMAIL FROM:<x@evil>\r.\rb")
    assert sent == b"a\r\n..\r\nMAIL FROM:<x@evil>\r\n..\r\nb\r\n.\r\n"
    assert sent.count(b"\r\n.\r\n") == 1 and sent.endswith(b"\r\n.\r\n")


def wire_in_pieces(pieces: list[bytes]) -> bytes:
    wire = WireForm()
    return b"".join(wire.feed(piece) for piece in pieces) + wire.end()


@given(
    st.text(alphabet="a.\r\n", max_size=80).map(str.encode),
    st.lists(st.integers(0, 80), max_size=10),
)
def test_wire_form_in_pieces_is_the_wire_form_of_the_whole(
    content: bytes, points: list[int]
) -> None:
    bounds = [0, *sorted(min(p, len(content)) for p in points), len(content)]
    pieces = [content[a:b] for a, b in itertools.pairwise(bounds)]
    assert wire_in_pieces(pieces) == wire_form(content) == reference(content)


@pytest.mark.parametrize(
    "pieces",
    [
        [b"a\r", b"\n.b"],  # CRLF cut in two, then a dot that starts a line
        [b"a\r", b".b"],  # a lone CR, then a dot at the start of the next piece
        [b"a\n", b".", b"\r", b"\n"],  # the end of DATA spelt across four pieces
        [b".\r", b"\r", b"\r\n"],
        [b"a\r"],
        [b"", b".", b""],
    ],
)
def test_cuts_at_line_ends_and_dots(pieces: list[bytes]) -> None:
    whole = b"".join(pieces)
    sent = wire_in_pieces(pieces)
    assert sent == wire_form(whole) == reference(whole)
    assert sent.count(b"\r\n.\r\n") + sent.startswith(b".\r\n") == 1
