"""Properties of the parsers that read what clients send, over arbitrary input.

Rules proven here: the command-line splitter, the MAIL/RCPT parsers, the From:
reader, the DATA decoder and `message.normalise` answer any bytes with a result
or a `Refusal` (never another exception), within a time limit; the DATA
decoder gives what the former line-by-line reader gave, for any way the stream is
cut into blocks, and the session's way of reading never takes a byte past the
final dot; `normalise` makes the same bytes as the former regex substitution.
"""

from __future__ import annotations

import asyncio
import re
import string

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from submitgw.errors import Refusal
from submitgw.rules import message
from submitgw.rules.address import parse_mail_from, parse_rcpt_to
from submitgw.rules.binding import HeaderLimits, from_addresses, simple_from_addresses
from submitgw.rules.session import split_command
from submitgw.smtp.dataread import TERMINATOR, DataDecoder
from submitgw.smtp.replies import render

# Modest example counts and a per-example deadline: the whole file runs in seconds.
FAST = settings(max_examples=150, deadline=500, suppress_health_check=[HealthCheck.too_slow])
LIMIT = 1001

# Bytes that matter to the DATA and header rules, so short examples hit the edges.
_EDGY = st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"..", b"\r\n.\r\n", b"a", b" ", b"\x00"])
edgy_bytes = st.lists(st.one_of(_EDGY, st.binary(max_size=8)), max_size=60).map(b"".join)


# --- command lines ---------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=600), st.integers(min_value=16, max_value=600))
@example(b"MAIL FROM:<a@b.example>\r\n", 512)
@example(b"\xff\xfe AUTH\r\n", 512)
def test_command_lines_give_a_verb_and_argument_or_a_reply(raw: bytes, limit: int) -> None:
    try:
        verb, arg = split_command(raw, command_limit=limit, auth_limit=limit * 2)
    except Refusal as err:
        assert render(err).code == 500 and render(err).status in {"5.5.2"}
        return
    assert verb == verb.upper() and " " not in verb
    assert arg is None or (arg == arg.strip() and arg)
    assert raw.endswith(b"\r\n") and b"\x00" not in raw


# --- MAIL FROM / RCPT TO -------------------------------------------------------------------


address_text = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=string.ascii_letters + '<>@.:%!"\\ =+-[]', max_size=80),
    st.builds(lambda a, p: f"FROM:<{a}>{p}", st.text(max_size=40), st.text(max_size=30)),
    st.builds(lambda a, p: f"TO:<{a}>{p}", st.text(max_size=40), st.text(max_size=30)),
)


@FAST
@given(st.one_of(st.none(), address_text), st.booleans())
@example("FROM:<alice@example.org> SIZE=100 BODY=8BITMIME SMTPUTF8", False)
@example("TO:<älice@bücher.example>", True)
def test_mail_and_rcpt_parsers_give_an_address_or_a_reply(arg: str | None, utf8: bool) -> None:
    try:
        sender, params = parse_mail_from(arg, max_size=1000)
        assert sender == "" or "@" in sender
        assert params.size is None or params.size <= 1000
    except Refusal as err:
        assert 500 <= render(err).code < 600
    try:
        recipient = parse_rcpt_to(arg, smtputf8=utf8)
        assert "@" in recipient and "<" not in recipient and ">" not in recipient
    except Refusal as err:
        assert 500 <= render(err).code < 600


# --- From: ----------------------------------------------------------------------------------


# Pieces of From: syntax, so that short examples combine quotes, comments, groups, folds.
_PIECES = b'From: a@b.example <x@y.example> , ; : " ( ) \\ [ ] G: x @ . Alice =?utf-8?q?a?= \xff'
_FROM_PIECES = st.sampled_from(
    [*_PIECES.split(b" "), b"From:", b"FROM :", b"From ", b" ", b"\t", b"\r\n", b"\r\n\r\n"]
)
from_syntax = st.lists(_FROM_PIECES, max_size=40).map(b"".join)

