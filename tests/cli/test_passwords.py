"""The password lifecycle from the command line: real processes on a real setup folder.

Rules proven here: `user add` and `user passwd` refuse every password the policy
refuses, with one line naming the rule, and change nothing then; the last five
passwords cannot come back but the sixth-oldest can; `--expire` forces a change
without setting a password; an app password is printed once, alone on the last
line, stored only as a hash and revocable on its own; every change the CLI makes
leaves a trail entry naming the admin's login and host, and a refused one none.
"""

from __future__ import annotations

import getpass
import json
import re
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import argon2
import pytest
from zxcvbn.frequency_lists import FREQUENCY_LISTS

from submitgw import config as config_mod
from submitgw.store import CredentialStore, Database, UserRecord, UserStore
from tests.cli.test_cli import CHEAP_AUTH, GOOD_PASSWORD, edit, ok, one_line_error, submitgw

ALICE = "alice@example.org"
NEWCOMER = "frederick@example.org"
APP_LINE = re.compile(r"[a-z2-9]{4}(-[a-z2-9]{4}){4}")
ACTOR = f"admin:{getpass.getuser()}"
SOURCE = f"cli on {socket.gethostname()}"
# Five passwords that pass every rule, oldest first after GOOD_PASSWORD.
LATER = [
    "second walk by the river",
    "third walk by the river",
    "fourth walk by the river",
    "fifth walk by the river",
    "sixth walk by the river",
]


def common_password() -> str:
    """The packaged list's most frequent entry long enough for the length rule."""
    return next(p for p in FREQUENCY_LISTS["passwords"] if len(p) >= 12)


# (case id, password for a user with local part LOCAL, expected message)
RULES: list[tuple[str, Callable[[str], str], str]] = [
    ("too-short", lambda local: "owl at dusk", "at least 12 characters long"),
    ("too-long", lambda local: "o" * 1025, "at most 1024 characters long"),
    ("local-part", lambda local: f"an owl named {local}", "must not contain your user name"),
    (
        "local-part-any-case",
        lambda local: f"AN OWL NAMED {local.upper()}",
        "must not contain your user name",
    ),
    ("common", lambda local: common_password(), "commonly used password"),
    ("decorated-common", lambda local: "Password123456!", "commonly used password"),
    ("control-character", lambda local: "tawny owl\tat dusk", "must not contain control"),
]
RULE_PARAMS = [pytest.param(make, message, id=name) for name, make, message in RULES]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A setup with cheap argon2 and alice (GOOD_PASSWORD), copied for each test."""
    folder = tmp_path_factory.mktemp("passwords-template") / "gw"
    ok(submitgw("init", "--dir", str(folder), "--hostname", "gw.test"))
    edit(folder / "submitgw.toml", CHEAP_AUTH)
    ok(add(folder / "submitgw.toml", ALICE, GOOD_PASSWORD))
    return folder


@pytest.fixture
def setup(template: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "gw"
    shutil.copytree(template, folder)
    return folder


@pytest.fixture
def config(setup: Path) -> Path:
    return setup / "submitgw.toml"


def cli(config: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return submitgw("--config", str(config), *args, input=input)


def add(config: Path, email: str, password: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return cli(config, "user", "add", email, "--password-stdin", *flags, input=password + "\n")


def passwd(config: Path, email: str, password: str) -> subprocess.CompletedProcess[str]:
    return cli(config, "user", "passwd", email, "--password-stdin", input=password + "\n")


def rule_error(result: subprocess.CompletedProcess[str], message: str) -> None:
    """Refused by the policy: exit 1 and one line, the rule's own sentence."""
    line = one_line_error(result)
    assert result.returncode == 1
    assert line.startswith("Error: The password must") or line.startswith("Error: This is")
    assert message in line


class State:
    """Reads the setup's database the way the gateway does."""

    def __init__(self, config: Path) -> None:
        self.db = Database(config_mod.load(config).database.url)
        self.users = UserStore(self.db)
        self.creds = CredentialStore(self.db)

    def __enter__(self) -> State:
        return self

    def __exit__(self, *exc: object) -> None:
        self.db.dispose()

    def user(self, email: str) -> UserRecord:
        record = self.users.get(email)
        assert record is not None
        return record

    def matches(self, email: str, password: str) -> bool:
        try:
            return argon2.PasswordHasher().verify(self.user(email).password_hash, password)
        except argon2.exceptions.VerifyMismatchError:
            return False


def history(config: Path, email: str, *flags: str) -> list[dict[str, str]]:
    return json.loads(ok(cli(config, "user", "history", email, "--json", *flags)))


