"""What a session in a given state may do next: each gate and cap, without a socket.

Every rule here is also exercised end to end (tests/smtp, tests/gateway); these
tests pin the decision itself, including which refusal comes first when a
command breaks several rules at once.
"""

from __future__ import annotations

import pytest

from submitgw.errors import AuthFailed, Kind, Refusal
from submitgw.rules import session as rules
from submitgw.types import (
    CERTIFICATE,
    PASSWORD,
    PASSWORD_OR_CERTIFICATE,
    TWO_FACTOR,
    CertificateUser,
    Identity,
)

ALICE = Identity("alice@example.org", "PLAIN")
CERT = CertificateUser("carol@example.org", "0A", "f" * 64, CERTIFICATE)


def kind(call: object, *args: object, **kwargs: object) -> Kind | None:
    """The kind `call` refuses with, or None when it lets the step through."""
    assert callable(call)
    try:
        call(*args, **kwargs)
    except Refusal as err:
        return err.kind
    return None


def admit(verb: str, *, tls: bool = True, junk: int = 0, known: bool = True) -> Kind | None:
    return kind(rules.admit_command, verb, known=known, tls=tls, junk=junk, max_junk=3)


# --- which commands may run -----------------------------------------------------------


@pytest.mark.parametrize("verb", ["AUTH", "MAIL", "RCPT", "DATA", "VRFY", "EXPN", "HELP"])
def test_everything_but_greeting_and_starttls_waits_for_tls(verb: str) -> None:
    assert admit(verb, tls=False) is Kind.TLS_REQUIRED
    assert admit(verb, tls=True) is None


@pytest.mark.parametrize("verb", ["EHLO", "HELO", "STARTTLS", "NOOP", "RSET", "QUIT"])
def test_greeting_and_starttls_run_before_tls(verb: str) -> None:
    assert admit(verb, tls=False) is None


def test_unknown_commands_are_refused_before_anything_else() -> None:
    assert admit("XYZZY", tls=False, junk=99, known=False) is Kind.UNKNOWN_COMMAND


def test_junk_commands_are_counted_and_capped() -> None:
    assert rules.admit_command("NOOP", known=True, tls=True, junk=0, max_junk=3) == 1
    assert rules.admit_command("MAIL", known=True, tls=True, junk=2, max_junk=3) == 2
    assert admit("NOOP", junk=2) is None
    assert admit("NOOP", junk=3) is Kind.TOO_MANY_COMMANDS
    assert admit("MAIL", junk=3) is None


def test_junk_before_tls_counts_too() -> None:
    """A client idling on NOOP without ever starting TLS still runs out."""
    assert admit("HELP", tls=False, junk=3) is Kind.TOO_MANY_COMMANDS


def test_the_error_limit() -> None:
    assert kind(rules.check_error_count, 2, 3) is None
    assert kind(rules.check_error_count, 3, 3) is Kind.TOO_MANY_ERRORS


def test_a_stranger_has_the_login_deadline_an_identified_client_the_lifetime() -> None:
    assert rules.time_left(10, deadline=100, login_deadline=30, identified=False) == (
        20,
        Kind.LOGIN_TIMEOUT,
    )
    assert rules.time_left(10, deadline=100, login_deadline=30, identified=True) == (
        90,
        Kind.SESSION_EXPIRED,
    )
    assert rules.time_left(10, deadline=20, login_deadline=30, identified=False) == (
        10,
        Kind.SESSION_EXPIRED,
    )


# --- the command line and the greeting --------------------------------------------------