header_lines = st.lists(
    st.one_of(
        st.sampled_from(
            [
                b"From: alice@example.org",
                b"From: Alice <alice@example.org>, bob@example.org",
                b"From: =?utf-8?q?J=C3=B6rg?= <j@example.org>",
                b"FROM : x@example.org",
                b"From: ((((a)))) b@example.org",
                b'From: "x (y" <a@b.example>',
                b" folded@example.org",
                b"To: bob@example.net",
                b"Subject: hi",
                b"From x",
                b"",
            ]
        ),
        st.binary(max_size=40),
        st.builds(
            lambda n: b"From: " + b"(" * n + b"x" + b")" * n + b" a@b.example", st.integers(0, 600)
        ),
    ),
    max_size=12,
).map(lambda lines: b"\r\n".join(lines) + b"\r\n\r\nbody\r\n")


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(header_lines, from_syntax))
@example(b'From:"')  # the parser itself raised IndexError on this
@example(b'From: a@[x"] ' + b"(" * 400 + b"\r\n\r\n")
@example(b"From: " + b"(" * 400 + b"x" + b")" * 400 + b" a@b.example\r\n\r\n")
@example(b"From: " + b", ".join(b"u%d@example.org" % i for i in range(60)) + b"\r\n\r\n")
def test_from_reader_gives_addresses_or_a_reply(content: bytes) -> None:
    content = message.normalise(content.replace(b"\x00", b""), eight_bit_declared=True)
    limits = HeaderLimits()
    try:
        simple: list[str] | Refusal | None = simple_from_addresses(content, limits)
    except Refusal as refused:
        simple = refused
    try:
        addresses = from_addresses(content, limits)
    except Refusal as err:
        assert f"{render(err).code} {render(err).status}" in {"550 5.7.1", "554 5.6.0"}
        assert simple is None or (isinstance(simple, Refusal) and render(simple) == render(err))
        return
    assert simple is None or simple == addresses
    assert len(addresses) <= limits.max_from_addresses
    assert all("@" in a for a in addresses)


_ATOM = st.text("abcXYZ019_+=-", min_size=1, max_size=6)
_LABEL = st.text("abzAZ09-", min_size=1, max_size=6)
_SIMPLE_ADDRESSES = st.builds(
    lambda local, domain: ".".join(local) + "@" + ".".join(domain),
    st.lists(_ATOM, min_size=1, max_size=3),
    st.lists(_LABEL, min_size=2, max_size=3),
)
_DISPLAY = st.one_of(
    st.just(""),
    st.lists(st.text("aZ09", min_size=1, max_size=5), min_size=1, max_size=3).map(
        lambda words: " ".join(words) + " "
    ),
    st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters='"\\'),
        max_size=12,
    ).map(lambda text: f'"{text}" '),
)


@FAST
@given(st.lists(st.tuples(_DISPLAY, _SIMPLE_ADDRESSES, st.booleans()), max_size=3))
def test_the_simple_from_reading_is_the_parsers(values: list[tuple[str, str, bool]]) -> None:
    """What the event loop reads without Python's parser, the parser reads the same."""
    fields = [
        f"From: {display}<{address}>" if angle or display else f"From: {address}"
        for display, address, angle in values
    ]
    content = ("\r\n".join(["Subject: x", *fields]) + "\r\n\r\n").encode()
    simple = simple_from_addresses(content)
    assert simple is not None
    assert simple == from_addresses(content)


@FAST
@given(edgy_bytes, st.sampled_from([b"From: ", b"from:", b"From: a@b.example, "]))
@example(b"a@b.example (comment)", b"From: ")
@example(b"=?utf-8?q?a?=@b.example", b"From: ")
@example(b"<a@b.example> x", b"From: ")
def test_the_simple_from_reading_never_disagrees(value: bytes, prefix: bytes) -> None:
    """Anything but the simple shape goes to the parser (None); never a different answer."""
    content = b"Subject: x\r\n" + prefix + value.replace(b"\x00", b"") + b"\r\n\r\n"
    try:
        simple = simple_from_addresses(content)
    except Refusal as refused:
        with pytest.raises(Refusal) as also:
            from_addresses(content)
        assert render(also.value) == render(refused)
        return
    if simple is not None:
        assert simple == from_addresses(content)


# --- DATA ------------------------------------------------------------------------------------


def reference(stream: bytes, max_size: int) -> tuple[bytes | str, int] | None:
    """The former line-by-line reader: (message or reply, bytes read), None if no end."""
    pos, at_line_start, problem, size = 0, True, "", 0
    chunks: list[bytes] = []
    while True:
        lf = stream.find(b"\n", pos)
        if lf < 0:
            return None
        line, pos = stream[pos : lf + 1], lf + 1
        if len(line) > LIMIT:
            problem = problem or "500 5.5.2"
            at_line_start = line.endswith(b"\r\n")
            continue
        if at_line_start and line == b".\r\n":
            return (problem or b"".join(chunks)), pos
        if at_line_start and line.startswith(b"."):
            line = line[1:]
        at_line_start = line.endswith(b"\r\n")
        size += len(line)
        if size > max_size:
            problem = problem or "552 5.3.4"
        if not problem:
            chunks.append(line)


