"""`submitgw db …`: schema migrations, and copying the data into a new database."""

from __future__ import annotations

import click

from submitgw.cli.context import Context, pass_context
from submitgw.store.copy import copy_database, open_target, shown_url


@click.group("db")
def db_group() -> None:
    """Database schema management."""


@db_group.command("upgrade")
@pass_context
def upgrade(ctx: Context) -> None:
    """Apply all pending migrations."""
    with ctx.services(require_current=False) as s:
        before = s.db.current_revision()
        s.db.upgrade()
        after = s.db.current_revision()
    if before == after:
        click.echo(f"database already at revision {after}")
    else:
        click.echo(f"database upgraded from {before or 'empty'} to {after}")


@db_group.command("status")
@pass_context
def status(ctx: Context) -> None:
    """Show the database revision and whether it is current."""
    with ctx.services(require_current=False) as s:
        current, head = s.db.current_revision(), s.db.head_revision()
    click.echo(f"current: {current or 'empty'}\nlatest:  {head}")
    if current != head:
        raise click.ClickException("database is behind: run 'submitgw db upgrade'")


@db_group.command("copy")
@click.option(
    "--to",
    "target_url",
    required=True,
    metavar="URL",
    help="The new, empty database, e.g. postgresql+psycopg://gw@db.example.org/submitgw.",
)
@pass_context
def copy_command(ctx: Context, target_url: str) -> None:
    """Copy every table into a new, empty database (e.g. from SQLite to PostgreSQL).

    Stop the gateway first; the configuration is not changed: point [database] url
    at the new database afterwards.
    """
    with ctx.services() as s:
        target = open_target(target_url)
        try:
            copied = copy_database(s.db, target)
            revision = s.db.head_revision()
        finally:
            target.dispose()
    for table in copied:
        click.echo(f"{table.table}: {table.rows} row{'' if table.rows == 1 else 's'} copied")
    click.echo(
        f"copied into {shown_url(target_url)} at revision {revision}: "
        "point [database] url at it and restart the gateway"
    )


def register(group: click.Group) -> None:
    group.add_command(db_group)
