"""Command line: `submitgw [--config PATH] COMMAND …`.

Each command group lives in its own module; this one only wires them together
and turns the errors every command can meet into one clear line.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
from sqlalchemy.exc import SQLAlchemyError

# Names, not `import pki`: loading the submodule submitgw.cli.pki rebinds `pki` here.
from pki import CA, CAError, CAPassphraseRequired
from submitgw import config as config_mod
from submitgw.config import Config, ConfigError
from submitgw.rules.address import normalise_login
from submitgw.store import Database, MigrationRequired

CA_PASSPHRASE_ENV = "SUBMITGW_CA_PASSPHRASE"
# Row IDs are SQL INTEGER columns: 32-bit signed on PostgreSQL.
ID_MAX = 2**31 - 1
# Far above any real sending limit, far below every database's integer range.
COUNT_MAX = 10**9
row_id = click.IntRange(1, ID_MAX)


def read_secret_line(path: Path, what: str) -> bytes:
    """The first line of a secret file, without its line end; one-line errors."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise click.ClickException(f"cannot read {what} file {path}: {exc.strerror}") from exc
    if not lines or not lines[0]:
        raise click.ClickException(f"{what} file {path} is empty")
    return lines[0]


class Context:
    """What every command gets: the config path, loaded on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._config: Config | None = None
        # Set by `submitgw pki` from --ca-passphrase-file or $SUBMITGW_CA_PASSPHRASE.
        self.ca_passphrase: bytes | None = None

    def set_ca_passphrase(self, file: Path | None, from_env: str | None) -> None:
        """A file named on the command line beats the environment, like --config does."""
        if file is not None:
            self.ca_passphrase = read_secret_line(file, "CA passphrase")
        elif from_env:
            self.ca_passphrase = from_env.encode("utf-8")

    def load_ca(self) -> CA:
        """The CA of `[tls]`, its key decrypted with the passphrase given to `pki`, if any."""
        tls = self.config.tls
        try:
            return CA.load(tls.ca_cert, tls.ca_key, self.ca_passphrase)
        except CAPassphraseRequired as exc:
            raise click.ClickException(
                f"{exc}: set {CA_PASSPHRASE_ENV} or use 'submitgw pki --ca-passphrase-file PATH'"
            ) from exc
        except CAError as exc:
            raise click.ClickException(str(exc)) from exc

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


def email_argument(text: str) -> str:
    """A user's address as typed on the command line, validated and lower-cased."""
    email = normalise_login(text)
    if email is None:
        raise click.ClickException(f"{text!r} is not a valid email address")
    return email


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]


class _Commands(click.Group):
    """Errors no command expected still end as one `Error: …` line and exit status 1.

    Commands turn the refusals they know into ClickException; this catches what the
    database, the file system or a number beyond every range can still raise.
    """

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except SQLAlchemyError as exc:
            raise click.ClickException(f"database error: {_first_line(exc)}") from exc
        except OverflowError as exc:
            raise click.ClickException(f"a number is out of range: {_first_line(exc)}") from exc
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{where}{exc.strerror or _first_line(exc)}") from exc


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
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


def commands() -> click.Group:
    """`cli` with every command group attached (imports each command module)."""
    from submitgw.cli import access, db, init, pki, serve, user

    for module in (init, serve, user, access, pki, db):
        module.register(cli)
    return cli


def main() -> None:
    commands()()