def test_split_command() -> None:
    split = rules.split_command
    assert split(b"mail FROM:<a@b>\r\n", command_limit=512, auth_limit=1000) == (
        "MAIL",
        "FROM:<a@b>",
    )
    assert split(b"NOOP\r\n", command_limit=512, auth_limit=1000) == ("NOOP", None)
    assert kind(split, b"NOOP\n", command_limit=512, auth_limit=1000) is Kind.BAD_LINE
    assert kind(split, b"NO\x00OP\r\n", command_limit=512, auth_limit=1000) is Kind.BAD_LINE
    assert kind(split, b"HELO \xff\r\n", command_limit=512, auth_limit=1000) is Kind.BAD_UTF8
    long_auth = b"AUTH PLAIN " + b"A" * 600 + b"\r\n"
    assert split(long_auth, command_limit=512, auth_limit=1000)[0] == "AUTH"
    assert kind(split, long_auth, command_limit=512, auth_limit=600) is Kind.LINE_TOO_LONG
    long_noop = b"NOOP " + b"A" * 600 + b"\r\n"
    assert kind(split, long_noop, command_limit=512, auth_limit=1000) is Kind.LINE_TOO_LONG


def test_helo_names() -> None:
    assert rules.helo_name("mx.example.org extra", extended=True) == "mx.example.org"
    assert rules.helo_name("[192.0.2.1]", extended=False) == "[192.0.2.1]"
    assert rules.helo_name("évil.example", extended=True) == "invalid-helo"
    assert rules.helo_name("x" * 300, extended=True) == "x" * 255
    assert rules.helo_name("a;b", extended=True) == "invalid-helo"
    with pytest.raises(Refusal) as raised:
        rules.helo_name(None, extended=False)
    assert raised.value.kind is Kind.SYNTAX and raised.value.params == {"command": "HELO"}


def test_auth_is_offered_only_inside_tls_and_external_only_with_a_certificate() -> None:
    before = rules.extensions(tls=False, certificate=False, max_size=1000)
    assert "STARTTLS" in before and not any(k.startswith("AUTH") for k in before)
    assert "SIZE 1000" in before
    inside = rules.extensions(tls=True, certificate=False, max_size=1000)
    assert inside[-1] == "AUTH PLAIN LOGIN" and "STARTTLS" not in inside
    assert rules.extensions(tls=True, certificate=True, max_size=1)[-1] == (
        "AUTH PLAIN LOGIN EXTERNAL"
    )


def test_starttls_once_and_without_argument() -> None:
    assert kind(rules.check_starttls, None, tls=False) is None
    assert kind(rules.check_starttls, None, tls=True) is Kind.TLS_ACTIVE
    assert kind(rules.check_starttls, "now", tls=False) is Kind.SYNTAX


# --- AUTH -----------------------------------------------------------------------------


def auth(
    arg: str | None,
    *,
    esmtp: bool = True,
    authenticated: bool = False,
    in_transaction: bool = False,
    certificate: bool = False,
) -> Kind | tuple[str, str | None]:
    try:
        return rules.parse_auth(
            arg,
            esmtp=esmtp,
            authenticated=authenticated,
            in_transaction=in_transaction,
            certificate=certificate,
        )
    except Refusal as err:
        return err.kind


def test_auth_order_of_refusals() -> None:
    assert auth("PLAIN", esmtp=False, authenticated=True) is Kind.NEED_EHLO
    assert auth("PLAIN", authenticated=True, in_transaction=True) is Kind.ALREADY_AUTHENTICATED
    assert auth("PLAIN", in_transaction=True) is Kind.AUTH_IN_TRANSACTION
    assert auth(None) is Kind.SYNTAX
    assert auth("PLAIN a b") is Kind.SYNTAX
    assert auth("CRAM-MD5") is Kind.UNKNOWN_MECHANISM


def test_auth_mechanisms() -> None:
    assert auth("plain AGFAYgBj") == ("PLAIN", "AGFAYgBj")
    assert auth("LOGIN") == ("LOGIN", None)
    assert auth("EXTERNAL") is Kind.UNKNOWN_MECHANISM
    assert auth("EXTERNAL =", certificate=True) == ("EXTERNAL", "=")


def test_external_logs_in_the_certificate_user_only() -> None:
    assert rules.external_identity(CERT, b"") == Identity(
        CERT.user, "EXTERNAL", CERT.serial, CERT.fingerprint
    )
    assert rules.external_identity(CERT, b" Carol@Example.org ").user == CERT.user
    with pytest.raises(AuthFailed):
        rules.external_identity(CERT, b"alice@example.org")
    with pytest.raises(AuthFailed):
        rules.external_identity(CertificateUser("d@example.org", "1", "e", PASSWORD), b"")


