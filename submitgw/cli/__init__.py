"""Command line: `submitgw [--config PATH] COMMAND …`.

Each command group lives in its own module; this one only wires them together
and turns the errors every command can meet into one clear line.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from submitgw import config as config_mod
from submitgw.config import Config, ConfigError
from submitgw.store import Database, MigrationRequired


class Context:
    """What every command gets: the config path, loaded on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = config_mod.load(self.path)
            except ConfigError as exc:
                raise click.ClickException(str(exc)) from exc
        return self._config

    def database(self, *, require_current: bool = True) -> Database:
        db = Database(self.config.database.url)
        if require_current:
            try:
                db.check_current()
            except MigrationRequired as exc:
                db.dispose()
                raise click.ClickException(str(exc)) from exc
        return db


pass_context = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    metavar="PATH",
    help="Configuration file (default: $SUBMITGW_CONFIG, then ./submitgw.toml).",
)
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """submitgw: an authenticated SMTP submission gateway."""
    ctx.obj = Context(config_mod.config_path(config_path, dict(os.environ)))


def main() -> None:
    from submitgw.cli import db, init, serve, user

    for module in (init, serve, user, db):
        module.register(cli)
    cli()
