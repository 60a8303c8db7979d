"""Pure relay-policy decisions: sender binding for the envelope and the From: header.

Every address trick is judged on the address it really is: display names,
comments, quoting, routes, percent hacks, trailing dots, IP literals, encoded-words
and Unicode spellings must neither smuggle a forged address past the binding nor
make an allowed one look forged.
"""

from __future__ import annotations

import unicodedata

import pytest

from submitgw.errors import AuthFailed, Refusal
from submitgw.rules import policy
from submitgw.rules.binding import InvalidPattern, fold, from_addresses, normalise_pattern
from submitgw.smtp.replies import render
from submitgw.types import (
    AUTH_POLICIES,
    CERTIFICATE,
    DEFAULT_AUTH_POLICY,
    PASSWORD,
    PASSWORD_OR_CERTIFICATE,
    TWO_FACTOR,
    CertificateUser,
    Identity,
)

ALICE = Identity("alice@example.org", "PLAIN")
# As SenderStore.allowed returns it: the own address first, then the bindings.
ALLOWED = [ALICE.user, "@example.net", "sales@example.com", "älice@bücher.example"]


def envelope(sender: str, allowed: list[str] | None = None) -> str | None:
    """The refusal as `code status`, or None when the sender is allowed."""
    try:
        policy.check_sender(ALICE, sender, ALLOWED[1:] if allowed is None else allowed)
    except Refusal as err:
        return f"{render(err).code} {render(err).status}"
    return None


def header(*lines: str | bytes, allowed: list[str] = ALLOWED) -> str | None:
    """The end-of-DATA verdict on a message with these header lines."""
    encoded = [line.encode() if isinstance(line, str) else line for line in lines]
    content = b"\r\n".join(encoded) + b"\r\nSubject: test\r\n\r\nbody\r\n"
    try:
        policy.check_header_from(from_addresses(content), allowed)
    except Refusal as err:
        return f"{render(err).code} {render(err).status}"
    return None


# --- envelope sender (MAIL FROM) --------------------------------------------------------------


@pytest.mark.parametrize(
    "sender",
    [
        "alice@example.org",
        "ALICE@Example.ORG",
        "anyone@example.net",
        "x.y+tag@EXAMPLE.NET",
        "sales@example.com",
        "Sales@Example.Com",
    ],
)
def test_own_address_and_bindings_are_allowed(sender: str) -> None:
    assert envelope(sender) is None


def test_own_address_is_allowed_whatever_the_list_says() -> None:
    assert envelope("alice@example.org", allowed=[]) is None
    assert envelope("bob@example.org", allowed=[]) == "553 5.7.1"


def test_null_sender_is_refused_even_with_bindings() -> None:
    assert envelope("", allowed=["@example.org"]) == "553 5.7.1"


@pytest.mark.parametrize(
    "sender",
    [
        "bob@example.org",  # the own address is one address, not its domain
        "other@example.com",  # sales@ is bound, not the domain
        "x@sub.example.net",  # @example.net covers that domain only, not subdomains
        "x@example.net.evil.test",
        "x@evilexample.net",
        "x@net",
        "sales@example.com.evil.test",
    ],
)
def test_addresses_outside_the_list_are_refused(sender: str) -> None:
    assert envelope(sender) == "553 5.7.1"


@pytest.mark.parametrize(
    "sender",
    [
        '"alice"@example.org',
        '"alice@example.org"@evil.test',
        '"x"@example.net',
        "@relay.example:alice@example.org",
        "@example.net:x@evil.test",
        "alice%evil.test@example.org",
        "x%evil.test@example.net",
        "evil.test!alice@example.org",
        "alice@example.org.",
        "x@example.net.",
        "alice@[127.0.0.1]",
        "alice@[IPv6:::1]",
        "alice＠example.org",
        "alice@example.org@evil.test",
    ],
)
def test_address_tricks_never_match_a_binding(sender: str) -> None:
    """Even a list that names the trick literally does not make it a plain address."""
    assert envelope(sender) == "553 5.7.1"
    assert envelope(sender, allowed=[sender, "@example.org", "@example.net"]) == "553 5.7.1"


@pytest.mark.parametrize(
    ("sender", "binding"),
    [
        ("ÄLICE@bücher.example", "älice@BÜCHER.example"),
        ("älice@BÜCHER.EXAMPLE", "älice@bücher.example"),
        (unicodedata.normalize("NFD", "älice@bücher.example"), "älice@bücher.example"),
        ("jörg@bücher.example", "@BÜCHER.example"),
        ("x@ΠΑΡΆΔΕΙΓΜΑ.δοκιμή", "@παράδειγμα.δοκιμή"),
        ("x@STRAẞE.example", "@strasse.example"),  # IDNA maps capital ẞ to "ss" too
    ],
)
def test_smtputf8_spellings_of_a_bound_address_are_allowed(sender: str, binding: str) -> None:
    assert envelope(sender, allowed=[binding]) is None