def actions(config: Path, email: str) -> list[str]:
    """The trail's actions, newest first, read from the database directly."""
    with State(config) as state:
        return [event.action for event in state.creds.events(email)]


def add_app_password(config: Path, label: str, email: str = ALICE) -> tuple[int, str, list[str]]:
    """(id, password, stdout lines) of a new app password."""
    lines = ok(cli(config, "user", "app-password", "add", email, "--label", label)).splitlines()
    found = re.fullmatch(rf"app password (\d+) \({re.escape(label)}\) of {email}, .*", lines[0])
    assert found, lines
    return int(found.group(1)), lines[-1], lines


# --- the policy on `user add` and `user passwd` --------------------------------------------


@pytest.mark.parametrize(("make", "message"), RULE_PARAMS)
def test_user_add_refuses_what_the_policy_refuses(
    config: Path, make: Callable[[str], str], message: str
) -> None:
    password = make("frederick")

    rule_error(add(config, NEWCOMER, password), message)

    with State(config) as state:
        assert state.users.get(NEWCOMER) is None
    assert actions(config, NEWCOMER) == [], "a refused change leaves no trail"


@pytest.mark.parametrize(("make", "message"), RULE_PARAMS)
def test_user_passwd_refuses_what_the_policy_refuses(
    config: Path, make: Callable[[str], str], message: str
) -> None:
    password = make("alice")

    rule_error(passwd(config, ALICE, password), message)

    with State(config) as state:
        assert state.matches(ALICE, GOOD_PASSWORD), "the old password stays"
    assert actions(config, ALICE) == ["user-added"]


@pytest.mark.parametrize("policy", ["password+certificate", "certificate"])
def test_the_policy_applies_whatever_the_auth_policy(config: Path, policy: str) -> None:
    rule_error(add(config, NEWCOMER, "short one", "--auth", policy), "at least 12")


def test_a_certificate_user_without_a_password_needs_no_policy(config: Path) -> None:
    ok(cli(config, "user", "add", NEWCOMER, "--auth", "certificate"))

    assert history(config, NEWCOMER)[0]["detail"] == "auth certificate"


def test_the_minimum_length_follows_the_config(config: Path) -> None:
    edit(config, {"min_length = 12": "min_length = 30"})

    rule_error(add(config, NEWCOMER, GOOD_PASSWORD), "at least 30 characters long")
    ok(add(config, NEWCOMER, "a much longer sentence about a tawny owl"))


def test_each_of_the_last_five_is_refused_and_the_sixth_oldest_accepted(config: Path) -> None:
    for password in LATER[:4]:
        ok(passwd(config, ALICE, password))
    last_five = [GOOD_PASSWORD, *LATER[:4]]

    for old in last_five:
        rule_error(passwd(config, ALICE, old), "must differ from your last 5 passwords")
    with State(config) as state:
        assert state.matches(ALICE, LATER[3])

    ok(passwd(config, ALICE, LATER[4]))
    out = ok(passwd(config, ALICE, GOOD_PASSWORD))

    assert out.strip() == f"password of {ALICE} changed"
    with State(config) as state:
        assert state.matches(ALICE, GOOD_PASSWORD), "six changes ago may come back"
    assert actions(config, ALICE).count("password-changed") == 6


def test_the_history_length_follows_the_config(config: Path) -> None:
    edit(config, {"history = 5": "history = 1"})
    ok(passwd(config, ALICE, LATER[0]))

    rule_error(passwd(config, ALICE, LATER[0]), "must differ from your last 1 passwords")
    ok(passwd(config, ALICE, GOOD_PASSWORD))


# --- passwd --expire -----------------------------------------------------------------------


def test_expire_without_the_site_says_how_to_recover(config: Path) -> None:
    out = ok(cli(config, "user", "passwd", "Alice@example.org", "--expire"))

    assert out.splitlines() == [
        f"password of {ALICE} expired: mail is refused until you set a new one with "
        f"'submitgw user passwd {ALICE}' (the self-service site is off in {config})"
    ]
    with State(config) as state:
        assert state.user(ALICE).password_expired
        assert state.matches(ALICE, GOOD_PASSWORD), "--expire sets no password"
    assert actions(config, ALICE) == ["password-expired", "user-added"]


def test_expire_names_the_site_and_the_app_passwords_that_keep_working(config: Path) -> None:
    edit(config, {'listen = "off"\n# Address users': 'listen = "127.0.0.1:8443"\n# Address users'})
    add_app_password(config, "phone")

    out = ok(cli(config, "user", "passwd", ALICE, "--expire"))

    assert out.splitlines() == [
        f"password of {ALICE} expired: it must be changed at https://gw.test:8443/ "
        f"before mail is accepted (the self-service site per {config})",
        f"its 1 app password(s) keep working: submitgw user app-password list {ALICE}",
    ]


