"""The table of SMTP wording: every kind has a reply, and every reply is a well-formed line."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from submitgw.errors import (
    AddressFlaw,
    AuthFailed,
    FromFlaw,
    Kind,
    LoginLocked,
    Need,
    PasswordExpired,
    Refusal,
    Unavailable,
)
from submitgw.smtp import replies
from submitgw.smtp.replies import render
from submitgw.types import CertificateFlaw

NOW = 1_800_000_000.0
DAY = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
CERTIFICATE_KINDS = (Kind.CERTIFICATE_REFUSED, Kind.CERTIFICATE_REQUIRED, Kind.AUTH_REQUIRED)
STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")
COMMON = {
    "word": "X-FOO=",
    "name": "FOO",
    "user": "alice@example.org",
    "limit": 10,
    "hostname": "gw.example.org",
    "text": "Go away",
}


def examples() -> Iterator[Refusal]:
    """At least one refusal of every kind, with every variant its parameters select."""
    special = {
        Kind.SYNTAX,
        Kind.NEED_BRACKETS,
        Kind.BAD_SENDER,
        Kind.BAD_RECIPIENT,
        Kind.FROM_UNREADABLE,
        Kind.UNAVAILABLE,
        Kind.LIMIT_REACHED,
        Kind.LOGIN_LOCKED,
        Kind.PASSWORD_EXPIRED,
        Kind.UPSTREAM_REFUSED,
        Kind.CERTIFICATE_REFUSED,
    }
    for kind in Kind:
        if kind not in special:
            yield Refusal(kind, **COMMON)
    for command in replies.USAGE:
        yield Refusal(Kind.SYNTAX, command=command)
    for command in replies.PATH_COMMAND:
        yield Refusal(Kind.NEED_BRACKETS, command=command)
    for address_flaw in AddressFlaw:
        yield Refusal(Kind.BAD_SENDER, flaw=address_flaw)
        yield Refusal(Kind.BAD_RECIPIENT, flaw=address_flaw)
    for from_flaw in FromFlaw:
        yield Refusal(Kind.FROM_UNREADABLE, flaw=from_flaw, limit=50)
    for what in Need:
        yield Unavailable(what)
    for measure in ("messages", "recipients"):
        for resets in (None, int(NOW) + 60):
            yield Refusal(
                Kind.LIMIT_REACHED,
                measure=measure,
                who="alice@example.org",
                limit=5,
                window=3600,
                resets=resets,
                now=NOW,
            )
    for certificate_flaw in CertificateFlaw:
        for kind in CERTIFICATE_KINDS:
            yield Refusal(kind, flaw=certificate_flaw, date=None)
            yield Refusal(kind, flaw=certificate_flaw, date=DAY)
    yield LoginLocked(NOW)
    yield PasswordExpired(None)
    yield PasswordExpired("https://gw.example.org/")
    yield Refusal(Kind.UPSTREAM_REFUSED, code=550, status="5.1.1", text="No such user")
    yield Refusal(Kind.UPSTREAM_REFUSED, code=451, status="4.3.0", text="Try later")


EXAMPLES = list(examples())


def test_every_kind_has_an_example_and_a_wording() -> None:
    """A new kind without wording would reach the client as an internal error."""
    assert {r.kind for r in EXAMPLES} == set(Kind)
    assert set(replies.WORDING) == set(Kind) - {Kind.UNAVAILABLE, Kind.UPSTREAM_REFUSED}
    assert set(replies.UNAVAILABLE) == set(Need)
    assert set(replies.ADDRESS_FLAWS) == set(AddressFlaw)
    assert set(replies.FROM_FLAWS) == set(FromFlaw)
    assert set(replies.CERTIFICATE_FLAWS) == set(CertificateFlaw)


@pytest.mark.parametrize("refusal", EXAMPLES, ids=repr)
def test_every_reply_is_a_valid_refusal_line(refusal: Refusal) -> None:
    reply = render(refusal)
    assert 400 <= reply.code <= 599, "a refusal is never a success"
    found = STATUS.fullmatch(reply.status)
    assert found is not None, reply.status
    # RFC 3463: the enhanced code's class is the reply code's class.
    assert found.group(1) == str(reply.code)[0]
    assert reply.temporary == (found.group(1) == "4")
    assert reply.text and reply.text.isascii() and reply.text.isprintable()
    assert reply.line == f"{reply.code} {reply.status} {reply.text}"
    assert "\r" not in reply.line and "\n" not in reply.line


@pytest.mark.parametrize("refusal", EXAMPLES, ids=repr)
def test_only_our_own_421_ends_the_session(refusal: Refusal) -> None:
    reply = render(refusal)
    assert reply.close == (reply.code == 421 and refusal.kind is not Kind.UPSTREAM_REFUSED)


def test_a_smarthost_421_is_passed_on_without_closing_our_session() -> None:
    reply = render(Refusal(Kind.UPSTREAM_REFUSED, code=421, status="4.3.2", text="Bye"))
    assert reply.line == "421 4.3.2 Bye" and not reply.close


def _certificate(kind: Kind, flaw: CertificateFlaw, date: datetime | None = None) -> Refusal:
    return Refusal(kind, flaw=flaw, date=date)


REFUSED, REQUIRED = Kind.CERTIFICATE_REFUSED, Kind.CERTIFICATE_REQUIRED
# Every certificate reply, as the README lists them.
CERTIFICATE_WORDING = [
    (
        _certificate(REFUSED, CertificateFlaw.NOT_OURS),
        "535 5.7.8 Certificate not issued by this gateway",
    ),
    (
        _certificate(REFUSED, CertificateFlaw.NOT_YET_VALID, DAY),
        "535 5.7.8 Certificate not valid before 2026-01-02 03:04 UTC",
    ),
    (
        _certificate(REFUSED, CertificateFlaw.EXPIRED, DAY),
        "535 5.7.8 Certificate expired on 2026-01-02",
    ),
    (
        _certificate(REFUSED, CertificateFlaw.CA_CERTIFICATE),
        "535 5.7.8 Certificate is a CA certificate",
    ),
    (
        _certificate(REFUSED, CertificateFlaw.NOT_CLIENT_AUTH),
        "535 5.7.8 Certificate not for client authentication",
    ),
    (_certificate(REFUSED, CertificateFlaw.NO_MAILBOX), "535 5.7.8 Certificate names no mailbox"),
    (
        _certificate(REFUSED, CertificateFlaw.NOT_IN_INVENTORY),
        "535 5.7.8 Certificate not known to this gateway",
    ),
    (
        _certificate(REFUSED, CertificateFlaw.REVOKED, DAY),
        "535 5.7.8 Certificate revoked on 2026-01-02",
    ),
    (_certificate(REFUSED, CertificateFlaw.REVOKED), "535 5.7.8 Certificate revoked"),
    # The account's state is not the certificate holder's to learn.
    (
        _certificate(REFUSED, CertificateFlaw.USER_DISABLED),
        "535 5.7.8 Certificate not valid for this gateway",
    ),
    (
        _certificate(REFUSED, CertificateFlaw.OUTSIDE_NETWORKS),
        "535 5.7.8 Certificate not valid for this gateway",
    ),
    (Refusal(REQUIRED), "530 5.7.0 Client certificate required"),
    (
        _certificate(REQUIRED, CertificateFlaw.EXPIRED, DAY),
        "530 5.7.0 Client certificate required; certificate expired on 2026-01-02",
    ),
    (Refusal(Kind.AUTH_REQUIRED), "530 5.7.0 Authentication required"),
    (
        _certificate(Kind.AUTH_REQUIRED, CertificateFlaw.REVOKED),
        "530 5.7.0 Authentication required; certificate revoked",
    ),
]


@pytest.mark.parametrize(
    ("refusal", "line"),
    [
        (AuthFailed(), "535 5.7.8 Authentication credentials invalid"),
        (
            PasswordExpired("https://gw.example.org/"),
            "535 5.7.8 Password expired, change it at https://gw.example.org/",
        ),
        (
            PasswordExpired(None),
            "535 5.7.8 Password expired, ask your administrator for a new one",
        ),
        (
            Refusal(Kind.BAD_SENDER, flaw=AddressFlaw.ROUTING),
            "553 5.1.7 Address not accepted: routing characters (% and !) are not accepted",
        ),
        (
            Refusal(Kind.BAD_RECIPIENT, flaw=AddressFlaw.EMPTY),
            "553 5.1.3 Address not accepted: empty recipient",
        ),
        (Refusal(Kind.BAD_PARAMETER, word="X" * 50), f"501 5.5.4 Invalid parameter {'X' * 40!r}"),
        (
            Refusal(Kind.SYNTAX, command="MAIL"),
            "501 5.5.4 Syntax: MAIL FROM: <address> [parameters]",
        ),
        (
            Refusal(Kind.FROM_UNREADABLE, flaw=FromFlaw.TOO_MANY, limit=50),
            "550 5.7.1 From: header has too many addresses; the limit is 50",
        ),
        (
            Refusal(Kind.SENDER_NOT_ALLOWED, user="jösé@example.org"),
            "553 5.7.1 Sender address not allowed for this user",
        ),
        (
            Refusal(Kind.IDLE_TIMEOUT, hostname="gw.example.org"),
            "421 4.4.2 gw.example.org Idle timeout, closing connection",
        ),
        (Unavailable(Need.ACCESS_RULES), "421 4.3.0 Temporary failure, try again later"),
        (Unavailable(Need.LOGIN), "454 4.7.0 Temporary authentication failure, try again later"),
        (
            Unavailable(Need.LIMITS),
            "451 4.3.0 Cannot check sending limits now, try again later",
        ),
        (Refusal(Kind.ACCESS_DENIED, text=""), "554 5.7.1 Access denied"),
        (
            LoginLocked(NOW),
            "454 4.7.0 Too many failed logins, try again after 2027-01-15 08:00:00 UTC",
        ),
        *CERTIFICATE_WORDING,
    ],
)
def test_wording_clients_rely_on(refusal: Refusal, line: str) -> None:
    assert render(refusal).line == line


def test_limit_reply_names_the_limit_and_when_it_frees_up() -> None:
    refusal = Refusal(
        Kind.LIMIT_REACHED,
        measure="messages",
        who="alice@example.org",
        limit=200,
        window=3600,
        resets=int(NOW) + 754,
        now=NOW,
    )
    assert render(refusal).line == (
        "450 4.7.1 Message limit reached for alice@example.org: 200 messages per hour; "
        "resets at 2027-01-15 08:12:34 UTC (in 754 s)"
    )


def test_the_readme_lists_every_certificate_reply() -> None:
    """Operators read the replies (and the log's reason codes) there, as clients get them."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    day = datetime(2026, 1, 2, 10, 0, tzinfo=UTC)
    for flaw in set(CertificateFlaw) - {CertificateFlaw.UNCHECKED}:
        reply = render(Refusal(Kind.CERTIFICATE_REFUSED, flaw=flaw, date=day)).line
        assert f"| `{reply}` | `{flaw.value}` |" in readme, reply
    assert "`unchecked`" in readme