def outcome(decoder: DataDecoder) -> bytes | str:
    """The decoded message or the reply; the pieces the session takes must join to it."""
    try:
        whole = decoder.result()
    except Refusal as err:
        return f"{render(err).code} {render(err).status}"
    pieces = decoder.pieces()
    assert b"".join(pieces) == whole and all(piece.endswith(b"\n") for piece in pieces)
    return whole


data_streams = st.one_of(
    edgy_bytes,
    st.builds(lambda a, n, b: a + b"x" * n + b, edgy_bytes, st.integers(990, 1010), edgy_bytes),
)


@FAST
@given(data_streams, st.lists(st.integers(1, 40), max_size=30), st.integers(0, 120))
@example(b".\r\nQUIT\r\n", [], 100)
@example(b"a\r\n.\r\n", [1, 1, 1], 100)
@example(b"\r\n.\r\n", [1], 100)
@example(b"..\r\n.x\r\n\n.\r\n.\r\n", [2, 3], 100)
@example(b"x" * 1001 + b"\n.\r\n" + b"y\r\n.\r\n", [500, 600], 100)
@example(b"x" * 1000 + b"\r\n.\r\n", [1000], 5000)
def test_decoder_matches_the_line_reader_in_any_blocks(
    stream: bytes, cuts: list[int], max_size: int
) -> None:
    stream += b"\r\n.\r\nNEXT\r\n"
    decoder = DataDecoder(max_size, LIMIT)
    pos = used = 0
    for size in [*cuts, len(stream)]:
        block = stream[pos : pos + size]
        pos += len(block)
        used += decoder.feed(block)
        if decoder.done:
            break
    expected = reference(stream, max_size)
    assert expected is not None
    assert decoder.done
    assert (outcome(decoder), used) == expected


async def _read_like_the_session(
    stream: bytes, cuts: list[int], limit: int, max_size: int
) -> tuple[bytes | str, bytes]:
    """Feed the stream to a real StreamReader in pieces and read it as `_read_data` does."""
    reader = asyncio.StreamReader(limit=limit)
    decoder = DataDecoder(max_size, LIMIT)
    pieces, pos = [], 0
    for size in [*cuts, len(stream)]:
        pieces.append(stream[pos : pos + size])
        pos += size

    async def writer() -> None:
        for piece in pieces:
            if piece:
                reader.feed_data(piece)
            await asyncio.sleep(0)
        reader.feed_eof()

    task = asyncio.ensure_future(writer())
    while not decoder.done:
        want = decoder.next_read()
        try:
            if isinstance(want, int):
                block = await reader.readexactly(want)
            else:
                block = await reader.readuntil(want)
        except asyncio.LimitOverrunError as exc:
            block = await reader.readexactly(exc.consumed)
        assert decoder.feed(block) == len(block), "read past the end of DATA"
    await task
    return outcome(decoder), await reader.read()


@FAST
@given(data_streams, st.lists(st.integers(1, 50), max_size=20), st.integers(8, 40))
@example(b".\r\n", [], 8)
@example(b"ab\r\n.\r", [5], 8)
@example(b"\r\n" * 40, [3, 7], 8)
@example(b"a.\r\n" * 30, [9], 8)
def test_the_session_never_reads_past_the_final_dot(
    stream: bytes, cuts: list[int], limit: int
) -> None:
    """Pipelined commands after the dot stay in the reader, whatever the reader's limit."""
    stream += TERMINATOR
    expected = reference(stream, 200)
    assert expected is not None
    result, rest = asyncio.run(_read_like_the_session(stream + b"QUIT\r\n", cuts, limit, 200))
    assert (result, rest) == (expected[0], stream[expected[1] :] + b"QUIT\r\n")


# --- normalise -------------------------------------------------------------------------------

_FORMER_EOL = re.compile(rb"\r\n|\r|\n")


@FAST
@given(edgy_bytes, st.booleans())
def test_normalise_gives_the_former_result_or_a_reply(data: bytes, eight_bit: bool) -> None:
    try:
        result = message.normalise(data, eight_bit_declared=eight_bit)
    except Refusal as err:
        assert render(err).code == 554 and render(err).status == "5.6.0"
        assert b"\x00" in data or (not eight_bit and not data.isascii())
        return
    assert result == _FORMER_EOL.sub(b"\r\n", data)