def test_a_new_password_ends_the_expiry(config: Path) -> None:
    ok(cli(config, "user", "passwd", ALICE, "--expire"))

    ok(passwd(config, ALICE, LATER[0]))

    with State(config) as state:
        assert not state.user(ALICE).password_expired


def test_expire_takes_no_password_and_no_unknown_user(config: Path) -> None:
    both = cli(config, "user", "passwd", ALICE, "--expire", "--password-stdin", input="x\n")
    ghost = cli(config, "user", "passwd", "ghost@example.org", "--expire")

    assert "--password-stdin" in one_line_error(both)
    assert one_line_error(ghost) == "Error: no such user: ghost@example.org"
    with State(config) as state:
        assert not state.user(ALICE).password_expired


# --- app passwords -------------------------------------------------------------------------


def test_app_password_add_prints_it_once_alone_on_the_last_line(config: Path, setup: Path) -> None:
    app_id, secret, lines = add_app_password(config, "Thunderbird laptop")

    assert len(lines) == 2
    assert APP_LINE.fullmatch(secret), secret
    assert secret not in lines[0]
    with State(config) as state:
        stored = state.creds.find_app_password(ALICE, secret[:4])
    assert stored is not None
    assert stored.id == app_id
    assert argon2.PasswordHasher().verify(stored.password_hash, secret)
    listed = ok(cli(config, "user", "app-password", "list", ALICE))
    as_json = ok(cli(config, "user", "app-password", "list", ALICE, "--json"))
    trail = ok(cli(config, "user", "history", ALICE))
    for output in (listed, as_json, trail):
        assert secret not in output
        assert secret.replace("-", "") not in output
    database = b"".join(p.read_bytes() for p in setup.glob("submitgw.db*"))
    assert secret.encode() not in database, "only the hash is stored"


def test_each_app_password_is_new(config: Path) -> None:
    first = add_app_password(config, "one")
    second = add_app_password(config, "two")

    assert first[0] != second[0]
    assert first[1] != second[1]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        pytest.param([ALICE, "--label", "  "], "Give the app password a label", id="empty-label"),
        pytest.param([ALICE, "--label", "x" * 101], "at most 100 characters", id="long-label"),
        pytest.param(["ghost@example.org", "--label", "phone"], "no user ghost", id="no-user"),
        pytest.param(["not-an-address", "--label", "phone"], "not a valid email", id="bad-email"),
    ],
)
def test_app_password_add_errors_are_one_line(config: Path, args: list[str], needle: str) -> None:
    line = one_line_error(cli(config, "user", "app-password", "add", *args))

    assert needle in line
    with State(config) as state:
        assert state.creds.app_passwords(ALICE) == []


def test_app_password_add_needs_a_label(config: Path) -> None:
    result = cli(config, "user", "app-password", "add", ALICE)

    assert result.returncode == 2
    assert "--label" in result.stderr


def test_app_password_list_text_and_json(config: Path) -> None:
    laptop, _, _ = add_app_password(config, "Thunderbird laptop")
    phone, _, _ = add_app_password(config, "Phone")
    with State(config) as state:
        state.creds.app_password_used(phone)

    lines = ok(cli(config, "user", "app-password", "list", ALICE)).splitlines()
    rows = json.loads(ok(cli(config, "user", "app-password", "list", ALICE, "--json")))

    assert [line.split("\t")[:2] for line in lines] == [
        [str(laptop), "Thunderbird laptop"],
        [str(phone), "Phone"],
    ]
    assert re.fullmatch(
        rf"{laptop}\tThunderbird laptop\tcreated: \S+\+00:00\tlast used: never", lines[0]
    )
    assert re.fullmatch(rf"{phone}\tPhone\tcreated: \S+\tlast used: \S+\+00:00", lines[1])
    assert [set(row) for row in rows] == [{"id", "label", "created_at", "last_used_at"}] * 2
    assert [(row["id"], row["label"]) for row in rows] == [
        (laptop, "Thunderbird laptop"),
        (phone, "Phone"),
    ]
    assert rows[0]["last_used_at"] is None
    assert rows[1]["last_used_at"] >= rows[1]["created_at"]


def test_app_password_list_of_none_and_of_nobody(config: Path) -> None:
    assert ok(cli(config, "user", "app-password", "list", ALICE)).strip() == (
        f"{ALICE} has no app passwords"
    )
    assert json.loads(ok(cli(config, "user", "app-password", "list", ALICE, "--json"))) == []
    line = one_line_error(cli(config, "user", "app-password", "list", "ghost@example.org"))
    assert line == "Error: no user ghost@example.org"


