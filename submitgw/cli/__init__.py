"""Command line: `submitgw [--config PATH] COMMAND …`.

Each command group lives in its own module; this one only wires them together
and turns the errors every command can meet into one clear line.
"""

from __future__ import annotations

import os

import click
from sqlalchemy.exc import SQLAlchemyError

from submitgw import config as config_mod
from submitgw.cli import access, db, init, pki, serve, user
from submitgw.cli.context import Context


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
    """`cli` with every command group attached."""
    for module in (init, serve, user, access, pki, db):
        module.register(cli)
    return cli


def main() -> None:
    commands()()
