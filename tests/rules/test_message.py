"""Message handling between the client's final dot and the smarthost.

`normalise` is the SMTP-smuggling defence: after it no line ending but CRLF is
left, so the smarthost cannot find an end-of-data the gateway did not see.
`prepare` adds the trace header and, per RFC 6409 section 8, the Message-ID and
Date a submission server is expected to supply.
"""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from submitgw.errors import Refusal
from submitgw.rules.message import (
    Trace,
    header_section,
    message_id,
    new_queue_id,
    normalise,
    normalise_message_id,
    normalise_pieces,
    prepare,
    prepare_pieces,
)
from submitgw.smtp.replies import render

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
NOW_TEXT = "Mon, 06 May 2024 07:08:09 +0000"


def trace(**changes: object) -> Trace:
    values: dict[str, object] = {
        "helo": "laptop.example",
        "client_ip": "192.0.2.7",
        "hostname": "gw.test",
        "user": "alice@example.org",
        "queue_id": "0G4X9K2M7QZ1B3C5D6",
        "tls": "TLSv1.3 TLS_AES_256_GCM_SHA384",
        "recipient": "bob@example.org",
    }
    values.update(changes)
    return Trace(**values)  # type: ignore[arg-type]


def split_prepared(out: bytes) -> tuple[bytes, list[bytes], bytes]:
    """(Received header, other header lines, body) of a prepared message."""
    received_end = out.index(b";\r\n") + 3
    received_end = out.index(b"\r\n", received_end) + 2
    received, rest = out[:received_end], out[received_end:]
    head, sep, body = rest.partition(b"\r\n\r\n")
    assert sep, "a prepared message always has the blank line"
    return received, head.split(b"\r\n") if head else [], body


def header_names(lines: list[bytes]) -> list[bytes]:
    return [
        line.split(b":", 1)[0].strip().lower() for line in lines if line[:1] not in (b" ", b"\t")
    ]


# --- normalise ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"\x00", b"Subject: a\x00b\r\n\r\nbody\r\n", b"Subject: x\r\n\r\nbody\x00\r\n"],
)
def test_nul_is_refused(data: bytes) -> None:
    for declared in (False, True):
        with pytest.raises(Refusal) as info:
            normalise(data, eight_bit_declared=declared)
        assert (render(info.value).code, render(info.value).status) == (554, "5.6.0")


@pytest.mark.parametrize(
    "data", [b"Subject: caf\xc3\xa9\r\n\r\nx\r\n", b"Subject: x\r\n\r\n\xff\r\n", b"\x80"]
)
def test_eight_bit_data_needs_8bitmime(data: bytes) -> None:
    with pytest.raises(Refusal) as info:
        normalise(data, eight_bit_declared=False)
    assert (render(info.value).code, render(info.value).status) == (554, "5.6.0")

    assert normalise(data, eight_bit_declared=True) == data


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a\r\nb\r\n", b"a\r\nb\r\n"),
        (b"a\nb\n", b"a\r\nb\r\n"),
        (b"a\rb\r", b"a\r\nb\r\n"),
        (b"a\r\r\nb", b"a\r\n\r\nb"),
        (b"a\n\rb", b"a\r\n\r\nb"),
        (b"a\n.\nb\r\n", b"a\r\n.\r\nb\r\n"),
        (b"a\r.\rb\r\n", b"a\r\n.\r\nb\r\n"),
        (b"a\r\n.\nb\r\n", b"a\r\n.\r\nb\r\n"),
        (b"", b""),
    ],
)
def test_bare_cr_and_lf_become_crlf(data: bytes, expected: bytes) -> None:
    assert normalise(data, eight_bit_declared=False) == expected


SMUGGLING_PAYLOADS = [
    b"Subject: x\r\n\r\nhello\n.\nMAIL FROM:<evil@example.org>\n",
    b"hello\r.\rRCPT TO:<victim@example.org>\r",
    b"hello\r\n.\nDATA\n",
    b"hello\n.\r\nQUIT\r\n",
    b"\r\r\r\n\n\n\r\n\r",
    b"x\n\r\n\r.\r\r\n\n.",
]


