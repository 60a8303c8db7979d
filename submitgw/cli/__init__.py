"""Command line: `submitgw [--config PATH] COMMAND …`.

Each command group lives in its own module; this one only wires them together
and turns the errors every command can meet into one clear line.
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from submitgw import config as config_mod
from submitgw.cli import access, audit, db, examples, init, pki, serve, user
from submitgw.cli.context import Context

CONFIG_HELP = "Configuration file (default: $SUBMITGW_CONFIG, then ./submitgw.toml)."
# Commands that read no configuration, so --config after them would only mislead.
WITHOUT_CONFIG = {"init"}


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]


class _UsageLine(click.ClickException):
    """A usage error as one line, exit status 2, like click's but without its usage block."""

    exit_code = 2


def _one_line(exc: click.UsageError) -> click.ClickException:
    where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    return _UsageLine(f"{exc.format_message()}{where}")


class _Commands(click.Group):
    """Every error is one `Error: …` line: status 2 for a bad argument, 1 for the rest.

    Commands turn the refusals they know into ClickException; this catches what the
    database, the file system or a number beyond every range can still raise, and
    folds click's usage errors (usage, hint, blank line, error) into their last line.
    A command group named without a command still shows its help.
    """

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _one_line(exc) from exc

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _one_line(exc) from exc
        except SQLAlchemyError as exc:
            raise click.ClickException(f"database error: {_first_line(exc)}") from exc
        except OverflowError as exc:
            raise click.ClickException(f"a number is out of range: {_first_line(exc)}") from exc
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{where}{exc.strerror or _first_line(exc)}") from exc


def version() -> str:
    """The installed package's version; a source tree that was never installed has none."""
    try:
        return importlib.metadata.version("submitgw")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"submitgw {version()}")
        ctx.exit()


def _config_after_command(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    context = ctx.find_object(Context)
    if value is not None and context is not None and not ctx.resilient_parsing:
        context.set_path(value)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="PATH", help=CONFIG_HELP)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Show the version and exit.",
)
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """submitgw: an authenticated SMTP submission gateway."""
    path = config_mod.config_path(config_path, dict(os.environ))
    ctx.obj = Context(path, given=config_path is not None)


def _accept_config_after(command: click.Command, name: str) -> None:
    """`submitgw user list --config X` as well as `submitgw --config X user list`.

    Option callbacks run while the command line is parsed, before any command body
    has loaded the configuration, so the path can still change there.
    """
    if name not in WITHOUT_CONFIG:
        if not any(p.name == "config_after" for p in command.params):
            command.params.append(
                click.Option(
                    ["--config", "config_after"],
                    metavar="PATH",
                    expose_value=False,
                    callback=_config_after_command,
                    help=CONFIG_HELP,
                )
            )
        if isinstance(command, click.Group):
            for sub_name, sub in command.commands.items():
                _accept_config_after(sub, sub_name)


def commands() -> click.Group:
    """`cli` with every command group attached."""
    for module in (init, serve, user, access, pki, db, audit):
        module.register(cli)
    for name, command in cli.commands.items():
        _accept_config_after(command, name)
    examples.attach(cli)
    return cli


def main() -> None:
    commands()()
