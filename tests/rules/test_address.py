"""MAIL FROM / RCPT TO parsing: only `<dot-atom@domain>` passes, and it passes unchanged.

Every legacy form refused here is one that has been used to make a mail server
relay somewhere it should not, so each has its own row and its own reply code.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from submitgw.errors import Refusal
from submitgw.rules.address import MailParams, normalise_login, parse_mail_from, parse_rcpt_to
from submitgw.smtp.replies import render

MAX_SIZE = 10_000


def mail(arg: str) -> tuple[str, MailParams]:
    return parse_mail_from(arg, max_size=MAX_SIZE)


def reply_of(call: Callable[..., object], *args: object, **kwargs: object) -> str:
    """The `code status` of the reply to the refusal a parse raises."""
    with pytest.raises(Refusal) as info:
        call(*args, **kwargs)
    return f"{render(info.value).code} {render(info.value).status}"


@pytest.mark.parametrize(
    "address",
    [
        "alice@example.org",
        "Alice.Smith@Example.ORG",
        "a+tag@example.org",
        "o'brien@example.org",
        "x#$&'*+/=?^_`{|}~-y@example.org",
        "a@localhost",
        "a@mail-1.example.org",
        "a@xn--bcher-kva.example",
        "a" * 64 + "@example.org",
    ],
)
def test_plain_addresses_are_accepted_and_returned_unchanged(address: str) -> None:
    sender, _ = mail(f"FROM:<{address}>")
    recipient = parse_rcpt_to(f"TO:<{address}>", smtputf8=False)

    assert sender == address
    assert recipient == address


@pytest.mark.parametrize(
    "arg",
    ["FROM:<a@example.org>", "from:<a@example.org>", "FROM: <a@example.org>"],
)
def test_mail_keyword_is_case_insensitive_and_may_precede_a_space(arg: str) -> None:
    assert mail(arg)[0] == "a@example.org"


def test_null_sender_is_the_empty_string() -> None:
    assert mail("FROM:<>") == ("", MailParams())


ROUTING = "routing characters"
INVALID_LOCAL = "invalid local part"
INVALID_DOMAIN = "invalid domain"
TRICKS = [
    # (why, address inside the brackets, reply, part of the reply text)
    ("percent hack", "a%b@example.org", "553 5.1.7", ROUTING),
    ("percent hack to a host", "user%relay.example@example.org", "553 5.1.7", ROUTING),
    ("bang path", "a!b@example.org", "553 5.1.7", ROUTING),
    ("bang path to a host", "relay.example!user@example.org", "553 5.1.7", ROUTING),
    ("source route, two hops", "@a.example,@b.example:u@example.org", "553 5.1.7", "source route"),
    ("source route, one hop", "@a.example:u@example.org", "553 5.1.7", "source route"),
    ("quoted local part", '"a b"@example.org', "553 5.1.7", "quoted"),
    ("quoted local part with @", '"a@b"@example.org', "553 5.1.7", "quoted"),
    ("backslash escape", "a\\@b@example.org", "553 5.1.7", "quoted"),
    ("IPv4 literal", "u@[192.0.2.1]", "553 5.1.7", "IP address literals"),
    ("IPv6 literal", "u@[IPv6:2001:db8::1]", "553 5.1.7", "IP address literals"),
    ("bare IPv4 as domain", "u@192.0.2.1", "553 5.1.7", INVALID_DOMAIN),
    ("trailing dot in domain", "u@example.org.", "553 5.1.7", "trailing dot"),
    ("two @", "a@b@example.org", "553 5.1.7", "more than one @"),
    ("empty local part", "@example.org", "553 5.1.7", "not accepted"),
    ("no domain", "alice", "553 5.1.7", "domain is required"),
    ("empty domain", "alice@", "553 5.1.7", INVALID_DOMAIN),
    ("local part over 64 octets", "a" * 65 + "@example.org", "553 5.1.7", INVALID_LOCAL),
    (
        "path over 256 octets",
        "a" * 64 + "@" + ("b" * 63 + ".") * 3 + "b" * 9,
        "553 5.1.7",
        "too long",
    ),
    ("leading dot in local part", ".a@example.org", "553 5.1.7", INVALID_LOCAL),
    ("trailing dot in local part", "a.@example.org", "553 5.1.7", INVALID_LOCAL),
    ("double dot in local part", "a..b@example.org", "553 5.1.7", INVALID_LOCAL),
    ("space in local part", "a b@example.org", "553 5.1.7", INVALID_LOCAL),
    ("empty label", "a@example..org", "553 5.1.7", INVALID_DOMAIN),
    ("label starts with hyphen", "a@-example.org", "553 5.1.7", INVALID_DOMAIN),
    ("label ends with hyphen", "a@example-.org", "553 5.1.7", INVALID_DOMAIN),
    ("label over 63 octets", "a@" + "b" * 64 + ".org", "553 5.1.7", INVALID_DOMAIN),
    ("non-ASCII local part without SMTPUTF8", "jörg@example.org", "553 5.6.7", "SMTPUTF8"),
    ("non-ASCII domain without SMTPUTF8", "a@bücher.example", "553 5.6.7", "SMTPUTF8"),
]


@pytest.mark.parametrize(
    ("why", "address", "expected", "reason"), TRICKS, ids=[t[0] for t in TRICKS]
)
def test_mail_from_rejects(why: str, address: str, expected: str, reason: str) -> None:
    """Each trick is caught by its own rule (the reply says which), not by luck elsewhere."""
    with pytest.raises(Refusal) as info:
        parse_mail_from(f"FROM:<{address}>", max_size=MAX_SIZE)

    reply = render(info.value)
    assert f"{reply.code} {reply.status}" == expected
    assert reason in reply.text


@pytest.mark.parametrize(
    ("why", "address", "expected", "reason"), TRICKS, ids=[t[0] for t in TRICKS]
)
def test_rcpt_to_rejects_with_the_recipient_status(
    why: str, address: str, expected: str, reason: str
) -> None:
    """The same rules for recipients, with 5.1.3 (bad destination) instead of 5.1.7."""
    with pytest.raises(Refusal) as info:
        parse_rcpt_to(f"TO:<{address}>", smtputf8=False)

    reply = render(info.value)
    assert f"{reply.code} {reply.status}" == expected.replace("5.1.7", "5.1.3")
    assert reason in reply.text


def test_the_path_limit_counts_the_whole_address() -> None:
    """A 64-octet local part and a 191-octet domain make exactly 256 octets: allowed."""
    domain = ("b" * 63 + ".") * 2 + "b" * 63
    address = "a" * 64 + "@" + domain
    assert len(address) == 256

    assert mail(f"FROM:<{address}>")[0] == address
    assert reply_of(parse_mail_from, f"FROM:<{address}b>", max_size=MAX_SIZE) == "553 5.1.7"


@pytest.mark.parametrize(
    "arg",
    [
        "FROM:a@example.org",
        "FROM:a@example.org SIZE=10",
        "FROM:",
        "FROM: a@example.org",
    ],
)
def test_mail_from_without_angle_brackets_is_a_syntax_error(arg: str) -> None:
    assert reply_of(parse_mail_from, arg, max_size=MAX_SIZE) == "501 5.5.4"


@pytest.mark.parametrize(
    "arg",
    [
        None,
        "",
        "<a@example.org>",
        "TO:<a@example.org>",
        "FROM:<a@example.org",
        "FROM:<a@example.org>SIZE=10",
        "FROM:<a>b@example.org>",
    ],
)
def test_malformed_mail_arguments_are_501(arg: str | None) -> None:
    assert reply_of(parse_mail_from, arg, max_size=MAX_SIZE) == "501 5.5.4"


@pytest.mark.parametrize("arg", ["TO:a@example.org", "TO:", None, "FROM:<a@example.org>"])
def test_malformed_rcpt_arguments_are_501(arg: str | None) -> None:
    assert reply_of(parse_rcpt_to, arg, smtputf8=False) == "501 5.5.4"


def test_empty_recipient_is_refused() -> None:
    assert reply_of(parse_rcpt_to, "TO:<>", smtputf8=False) == "553 5.1.3"


@pytest.mark.parametrize(
    "address",
    ["jörg@example.org", "a@bücher.example", "用户@例子.广告", "δοκιμή@παράδειγμα.δοκιμή"],
)
def test_non_ascii_addresses_pass_with_smtputf8(address: str) -> None:
    sender, params = mail(f"FROM:<{address}> SMTPUTF8")
    recipient = parse_rcpt_to(f"TO:<{address}>", smtputf8=True)

    assert sender == address
    assert recipient == address
    assert params.smtputf8 is True


def test_smtputf8_does_not_admit_the_tricks() -> None:
    for address in ["jörg%x@example.org", "jörg!x@example.org", '"jörg"@example.org', "ö@[::1]"]:
        assert reply_of(parse_mail_from, f"FROM:<{address}> SMTPUTF8", max_size=MAX_SIZE) == (
            "553 5.1.7"
        )


def test_non_ascii_local_part_is_limited_in_octets_not_characters() -> None:
    """33 two-octet characters are 66 octets: over the 64-octet limit."""
    assert reply_of(parse_mail_from, f"FROM:<{'ö' * 33}@example.org> SMTPUTF8", max_size=10) == (
        "553 5.1.7"
    )
    assert mail(f"FROM:<{'ö' * 32}@example.org> SMTPUTF8")[0] == "ö" * 32 + "@example.org"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ("", MailParams()),
        ("SIZE=0", MailParams(size=0)),
        (f"SIZE={MAX_SIZE}", MailParams(size=MAX_SIZE)),
        ("size=123", MailParams(size=123)),
        ("BODY=7BIT", MailParams(body="7BIT")),
        ("BODY=8BITMIME", MailParams(body="8BITMIME")),
        ("body=8bitmime", MailParams(body="8BITMIME")),
        ("SMTPUTF8", MailParams(smtputf8=True)),
        ("AUTH=<>", MailParams()),
        ("AUTH=alice+40example.org", MailParams()),
        (
            "SIZE=42 BODY=8BITMIME SMTPUTF8 AUTH=<>",
            MailParams(size=42, body="8BITMIME", smtputf8=True),
        ),
        ("SIZE=1  BODY=7BIT", MailParams(size=1, body="7BIT")),
    ],
)
def test_accepted_mail_parameters(params: str, expected: MailParams) -> None:
    sender, parsed = mail(f"FROM:<a@example.org> {params}".rstrip())

    assert sender == "a@example.org"
    assert parsed == expected


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ("SIZE=42 BODY=8BITMIME SMTPUTF8 AUTH=<>", ["SIZE=42", "BODY=8BITMIME", "SMTPUTF8"]),
        ("AUTH=alice+40example.org", []),
        ("BODY=7BIT", ["BODY=7BIT"]),
        ("", []),
    ],
)
def test_upstream_options_never_forward_auth(params: str, expected: list[str]) -> None:
    """AUTH= names our client's identity to us; the smarthost gets the gateway's own."""
    assert mail(f"FROM:<a@example.org> {params}".rstrip())[1].upstream_options() == expected


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (f"SIZE={MAX_SIZE + 1}", "552 5.3.4"),
        ("SIZE=" + "9" * 20, "552 5.3.4"),
        ("SIZE=" + "9" * 21, "501 5.5.4"),
        ("SIZE=abc", "501 5.5.4"),
        ("SIZE=-1", "501 5.5.4"),
        ("SIZE=1.5", "501 5.5.4"),
        ("SIZE", "501 5.5.4"),
        ("SIZE=", "501 5.5.4"),
        # str.isdigit() says yes to these; int() would crash on the first.
        ("SIZE=²", "501 5.5.4"),
        ("SIZE=١٠", "501 5.5.4"),
        ("BODY=BINARYMIME", "501 5.5.4"),
        ("BODY", "501 5.5.4"),
        ("SMTPUTF8=yes", "501 5.5.4"),
        ("AUTH", "501 5.5.4"),
        ("AUTH=a=b", "501 5.5.4"),
        ("AUTH=a+zz", "501 5.5.4"),
        ("=x", "501 5.5.4"),
        ("X_Y=1", "501 5.5.4"),
        ("RET=HDRS", "555 5.5.4"),
        ("ENVID=abc", "555 5.5.4"),
        ("XCLIENT", "555 5.5.4"),
        ("FOO=1", "555 5.5.4"),
    ],
)
def test_rejected_mail_parameters(params: str, expected: str) -> None:
    assert reply_of(parse_mail_from, f"FROM:<a@example.org> {params}", max_size=MAX_SIZE) == (
        expected
    )


def test_size_is_checked_even_for_the_null_sender() -> None:
    assert reply_of(parse_mail_from, f"FROM:<> SIZE={MAX_SIZE + 1}", max_size=MAX_SIZE) == (
        "552 5.3.4"
    )


def test_smtputf8_after_the_address_still_applies_to_it() -> None:
    """Parameters are read before the address is checked, whatever their position."""
    assert mail("FROM:<jörg@example.org> SIZE=1 SMTPUTF8")[0] == "jörg@example.org"


@pytest.mark.parametrize("params", ["NOTIFY=NEVER", "ORCPT=rfc822;a@example.org", "FOO", "X=1"])
def test_rcpt_parameters_are_555(params: str) -> None:
    assert reply_of(parse_rcpt_to, f"TO:<a@example.org> {params}", smtputf8=False) == ("555 5.5.4")


@pytest.mark.parametrize(
    "address",
    ["a@example.org", "Mixed.Case@Example.ORG", "x+y@sub.example.org", "jörg@bücher.example"],
)
def test_the_address_returned_is_the_one_between_the_brackets(address: str) -> None:
    """What was checked is byte for byte what gets forwarded: no case folding, no rewriting."""
    arg_tail = " SMTPUTF8 SIZE=5 AUTH=<>"
    sender, _ = mail(f"FROM:<{address}>{arg_tail}")
    recipient = parse_rcpt_to(f"TO:<{address}>", smtputf8=True)

    assert sender.encode("utf-8") == address.encode("utf-8")
    assert recipient.encode("utf-8") == address.encode("utf-8")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alice@example.org", "alice@example.org"),
        ("Alice@Example.ORG", "alice@example.org"),
        ("  bob@example.org \t", "bob@example.org"),
        ("alice", None),
        ("", None),
        ("a%b@example.org", None),
        ("a!b@example.org", None),
        ('"a"@example.org', None),
        ("a@[192.0.2.1]", None),
        ("a@example.org.", None),
        ("a@b@example.org", None),
        ("jörg@example.org", None),
        ("a" * 65 + "@example.org", None),
    ],
)
def test_normalise_login(text: str, expected: str | None) -> None:
    """Logins are stored lower-case, and only plain ASCII addresses can be logins."""
    assert normalise_login(text) == expected


def test_a_parameter_given_twice_is_refused() -> None:
    with pytest.raises(Refusal) as err:
        parse_mail_from("FROM:<a@example.org> SIZE=10 SIZE=99999", max_size=1000)
    assert render(err.value).line.startswith("501 5.5.4")
