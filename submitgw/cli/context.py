"""What every command gets: the config path and, on demand, config, CA and services.

Command modules import from here, and only `submitgw.cli` imports the command
modules, so the package has no import loops.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import click

from pki import CA, CAError, CAPassphraseRequired
from submitgw import config as config_mod
from submitgw.app import Stores
from submitgw.cli.services import open_services
from submitgw.config import Config, ConfigError
from submitgw.rules.address import normalise_login

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

    def __init__(self, path: Path, *, given: bool = False) -> None:
        self.path = path
        # True once --config named the path, before or after the command.
        self.path_given = given
        self._config: Config | None = None
        # Set by `submitgw pki` from --ca-passphrase-file or $SUBMITGW_CA_PASSPHRASE.
        self.ca_passphrase: bytes | None = None

    def set_path(self, value: str) -> None:
        """--config after the command: as good as before it, but not both with two paths."""
        path = Path(value)
        if self.path_given and path != self.path:
            raise click.UsageError(
                f"--config given twice ({self.path} and {path}); give it once, "
                "before or after the command"
            )
        if self._config is not None:
            raise click.UsageError("--config must come before the command's arguments")
        self.path = path
        self.path_given = True

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

    def services(self, *, require_current: bool = True) -> AbstractContextManager[Stores]:
        """`with ctx.services() as s:` the configured database's stores and services.

        Refuses a schema this version was not written for unless `require_current` is
        False (for `db` commands); see `open_services` for errors and disposal.
        """
        return open_services(self.config.database.url, self.config, require_current=require_current)


pass_context = click.make_pass_decorator(Context)


def email_argument(text: str) -> str:
    """A user's address as typed on the command line, validated and lower-cased."""
    email = normalise_login(text)
    if email is None:
        raise click.ClickException(f"{text!r} is not a valid email address")
    return email