def test_app_password_revoke(config: Path) -> None:
    laptop, secret, _ = add_app_password(config, "laptop")
    phone, _, _ = add_app_password(config, "phone")

    out = ok(cli(config, "user", "app-password", "revoke", "Alice@Example.org", str(laptop)))

    assert out.strip() == f"app password {laptop} (laptop) of {ALICE} revoked"
    with State(config) as state:
        assert [r.id for r in state.creds.app_passwords(ALICE)] == [phone]
        assert state.creds.find_app_password(ALICE, secret[:4]) is None
    again = one_line_error(cli(config, "user", "app-password", "revoke", ALICE, str(laptop)))
    assert again == f"Error: {ALICE} has no app password {laptop}"


def test_nobody_revokes_another_users_app_password_by_id(config: Path) -> None:
    ok(add(config, NEWCOMER, GOOD_PASSWORD))
    theirs, _, _ = add_app_password(config, "their phone", NEWCOMER)

    line = one_line_error(cli(config, "user", "app-password", "revoke", ALICE, str(theirs)))
    ghost = one_line_error(
        cli(config, "user", "app-password", "revoke", "ghost@example.org", str(theirs))
    )

    assert line == f"Error: {ALICE} has no app password {theirs}"
    assert ghost == "Error: no user ghost@example.org"
    with State(config) as state:
        assert [r.id for r in state.creds.app_passwords(NEWCOMER)] == [theirs]


# --- the account trail ---------------------------------------------------------------------


def test_every_cli_change_is_in_the_trail_with_admin_and_host(config: Path) -> None:
    ok(passwd(config, ALICE, LATER[0]))
    ok(cli(config, "user", "passwd", ALICE, "--expire"))
    app_id, _, _ = add_app_password(config, "Thunderbird laptop")
    ok(cli(config, "user", "app-password", "revoke", ALICE, str(app_id)))
    ok(cli(config, "user", "disable", ALICE))
    ok(cli(config, "user", "enable", ALICE))
    ok(cli(config, "user", "set-auth", ALICE, "password+certificate"))
    ok(cli(config, "user", "delete", ALICE))

    entries = history(config, ALICE)

    assert [(e["action"], e["detail"]) for e in entries] == [
        ("user-deleted", ""),
        ("auth-changed", "auth password+certificate"),
        ("user-enabled", ""),
        ("user-disabled", ""),
        ("app-password-revoked", f"{app_id} Thunderbird laptop"),
        ("app-password-added", f"{app_id} Thunderbird laptop"),
        ("password-expired", ""),
        ("password-changed", ""),
        ("user-added", "auth password-or-certificate"),
    ], "newest first, and kept after the user is deleted"
    assert {(e["actor"], e["source"]) for e in entries} == {(ACTOR, SOURCE)}
    times = [e["at"] for e in entries]
    assert times == sorted(times, reverse=True)
    assert all(t.endswith("+00:00") for t in times)


def test_history_text_format_and_limit(config: Path) -> None:
    ok(passwd(config, ALICE, LATER[0]))
    app_id, _, _ = add_app_password(config, "phone")

    lines = ok(cli(config, "user", "history", "ALICE@example.org")).splitlines()
    limited = json.loads(ok(cli(config, "user", "history", ALICE, "--json", "--limit", "1")))

    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"
    assert len(lines) == 3
    assert re.fullmatch(
        rf"{stamp}\tapp-password-added\t{re.escape(ACTOR)}\t{re.escape(SOURCE)}\t{app_id} phone",
        lines[0],
    )
    assert re.fullmatch(
        rf"{stamp}\tpassword-changed\t{re.escape(ACTOR)}\t{re.escape(SOURCE)}", lines[1]
    )
    assert lines[2].endswith(
        "\tuser-added\t" + ACTOR + "\t" + SOURCE + "\tauth password-or-certificate"
    )
    assert [set(e) for e in limited] == [{"at", "action", "actor", "source", "detail"}]
    assert limited[0]["action"] == "app-password-added"


def test_history_of_an_address_without_changes(config: Path) -> None:
    out = ok(cli(config, "user", "history", "ghost@example.org"))
    bad_limit = cli(config, "user", "history", ALICE, "--limit", "0")

    assert out.strip() == "no account changes recorded for ghost@example.org"
    assert history(config, "ghost@example.org") == []
    assert bad_limit.returncode == 2
    assert "Traceback" not in bad_limit.stderr
