"""Numbers on the command line: every numeric option has a range, nothing ends in a traceback.

Rules proven here: a number beyond what the database, the calendar or an admin
could mean is refused by the option itself (click's usage error, exit status 2)
and changes nothing; the largest accepted value works; a failure no command
foresaw (here: a database that cannot be opened) is one `Error:` line, status 1.
Run in-process through click's CliRunner, so an escaping exception is seen as such.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import pki
from submitgw import config as config_mod
from submitgw.cli import commands
from submitgw.cli.context import COUNT_MAX, ID_MAX
from submitgw.store import AccessRuleStore, CredentialStore, Database
from submitgw.store.counters import CounterStore
from tests.cli.test_cli import CHEAP_AUTH, GOOD_PASSWORD, edit

ALICE = "alice@example.org"
HUGE = "9" * 25


def run(config: Path | None, *args: str, input: str | None = None) -> Result:
    prefix = ["--config", str(config)] if config is not None else []
    return CliRunner().invoke(commands(), [*prefix, *args], input=input)


def refused_value(result: Result, option: str) -> None:
    """A usage error naming the option: status 2, no exception but the exit."""
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.stderr
    assert "Traceback" not in result.output


def one_line_error(result: Result) -> str:
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ranges") / "gw"
    assert run(None, "init", "--dir", str(folder), "--hostname", "gw.test").exit_code == 0
    edit(folder / "submitgw.toml", CHEAP_AUTH)
    added = run(
        folder / "submitgw.toml", "user", "add", ALICE, "--password-stdin", input=GOOD_PASSWORD
    )
    assert added.exit_code == 0, added.output
    return folder


@pytest.fixture
def setup(template: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "gw"
    shutil.copytree(template, folder)
    return folder


@pytest.fixture
def config(setup: Path) -> Path:
    return setup / "submitgw.toml"


def database(config: Path) -> Database:
    return Database(config_mod.load(config).database.url)


OUT_OF_RANGE: list[tuple[Sequence[str], str]] = [
    (("user", "set-limit", ALICE, "--messages-per-hour", HUGE), "--messages-per-hour"),
    (
        ("user", "set-limit", ALICE, "--recipients-per-hour", str(COUNT_MAX + 1)),
        "--recipients-per-hour",
    ),
    (("user", "set-limit", ALICE, "--messages-per-hour", "\u00b9\u00b2"), "--messages-per-hour"),
    (("user", "app-password", "revoke", ALICE, HUGE), "ID"),
    (("user", "app-password", "revoke", ALICE, str(ID_MAX + 1)), "ID"),
    (("user", "app-password", "revoke", ALICE, "0"), "ID"),
    (("user", "history", ALICE, "--limit", HUGE), "--limit"),
    (("access", "remove", HUGE), "ID"),
    (("access", "remove", str(ID_MAX + 1)), "ID"),
    (("pki", "issue", ALICE, "--days", "99999999"), "--days"),
    (("pki", "issue", ALICE, "--days", str(pki.MAX_DAYS + 1)), "--days"),
    (("pki", "server-cert", "gw.test", "--days", "99999999"), "--days"),
    (("pki", "crl", "--next-update-days", HUGE), "--next-update-days"),
    (("pki", "crl", "--next-update-days", "99999999"), "--next-update-days"),
]


@pytest.mark.parametrize(
    ("args", "option"), OUT_OF_RANGE, ids=[" ".join(a[:3]) + f" {o}" for a, o in OUT_OF_RANGE]
)
def test_out_of_range_numbers_are_refused_by_the_option(
    config: Path, tmp_path: Path, args: Sequence[str], option: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    extra = ["--out", str(out)] if args[0] == "pki" and args[1] != "crl" else []

    refused_value(run(config, *args, *extra), option)

    assert list(out.iterdir()) == []
    db = database(config)
    try:
        assert CounterStore(db).override(ALICE) is None
    finally:
        db.dispose()


def test_largest_values_are_accepted(config: Path, tmp_path: Path) -> None:
    limit = run(config, "user", "set-limit", ALICE, "--messages-per-hour", str(COUNT_MAX))
    history = run(config, "user", "history", ALICE, "--limit", "1000000")
    rule = run(config, "access", "remove", str(ID_MAX))
    app = run(config, "user", "app-password", "revoke", ALICE, str(ID_MAX))
    crl = run(config, "pki", "crl", "--next-update-days", str(pki.MAX_DAYS))
    out = tmp_path / "out"
    out.mkdir()
    issued = run(
        config,
        "pki",
        "issue",
        ALICE,
        "--days",
        str(pki.MAX_DAYS),
        "--out",
        str(out),
    )

    assert limit.exit_code == 0, limit.output
    assert f"{ALICE} messages: {COUNT_MAX} per hour" in limit.output
    assert history.exit_code == 0, history.output
    assert one_line_error(rule) == f"Error: no access rule #{ID_MAX}"
    assert one_line_error(app) == f"Error: {ALICE} has no app password {ID_MAX}"
    assert crl.exit_code == 0 and "BEGIN X509 CRL" in crl.output
    assert issued.exit_code == 0, issued.output
    cert = pki.load_certificate(out / f"{ALICE}.crt")
    ca = pki.load_certificate(config.parent / "ca/ca.crt")
    assert cert.not_valid_after_utc == ca.not_valid_after_utc
    db = database(config)
    try:
        own = CounterStore(db).override(ALICE)
        assert own is not None and own.messages == COUNT_MAX
        assert AccessRuleStore(db).list() == []
        assert CredentialStore(db).app_passwords(ALICE) == []
    finally:
        db.dispose()


def test_unforeseen_database_failure_is_one_line(setup: Path, config: Path) -> None:
    text = config.read_text()
    edit(config, {'url = "sqlite:///submitgw.db"': 'url = "sqlite:////nonexistent/dir/gw.db"'})
    assert config.read_text() != text

    line = one_line_error(run(config, "user", "list"))

    assert line == "Error: database error: unable to open database file"


def test_pki_refuses_validities_beyond_the_ca_lifetime() -> None:
    ca = pki.CA.create("range test CA")

    with pytest.raises(ValueError, match="1 to 3650 days"):
        ca.issue_server_cert(["gw.test"], days=pki.MAX_DAYS + 1)
    with pytest.raises(ValueError, match="1 to 3650 days"):
        ca.issue_client_cert(ALICE, days=10**9)
    with pytest.raises(ValueError, match="1 to 3650"):
        ca.crl([], next_update_days=10**9)