# --- when a certificate alone logs in -------------------------------------------------


@pytest.mark.parametrize(
    ("cert", "listener_allows"),
    [
        (None, True),
        (CERT, False),
        (CertificateUser("d@example.org", "1", "e", PASSWORD), True),
        (CertificateUser("d@example.org", "1", "e", TWO_FACTOR), True),
        (CertificateUser("d@example.org", "1", "e", CERTIFICATE, source_allowed=False), True),
        (
            CertificateUser(
                "d@example.org", "1", "e", PASSWORD_OR_CERTIFICATE, source_allowed=False
            ),
            True,
        ),
    ],
)
def test_certificate_alone_logs_in_nobody(
    cert: CertificateUser | None, listener_allows: bool
) -> None:
    assert rules.certificate_login(cert, listener_allows=listener_allows) is None


@pytest.mark.parametrize("auth_policy", [CERTIFICATE, PASSWORD_OR_CERTIFICATE])
def test_certificate_alone_logs_in_a_user_whose_policy_takes_it(auth_policy: str) -> None:
    cert = CertificateUser(CERT.user, CERT.serial, CERT.fingerprint, auth_policy)
    identity = rules.certificate_login(cert, listener_allows=True)
    assert identity == Identity(CERT.user, "CERTIFICATE", CERT.serial, CERT.fingerprint)


# --- MAIL, RCPT, DATA -----------------------------------------------------------------


def mail(
    identity: Identity | None,
    *,
    greeted: bool = True,
    cert: CertificateUser | None = None,
    allows: bool = True,
) -> Kind | Identity:
    try:
        return rules.mail_identity(
            identity, greeted=greeted, cert=cert, certificate_without_auth=allows
        )
    except Refusal as err:
        return err.kind


def test_mail_before_auth_is_refused() -> None:
    assert mail(None) is Kind.AUTH_REQUIRED
    assert mail(None, cert=CERT, allows=False) is Kind.AUTH_REQUIRED


def test_mail_before_ehlo_is_refused_even_when_logged_in() -> None:
    assert mail(ALICE, greeted=False) is Kind.NEED_EHLO
    assert mail(None, greeted=False, cert=CERT) is Kind.NEED_EHLO


def test_mail_sends_as_the_logged_in_user_or_the_certificate_user() -> None:
    assert mail(ALICE) is ALICE
    assert mail(ALICE, cert=CERT) is ALICE
    certified = mail(None, cert=CERT)
    assert isinstance(certified, Identity) and certified.mechanism == "CERTIFICATE"


def test_one_transaction_at_a_time_and_the_message_cap() -> None:
    check = rules.check_new_transaction
    assert kind(check, in_transaction=False, messages=2, max_messages=3) is None
    assert kind(check, in_transaction=True, messages=0, max_messages=3) is Kind.NESTED_MAIL
    assert kind(check, in_transaction=False, messages=3, max_messages=3) is (Kind.TOO_MANY_MESSAGES)


def test_rcpt_needs_mail_and_the_recipient_cap() -> None:
    check = rules.check_recipient
    assert kind(check, in_transaction=False, recipients=0, max_recipients=2) is Kind.NEED_MAIL
    assert kind(check, in_transaction=True, recipients=1, max_recipients=2) is None
    assert kind(check, in_transaction=True, recipients=2, max_recipients=2) is (
        Kind.TOO_MANY_RECIPIENTS
    )


def test_data_needs_mail_and_a_recipient_and_no_argument() -> None:
    check = rules.check_data
    assert kind(check, None, in_transaction=False, recipients=0) is Kind.NEED_MAIL
    assert kind(check, None, in_transaction=True, recipients=0) is Kind.NEED_RCPT
    assert kind(check, "x", in_transaction=True, recipients=1) is Kind.SYNTAX
    assert kind(check, None, in_transaction=True, recipients=1) is None