@pytest.mark.parametrize("data", SMUGGLING_PAYLOADS)
def test_after_normalise_every_cr_and_lf_is_part_of_a_crlf(data: bytes) -> None:
    out = normalise(data, eight_bit_declared=False)

    assert all(out[i + 1 : i + 2] == b"\n" for i, byte in enumerate(out) if byte == 0x0D)
    assert all(i > 0 and out[i - 1] == 0x0D for i, byte in enumerate(out) if byte == 0x0A)
    assert out.replace(b"\r\n", b"") == data.replace(b"\r\n", b"").replace(b"\r", b"").replace(
        b"\n", b""
    ), "only line endings change, never the text between them"


# --- Received ---------------------------------------------------------------------------


def test_received_header_names_the_user_the_gateway_and_esmtpsa() -> None:
    received, _, _ = split_prepared(prepare(b"Subject: x\r\n\r\nbody\r\n", trace(), NOW))
    text = received.decode()

    assert text.startswith("Received: from laptop.example ([192.0.2.7])\r\n")
    assert "(authenticated sender: alice@example.org)" in text
    assert "by gw.test with ESMTPSA id 0G4X9K2M7QZ1B3C5D6" in text
    assert "(using TLSv1.3 TLS_AES_256_GCM_SHA384)" in text
    assert "for <bob@example.org>;" in text
    assert text.endswith(f"\t{NOW_TEXT}\r\n")
    # Every continuation line is folded, so the header is one header.
    assert all(line.startswith("\t") for line in text.split("\r\n")[1:-1])


def test_received_has_no_for_clause_without_a_single_recipient() -> None:
    """With several recipients, naming one would leak it to the others."""
    received, _, _ = split_prepared(prepare(b"Subject: x\r\n\r\n", trace(recipient=None), NOW))

    assert b"for <" not in received
    assert b"with ESMTPSA id 0G4X9K2M7QZ1B3C5D6" in received


def test_received_leaves_out_the_client_ip_when_hidden() -> None:
    received, _, _ = split_prepared(prepare(b"Subject: x\r\n\r\n", trace(client_ip=None), NOW))

    assert received.startswith(b"Received: from laptop.example\r\n")
    assert b"192.0.2.7" not in received
    assert b"[" not in received


def test_received_comes_first_and_client_headers_follow_unchanged() -> None:
    data = b"From: a@example.org\r\nSubject: hi\r\n\tfolded\r\n\r\nbody\r\n"
    out = prepare(data, trace(), NOW)

    assert out.startswith(b"Received: ")
    assert b"From: a@example.org\r\nSubject: hi\r\n\tfolded\r\n" in out
    assert out.endswith(b"\r\n\r\nbody\r\n")


# --- Message-ID and Date ----------------------------------------------------------------


def test_message_id_and_date_are_added_when_missing() -> None:
    _, headers, body = split_prepared(prepare(b"Subject: x\r\n\r\nbody\r\n", trace(), NOW))

    assert header_names(headers) == [b"subject", b"message-id", b"date"]
    assert re.fullmatch(rb"Message-ID: <[0-9a-f]{24}@gw\.test>", headers[1])
    assert headers[2] == f"Date: {NOW_TEXT}".encode()
    assert body == b"body\r\n"


def test_generated_message_ids_are_unique() -> None:
    ids = set()
    for _ in range(20):
        _, headers, _ = split_prepared(prepare(b"Subject: x\r\n\r\n", trace(), NOW))
        ids.add(headers[1])
    assert len(ids) == 20


@pytest.mark.parametrize(
    "headers",
    [
        b"Message-ID: <a@b>\r\nDate: Thu, 1 Jan 2015 00:00:00 +0000\r\n",
        b"MESSAGE-ID: <a@b>\r\nDATE: Thu, 1 Jan 2015 00:00:00 +0000\r\n",
        b"message-id: <a@b>\r\ndate: Thu, 1 Jan 2015 00:00:00 +0000\r\n",
        b"Message-Id : <a@b>\r\nDate\t: Thu, 1 Jan 2015 00:00:00 +0000\r\n",
        b"Date: Thu,\r\n 1 Jan 2015 00:00:00 +0000\r\nMessage-ID:\r\n <a@b>\r\n",
    ],
)
def test_existing_message_id_and_date_are_kept_alone(headers: bytes) -> None:
    data = b"Subject: x\r\n" + headers + b"\r\nbody\r\n"
    out = prepare(data, trace(), NOW)
    _, lines, _ = split_prepared(out)

    assert header_names(lines).count(b"message-id") == 1
    assert header_names(lines).count(b"date") == 1
    assert out.endswith(data)


