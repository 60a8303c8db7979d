"""`submitgw db …`: schema migrations."""

from __future__ import annotations

import click

from submitgw.cli.context import Context, pass_context


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


def register(group: click.Group) -> None:
    group.add_command(db_group)
