"""`submitgw user app-password …`: per-device passwords an admin hands out or cuts off.

A subgroup of `user`, kept in its own module; `user.register` attaches it. The
new password is printed once, as the last line of standard output and alone on
it, so a script can take it with `tail -n 1`; only its argon2 hash is stored.
"""

from __future__ import annotations

import json
from datetime import datetime

import click

from submitgw.cli.context import Context, email_argument, pass_context, row_id
from submitgw.cli.services import admin_actor
from submitgw.store import AppPasswordRecord


def _when(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _record_json(record: AppPasswordRecord) -> dict[str, object]:
    return {
        "id": record.id,
        "label": record.label,
        "created_at": _when(record.created_at),
        "last_used_at": _when(record.last_used_at),
    }


@click.group("app-password")
def app_password_group() -> None:
    """Per-device passwords for SMTP AUTH, each revocable on its own.

    An app password logs in as its user, like the account password, and keeps
    working when the account password expires; revoking one refuses it from the
    next AUTH on, on every gateway sharing the database.
    """


@app_password_group.command("add")
@click.argument("email")
@click.option(
    "--label", required=True, help='What it is for, shown in lists: "Thunderbird laptop".'
)
@pass_context
def add(ctx: Context, email: str, label: str) -> None:
    """Create an app password for EMAIL and print it, this once only.

    The password is the last line of the output, alone on it.
    """
    address = email_argument(email)
    with ctx.services() as s:
        try:
            record, secret = s.accounts.add_app_password(address, label, admin_actor())
        except ValueError as exc:
            # The label broke a rule (empty, too long, control characters).
            raise click.ClickException(str(exc)) from exc
    click.echo(f"app password {record.id} ({record.label}) of {address}, shown only this once:")
    click.echo(secret)


@app_password_group.command("list")
@click.argument("email")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def list_app_passwords(ctx: Context, email: str, as_json: bool) -> None:
    """EMAIL's app passwords, oldest first: ID, label, creation and last use (never the secret)."""
    address = email_argument(email)
    with ctx.services() as s:
        records = s.credentials.app_passwords(address)
    if as_json:
        click.echo(json.dumps([_record_json(r) for r in records], indent=2))
        return
    if not records:
        click.echo(f"{address} has no app passwords")
        return
    for r in records:
        created = r.created_at.isoformat(timespec="seconds")
        used = r.last_used_at.isoformat(timespec="seconds") if r.last_used_at else "never"
        click.echo(f"{r.id}\t{r.label}\tcreated: {created}\tlast used: {used}")


@app_password_group.command("revoke")
@click.argument("email")
@click.argument("app_id", metavar="ID", type=row_id)
@pass_context
def revoke(ctx: Context, email: str, app_id: int) -> None:
    """Delete app password ID of EMAIL (IDs as `list` shows them); refused from the next AUTH."""
    address = email_argument(email)
    with ctx.services() as s:
        label = s.accounts.revoke_app_password(address, app_id, admin_actor())
    click.echo(f"app password {app_id} ({label}) of {address} revoked")