def test_only_the_missing_one_is_added() -> None:
    _, lines, _ = split_prepared(prepare(b"Date: yesterday\r\n\r\n", trace(), NOW))
    assert header_names(lines) == [b"date", b"message-id"]

    _, lines, _ = split_prepared(prepare(b"Message-ID: <a@b>\r\n\r\n", trace(), NOW))
    assert header_names(lines) == [b"message-id", b"date"]


def test_header_look_alikes_in_the_body_do_not_count() -> None:
    data = b"Subject: x\r\n\r\nMessage-ID: <body@example>\r\nDate: in the body\r\n"
    _, lines, body = split_prepared(prepare(data, trace(), NOW))

    assert header_names(lines) == [b"subject", b"message-id", b"date"]
    assert b"gw.test" in lines[1]
    assert body == b"Message-ID: <body@example>\r\nDate: in the body\r\n"


def test_names_that_merely_start_alike_do_not_count() -> None:
    data = b"X-Message-ID: <a@b>\r\nDated: no\r\nMessage-IDs: <c@d>\r\n\r\n"
    _, lines, _ = split_prepared(prepare(data, trace(), NOW))

    assert header_names(lines)[-2:] == [b"message-id", b"date"]


def test_a_folded_continuation_line_is_not_a_header() -> None:
    data = b"Subject: x\r\n Message-ID: <folded@example>\r\n\tDate: folded\r\n\r\n"
    _, lines, _ = split_prepared(prepare(data, trace(), NOW))

    assert header_names(lines) == [b"subject", b"message-id", b"date"]


@pytest.mark.parametrize("data", [b"Subject: only headers\r\n", b"A: 1\r\nB: 2\r\n"])
def test_header_only_message_gets_the_blank_line(data: bytes) -> None:
    out = prepare(data, trace(), NOW)
    _, lines, body = split_prepared(out)

    assert header_names(lines)[-2:] == [b"message-id", b"date"]
    assert body == b""
    assert out.endswith(b"\r\n\r\n")
    assert out.count(b"\r\n\r\n") == 1


def test_header_only_message_with_everything_present_is_unchanged_after_received() -> None:
    data = b"Message-ID: <a@b>\r\nDate: today\r\n"
    out = prepare(data, trace(), NOW)

    assert out.endswith(b";\r\n\t" + NOW_TEXT.encode() + b"\r\n" + data)


def test_body_only_message_gets_headers_before_its_blank_line() -> None:
    out = prepare(b"\r\nbody\r\n", trace(), NOW)
    _, lines, body = split_prepared(out)

    assert header_names(lines) == [b"message-id", b"date"]
    assert body == b"body\r\n"


def test_empty_message_becomes_headers_and_blank_line() -> None:
    out = prepare(b"", trace(), NOW)
    _, lines, body = split_prepared(out)

    assert header_names(lines) == [b"message-id", b"date"]
    assert body == b""
    assert out.endswith(b"\r\n\r\n")


def test_prepare_keeps_everything_crlf() -> None:
    """The added headers must not reintroduce bare line endings."""
    data = normalise(b"Subject: x\n\nline\rline\n", eight_bit_declared=False)
    out = prepare(data, trace(recipient=None, client_ip=None, tls=None), NOW)

    assert out.replace(b"\r\n", b"").count(b"\r") == 0
    assert out.replace(b"\r\n", b"").count(b"\n") == 0


def test_prepare_ends_a_last_line_without_crlf() -> None:
    out = prepare(b"Subject: x", trace())
    assert b"Subject: x\r\nMessage-ID:" in out


# --- in pieces --------------------------------------------------------------------------------

