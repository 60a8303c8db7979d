"""SMTP DATA content from the raw stream, block by block, in linear time and memory.

Reading DATA line by line cost a Python object and a timer per line: 4 MiB of
empty lines took ~40 s of CPU and ~280 MiB. The decoder here takes
blocks of any size and does its per-line work with bytes methods, so the cost per
block is a few calls whatever the shape of the lines. It does no I/O: the session
reads, and asks `next_read` how much it may take without reading past the end.

The rules are the session's: DATA ends only at CRLF "." CRLF (a line "." right
after a line that ended in CRLF, or as the first line), a leading dot is removed
at the start of such a line (RFC 5321 4.5.2), a line longer than `line_limit`
bytes with its LF gives "500 5.5.2", more than `max_size` bytes "552 5.3.4"; after
either the rest is read and dropped up to the end, so the client and the gateway
agree where DATA ended. The first problem wins.
"""

from __future__ import annotations

from submitgw.errors import Kind, Refusal

TERMINATOR = b"\r\n.\r\n"
LINE_LIMIT = 1001  # RFC 5321 4.5.3.1.6: 998 + CRLF, plus one stuffed dot
# Proper prefixes of TERMINATOR (but CR): what was read may end in one and the end follow.
_PARTIAL_ENDS = (b"\r\n.\r", b"\r\n.", b"\r\n")
_BATCH = 65536


class DataDecoder:
    def __init__(self, max_size: int, line_limit: int = LINE_LIMIT) -> None:
        self.max_size = max_size
        self.line_limit = line_limit
        self.done = False
        self.problem: Refusal | None = None
        # The decoded message in the pieces it was decoded in: never joined, never regrown.
        self._out: list[bytes] = []
        self._size = 0
        # An incomplete line carried to the next block (never longer than line_limit).
        self._carry = b""
        # Inside a line already known to be too long: dropped up to its LF.
        self._skipping = False
        self._at_line_start = True
        # The last bytes fed, or the CRLF that ended the DATA command before any.
        self._tail = b"\r\n"
        # Fed but not yet decoded: never holds the end of DATA.
        self._pending = bytearray()
        # Once reading up to a whole TERMINATOR is safe, it stays safe.
        self._terminator_only = False

    def next_read(self) -> bytes | int:
        """What the reader may take next without passing the end of DATA.

        A separator for `readuntil` (its LimitOverrunError's `consumed` bytes may
        be taken instead), or a number of bytes for `readexactly`. The end always
        ends in ".\r\n", so reading up to the next ".\r\n" is safe unless what
        was read ends in the end's own CR LF "." or CR LF "." CR: then single
        bytes decide. Reading up to the next whole TERMINATOR stops only at the
        end (or where the reader's buffer is full, keeping 4 bytes back), so it is
        the cheap way, once what was read cannot be the start of an end. Right
        after a line break one byte is read, so that lines ending in "." do not
        stop the reader at every line.
        """
        if self._terminator_only:
            return TERMINATOR
        if self._tail.endswith(_PARTIAL_ENDS):
            return 1
        if self._tail.endswith(b"\r"):
            return b".\r\n"
        self._terminator_only = True
        return TERMINATOR

    def feed(self, block: bytes) -> int:
        """Take the next bytes of the stream; returns how many belong to the DATA.

        Fewer than `len(block)` only if the end of DATA lies inside `block`; then
        `done` is set and the rest is the client's next command. Small blocks
        are only collected (a reader stopping at every line ending in "." hands
        over one line at a time) and decoded together.
        """
        if self.done or not block:
            return 0
        ends_here = TERMINATOR in self._tail + block
        self._tail = (self._tail + block[-4:])[-4:]
        if not ends_here and len(self._pending) + len(block) < _BATCH:
            self._pending += block
            return len(block)
        held = len(self._pending)
        data = bytes(self._pending) + block if held else block
        self._pending = bytearray()
        return self._decode_block(data) - held

    def result(self) -> bytes:
        """The message without its end line and dot-stuffing; the first problem, if any."""
        return b"".join(self._decoded())

    def pieces(self) -> list[bytes]:
        """`result` in the pieces it was decoded in (each ends in LF), handed over: the
        decoder keeps none, so a big message is held once."""
        pieces, self._out = self._decoded(), []
        return pieces

    def _decoded(self) -> list[bytes]:
        if self._pending:
            raise ValueError("the end of DATA has not been fed")
        if self.problem is not None:
            raise self.problem
        return self._out

    def _decode_block(self, block: bytes) -> int:
        start = 0
        if self._skipping:
            lf = block.find(b"\n")
            if lf < 0:
                self._carry = block[-1:]
                return len(block)
            ended_crlf = block[lf - 1 : lf] == b"\r" if lf else self._carry == b"\r"
            self._skipping = False
            self._carry = b""
            self._at_line_start = ended_crlf
            start = lf + 1
        last_lf = block.rfind(b"\n", start)
        if last_lf < 0:
            return self._keep_partial(block, start, len(block))
        carried = len(self._carry)
        lines = self._carry + block[start : last_lf + 1]
        self._carry = b""
        used = self._lines(lines)
        if used is not None:
            self.done = True
            return used - carried + start
        return self._keep_partial(block, last_lf + 1, len(block))

    def _keep_partial(self, block: bytes, start: int, end: int) -> int:
        self._carry += block[start:end]
        if len(self._carry) > self.line_limit:
            self._set_problem(Refusal(Kind.LINE_TOO_LONG))
            self._skipping = True
            self._carry = self._carry[-1:]
        return len(block)

    def _lines(self, text: bytes) -> int | None:
        """Complete lines (`text` ends in LF); the offset just past the end line, if there."""
        end = -1
        if self._at_line_start and text.startswith(b".\r\n"):
            end = 0
        else:
            found = text.find(TERMINATOR)
            if found >= 0:
                end = found + 2
        content = text if end < 0 else text[:end]
        if self.problem is None and content:
            self._decode(content)
        if end >= 0:
            return end + 3
        self._at_line_start = text.endswith(b"\r\n")
        return None

    def _decode(self, content: bytes) -> None:
        """Unstuff, check line lengths and size, keep: all with bytes methods."""
        usable = content
        too_long = False
        if len(content) > self.line_limit:
            pieces = content.split(b"\n")
            if max(map(len, pieces)) >= self.line_limit:
                offset = 0
                for piece in pieces:
                    if len(piece) >= self.line_limit:
                        usable, too_long = content[:offset], True
                        break
                    offset += len(piece) + 1
        if self._at_line_start and usable.startswith(b"."):
            usable = usable[1:]
        usable = usable.replace(b"\r\n.", b"\r\n")
        self._size += len(usable)
        if self._size > self.max_size:
            self._set_problem(Refusal(Kind.MESSAGE_TOO_BIG, limit=self.max_size))
        elif too_long:
            self._set_problem(Refusal(Kind.LINE_TOO_LONG))
        elif usable:
            self._out.append(usable)

    def _set_problem(self, problem: Refusal) -> None:
        if self.problem is None:
            self.problem = problem
        self._out = []