@pytest.mark.parametrize(
    ("sender", "binding"),
    [
        # IDNA 2008 keeps ß and ς: these are other domains, possibly other owners.
        ("x@straße.example", "@strasse.example"),
        ("x@strasse.example", "@straße.example"),
        ("x@ας.example", "@ασ.example"),
        ("x@ασ.example", "@ας.example"),
        ("älice@bücher.example", "alice@bucher.example"),
        ("x@ｅxample.net", "@example.net"),  # fullwidth letter
        ("x@sub.bücher.example", "@bücher.example"),
    ],
)
def test_lookalike_unicode_spellings_are_refused(sender: str, binding: str) -> None:
    assert envelope(sender, allowed=[binding]) == "553 5.7.1"


def test_the_refusal_names_the_logged_in_user() -> None:
    with pytest.raises(Refusal) as raised:
        policy.check_sender(ALICE, "ceo@example.org", [])

    assert render(raised.value).line == "553 5.7.1 Sender address not allowed for alice@example.org"


# --- From: header --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "From: alice@example.org",
        "From: Alice <alice@example.org>",
        "From: ALICE@EXAMPLE.ORG",
        'From: "ceo@bank.test" <alice@example.org>',  # judged on the address, not the name
        "From: alice@example.org (eve@evil.test)",
        "From: J. Smith <alice@example.org>",
        "From: =?utf-8?q?J=C3=B6rg?= <joerg@example.net>",
        "From: =?utf-8?q?ceo=40bank.test?= <alice@example.org>",
        "From: alice@example.org, anyone@example.net",
        "From: Team: alice@example.org, sales@example.com;",
        "From: Alice\r\n <alice@example.org>",
        'From: "alice"@example.org',  # a quoted atom is that atom: alice's own address
        "From: Jörg <ÄLICE@BÜCHER.example>",
    ],
)
def test_allowed_from_headers_pass(line: str) -> None:
    assert header(line) is None


def test_a_message_without_from_claims_nobody_and_passes() -> None:
    assert header("To: bob@example.net") is None
    assert from_addresses(b"\r\nFrom: eve@evil.test\r\n") == [], "that From: is in the body"


@pytest.mark.parametrize(
    "line",
    [
        # display-name tricks: the real address is eve's
        'From: "alice@example.org" <eve@evil.test>',
        "From: alice@example.org <eve@evil.test>",
        "From: =?utf-8?q?alice=40example.org?= <eve@evil.test>",
        "From: =?utf-8?b?YWxpY2VAZXhhbXBsZS5vcmc=?= <eve@evil.test>",
        "From: (alice@example.org) eve@evil.test",
        "From: eve@evil.test (alice@example.org)",
        "From: <alice@example.org> <eve@evil.test>",
        "From: alice@example.org eve@evil.test",
        "From: alice@example.org;eve@evil.test",
        # several addresses, groups
        "From: alice@example.org, eve@evil.test",
        "From: Team: alice@example.org, eve@evil.test;",
        "From: undisclosed-recipients:;",
        # no address at all
        "From: ",
        "From: alice",
        "From: <>",
        # address forms
        "From: bob@example.org",
        "From: x@sub.example.net",
        'From: "alice@example.org"@evil.test',
        'From: "x y"@example.net',
        "From: <@evil.test:alice@example.org>",
        "From: @evil.test:alice@example.org",
        "From: alice%evil.test@example.org",
        "From: x%evil.test@example.net",
        "From: alice@example.org.",
        "From: alice@[127.0.0.1]",
        "From: älice@bücher.example.",
        "From: x@straße.example",
        # encoded-words inside the address: Python decodes them, MTAs do not
        "From: =?utf-8?q?alice?= @example.org",
        "From: <=?utf-8?q?alice?=@example.org>",
        "From: alice@=?utf-8?q?example.org?=",
        "From: =?utf-8?b?YWxpY2VAZXhhbXBsZS5vcmc=?=",
        # broken syntax that readers may resolve differently
        'From: "x" <alice@example.org',
    ],
)
def test_forged_or_unreadable_from_headers_are_refused(line: str) -> None:
    assert header(line) == "550 5.7.1"


@pytest.mark.parametrize(
    "lines",
    [
        ("From: alice@example.org", "From: eve@evil.test"),
        ("From: eve@evil.test", "From: alice@example.org"),
        ("From: alice@example.org", "FROM: eve@evil.test"),
        ("From: alice@example.org", "from:eve@evil.test"),
        # blanks before the colon: Python skips the field, others read it as From:
        ("From : eve@evil.test", "From: alice@example.org"),
        ("From: alice@example.org", "From\t: eve@evil.test"),
        # a line that ends Python's header parsing early hides what follows
        ("Subject: hi", "not a header line", "From: eve@evil.test"),
        ("From: alice@example.org", "not a header line", "From: eve@evil.test"),
    ],
)
def test_every_from_header_counts(lines: tuple[str, ...]) -> None:
    assert header(*lines) == "550 5.7.1"


def test_two_allowed_from_headers_pass() -> None:
    assert header("From: alice@example.org", "From: sales@example.com") is None


