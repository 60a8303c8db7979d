"""`ctx.services()`: every command gives its database connections back, on every path.

Counted with SQLAlchemy's own pool events: a pooled connection is closed (the
`close` event) only when the engine is disposed, so a command that forgets to
dispose leaves connections opened and never closed. Run in-process (CliRunner)
so the events are seen; the other CLI tests run the console script.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import event
from sqlalchemy.pool import Pool

from submitgw.cli import commands
from submitgw.cli.services import ONE_LINE_ERRORS, open_services
from submitgw.config import load
from submitgw.store import (
    CertificateNotFound,
    MigrationRequired,
    RuleNotFound,
    UserExists,
    UserNotFound,
)

ALICE = "alice@example.org"
PASSWORD = "tawny owl at dusk"


class Connections:
    """DBAPI connections the pools opened and closed since `reset`."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0

    def on_connect(self, *_args: object) -> None:
        self.opened += 1

    def on_close(self, *_args: object) -> None:
        self.closed += 1

    def reset(self) -> None:
        self.opened = self.closed = 0


@pytest.fixture
def connections() -> Iterator[Connections]:
    counted = Connections()
    event.listen(Pool, "connect", counted.on_connect)
    event.listen(Pool, "close", counted.on_close)
    try:
        yield counted
    finally:
        event.remove(Pool, "connect", counted.on_connect)
        event.remove(Pool, "close", counted.on_close)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("services") / "gw"
    result = CliRunner().invoke(commands(), ["init", "--dir", str(folder), "--hostname", "gw.test"])
    assert result.exit_code == 0, result.output
    config = folder / "submitgw.toml"
    text = config.read_text()
    for slow, cheap in (
        ("argon2_time_cost = 3", "argon2_time_cost = 1"),
        ("argon2_memory_kib = 65536", "argon2_memory_kib = 8192"),
        ("argon2_parallelism = 4", "argon2_parallelism = 1"),
    ):
        text = text.replace(slow, cheap)
    config.write_text(text)
    added = run(config, "user", "add", ALICE, "--password-stdin", input=PASSWORD)
    assert added.exit_code == 0, added.output
    return config


def run(config: Path, *args: str, input: str | None = None) -> click.testing.Result:
    return CliRunner().invoke(commands(), ["--config", str(config), *args], input=input)


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (("user", "list"), 0),
        (("user", "list", "--json"), 0),
        (("user", "history", ALICE), 0),
        (("user", "limits", ALICE), 0),
        (("user", "sender", "list", ALICE), 0),
        (("user", "app-password", "list", ALICE), 0),
        (("access", "list"), 0),
        (("pki", "list"), 0),
        (("db", "status"), 0),
        (("user", "delete", "nobody@example.org"), 1),
        (("user", "sender", "remove", ALICE, "@example.net"), 1),
        (("access", "remove", "99"), 1),
        (("pki", "show", "1A"), 1),
    ],
)
def test_every_command_closes_the_connections_it_opened(
    setup: Path, connections: Connections, args: tuple[str, ...], status: int
) -> None:
    result = run(setup, *args)

    assert result.exit_code == status, result.output
    assert connections.opened >= 1
    assert connections.closed == connections.opened


def test_a_database_behind_the_code_is_refused_and_still_disposed(
    tmp_path: Path, setup: Path, connections: Connections
) -> None:
    config = tmp_path / "submitgw.toml"
    config.write_text(
        setup.read_text().replace('url = "sqlite:///submitgw.db"', 'url = "sqlite:///empty.db"')
    )
    assert load(config).database.url.endswith("empty.db")

    result = run(config, "user", "list")

    assert result.exit_code == 1
    assert "database is not initialised" in result.output
    assert connections.closed == connections.opened >= 1


@pytest.mark.parametrize(
    "error",
    [
        UserNotFound(ALICE),
        UserExists(ALICE),
        CertificateNotFound("1A"),
        RuleNotFound(7),
        MigrationRequired("run 'submitgw db upgrade'"),
    ],
)
def test_store_refusals_become_one_line_errors(
    setup: Path, connections: Connections, error: Exception
) -> None:
    assert isinstance(error, ONE_LINE_ERRORS)
    cfg = load(setup)

    with pytest.raises(click.ClickException) as raised, open_services(cfg.database.url, cfg):
        raise error

    assert raised.value.message == str(error)
    assert "\n" not in raised.value.message
    assert connections.closed == connections.opened


def test_other_errors_pass_through_and_the_engine_still_goes(
    setup: Path, connections: Connections
) -> None:
    cfg = load(setup)

    with pytest.raises(KeyError), open_services(cfg.database.url, cfg) as services:
        services.users.list()
        raise KeyError("not a refusal")

    assert connections.closed == connections.opened >= 1


def test_init_closes_the_connections_of_its_migration(
    tmp_path: Path, connections: Connections
) -> None:
    result = CliRunner().invoke(
        commands(), ["init", "--dir", str(tmp_path / "gw"), "--hostname", "gw.test"]
    )

    assert result.exit_code == 0, result.output
    assert connections.closed == connections.opened >= 1
