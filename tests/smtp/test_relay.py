"""The relay's wire form of a message: line ends, dot-stuffing and the end, at C speed."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from submitgw.smtp.relay import wire_form

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