# Header names, blank lines and every kind of line end, so that cuts fall everywhere that matters.
_MESSAGE_TEXT = st.lists(
    st.sampled_from(
        ["Date: x", "Message-ID: <a@b>", "Subject", ": y", " ", "\r", "\n", "\r\n", "\r\n\r\n"]
    )
    | st.text(alphabet="aD.:-\r\n", max_size=8),
    max_size=25,
).map(lambda parts: "".join(parts).encode())


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """`data` cut at `points` (any order, repeats give empty pieces)."""
    bounds = [0, *sorted(min(p, len(data)) for p in points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def without_token(out: bytes) -> bytes:
    return re.sub(rb"Message-ID: <[0-9a-f]{24}@", b"Message-ID: <@", out)


@given(_MESSAGE_TEXT, st.lists(st.integers(0, 200), max_size=8))
def test_normalise_in_pieces_is_normalise_of_the_whole(data: bytes, points: list[int]) -> None:
    pieces = normalise_pieces(cut(data, points), eight_bit_declared=False)
    assert b"".join(pieces) == normalise(data, eight_bit_declared=False)


@given(_MESSAGE_TEXT, st.lists(st.integers(0, 200), max_size=8))
def test_prepare_in_pieces_is_prepare_of_the_whole(data: bytes, points: list[int]) -> None:
    content = normalise(data, eight_bit_declared=False)
    pieces = prepare_pieces(cut(content, points), trace(), NOW)
    assert without_token(b"".join(pieces)) == without_token(prepare(content, trace(), NOW))
    if content.startswith(b"\r\n"):
        headers = b""
    elif b"\r\n\r\n" in content:
        headers = content[: content.index(b"\r\n\r\n") + 2]
    else:
        headers = content
    assert header_section(cut(content, points)) == headers


def test_a_line_end_cut_in_two_stays_one_line_end() -> None:
    pieces = normalise_pieces([b"a\r", b"\nb\r", b"", b"\r", b"\n."], eight_bit_declared=False)
    assert b"".join(pieces) == b"a\r\nb\r\n\r\n."
    assert b"".join(normalise_pieces([b"a\r"], eight_bit_declared=False)) == b"a\r\n"


def test_headers_cut_between_pieces_are_found() -> None:
    """A Date: or Message-ID: whose name is cut between pieces is still the client's."""
    pieces = [b"Subject: x\r\nDa", b"te: today\r\nMessage", b"-ID: <a@b>\r", b"\n\r", b"\nbody\r\n"]
    out = b"".join(prepare_pieces(pieces, trace(), NOW))
    assert out.count(b"Date:") == 1 and out.count(b"Message-ID:") == 1
    assert out.endswith(b"Date: today\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n")


def test_untouched_pieces_are_not_copied() -> None:
    piece = b"Subject: x\r\n\r\n" + b"line\r\n" * 1000
    assert normalise_pieces([piece], eight_bit_declared=False)[0] is piece


# --- queue id and Message-ID -------------------------------------------------------------


def test_queue_ids_are_18_base32_characters_sorting_by_time() -> None:
    earlier = [new_queue_id(1_700_000_000.0 + i / 1000) for i in range(50)]
    later = new_queue_id(1_700_000_001.0)

    assert all(re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{18}", q) for q in earlier)
    assert earlier == sorted(earlier) and later > earlier[-1]


def test_queue_ids_of_one_millisecond_differ() -> None:
    assert len({new_queue_id(1_700_000_000.0) for _ in range(1000)}) == 1000


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (b"Message-ID: <a.1@example.org>\r\n", "a.1@example.org"),
        (b"message-id:<a@b>\r\n", "a@b"),
        (b"Message-Id :\r\n <folded@example.org>\r\n", "folded@example.org"),
        (b"Message-ID: <a@b> (a comment)\r\n", "a@b"),
        (b"Message-ID: no-brackets@example.org\r\n", "no-brackets@example.org"),
        (b"Message-ID: <first@x>\r\nMessage-ID: <second@x>\r\n", "first@x"),
        (b"X-Message-ID: <not@this>\r\n", None),
        (b"Message-ID:   \r\n", None),
    ],
)
def test_message_id_is_read_from_the_header_section(headers: bytes, expected: str | None) -> None:
    data = b"Subject: x\r\n" + headers + b"\r\nMessage-ID: <in-body@x>\r\n"

    assert message_id(data) == expected


def test_the_message_id_the_gateway_adds_is_the_one_read_back() -> None:
    out = prepare(b"Subject: x\r\n\r\nbody\r\n", trace(), NOW)
    (line,) = [h for h in split_prepared(out)[1] if h.startswith(b"Message-ID")]

    assert f"Message-ID: <{message_id(out)}>".encode() == line


@pytest.mark.parametrize(
    ("typed", "stored"),
    [("<a@b>", "a@b"), ("  a@b ", "a@b"), ("<a@b>  (x)", "a@b"), ("", None), ("<>", None)],
)
def test_message_ids_typed_for_a_search_read_as_stored(typed: str, stored: str | None) -> None:
    assert normalise_message_id(typed) == stored