def test_8bit_from_is_read_as_utf8() -> None:
    assert header("From: Jörg <jörg@bücher.example>".encode(), allowed=["@bücher.example"]) is None
    assert header(b"From: J\xf6rg <alice@example.org>") is None, "only the name is not UTF-8"
    assert header(b"From: <alice@b\xfccher.example>", allowed=["@b\xfccher.example"]) == (
        "550 5.7.1"
    )


def test_from_addresses_are_the_real_addresses() -> None:
    content = (
        b'From: "alice@example.org" <eve@evil.test>, Team: bob@example.org;\r\n'
        b"From: =?utf-8?q?J=C3=B6rg?= <J\xc3\xb6rg@B\xc3\x9cCHER.example>\r\n\r\n"
    )
    assert from_addresses(content) == ["eve@evil.test", "bob@example.org", "Jörg@BÜCHER.example"]


# --- patterns ------------------------------------------------------------------------------------


def test_patterns_are_stored_in_their_comparison_form() -> None:
    assert normalise_pattern(" Sales@Example.COM ") == "sales@example.com"
    assert normalise_pattern("@BÜCHER.Example") == "@bücher.example"
    assert normalise_pattern(unicodedata.normalize("NFD", "@bücher.example")) == "@bücher.example"
    assert normalise_pattern("@STRAẞE.example") == "@strasse.example"
    assert normalise_pattern("@Straße.example") == "@straße.example"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "@",
        "alice",
        "example.org",
        "alice@",
        "@@x.example",
        "alice@@example.org",
        "@x.example.",
        "alice@example.org.",
        "@.example.org",
        "@*.example.org",
        "@[10.0.0.1]",
        "alice@[127.0.0.1]",
        "a%b@x.example",
        "evil.test!alice@example.org",
        "@relay.example:alice@example.org",
        '"alice"@example.org',
        "a b@example.org",
    ],
)
def test_invalid_patterns(text: str) -> None:
    with pytest.raises(InvalidPattern) as raised:
        normalise_pattern(text)

    assert "\n" not in str(raised.value)


def test_fold_keeps_the_letters_idna_keeps() -> None:
    assert fold("ΑΣ") == "ασ"
    assert fold("ας") == "ας"
    assert fold("Straße") == "straße"
    assert fold("STRASSE") == "strasse"


# --- how each login policy treats a password and a certificate ---------------------------


def _cert(policy: str, user: str = "alice@example.org", **kw: bool) -> CertificateUser:
    return CertificateUser(user, "0A", "f" * 64, policy, **kw)


@pytest.mark.parametrize(
    ("auth_policy", "without_cert", "with_own_cert"),
    [
        (PASSWORD, True, True),
        (PASSWORD_OR_CERTIFICATE, True, True),
        (TWO_FACTOR, False, True),
        (CERTIFICATE, False, False),
    ],
)
def test_when_a_correct_password_logs_in(
    auth_policy: str, without_cert: bool, with_own_cert: bool
) -> None:
    login = "alice@example.org"
    assert policy.password_allowed(auth_policy, login, None) is without_cert
    assert policy.password_allowed(auth_policy, login, _cert(auth_policy)) is with_own_cert


@pytest.mark.parametrize("auth_policy", AUTH_POLICIES)
def test_a_certificate_of_another_user_blocks_every_password(auth_policy: str) -> None:
    other = _cert(PASSWORD_OR_CERTIFICATE, "bob@example.org")
    assert policy.password_allowed(auth_policy, "alice@example.org", other) is False


@pytest.mark.parametrize(
    ("auth_policy", "alone"),
    [
        (PASSWORD, False),
        (PASSWORD_OR_CERTIFICATE, True),
        (TWO_FACTOR, False),
        (CERTIFICATE, True),
    ],
)
def test_when_a_certificate_alone_logs_in(auth_policy: str, alone: bool) -> None:
    assert policy.certificate_alone_allowed(auth_policy) is alone
    cert = _cert(auth_policy)
    if alone:
        assert policy.certificate_identity(cert, "EXTERNAL") == Identity(
            cert.user, "EXTERNAL", cert.serial, cert.fingerprint
        )
    else:
        with pytest.raises(AuthFailed):
            policy.certificate_identity(cert, "EXTERNAL")


@pytest.mark.parametrize("auth_policy", [CERTIFICATE, PASSWORD_OR_CERTIFICATE])
def test_a_certificate_from_outside_the_users_networks_logs_in_nobody(auth_policy: str) -> None:
    with pytest.raises(AuthFailed):
        policy.certificate_identity(_cert(auth_policy, source_allowed=False), "EXTERNAL")


def test_new_users_may_use_either_credential() -> None:
    assert DEFAULT_AUTH_POLICY == PASSWORD_OR_CERTIFICATE == "password-or-certificate"
    assert set(AUTH_POLICIES) == {PASSWORD, CERTIFICATE, PASSWORD_OR_CERTIFICATE, TWO_FACTOR}
