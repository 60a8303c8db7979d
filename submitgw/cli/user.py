"""`submitgw user …`: accounts that may relay through the gateway."""

from __future__ import annotations

import json
import sys

import click

from submitgw.address import normalise_login
from submitgw.auth import make_hasher
from submitgw.cli import Context, pass_context
from submitgw.store import UserExists, UserNotFound, UserStore


def _email(text: str) -> str:
    email = normalise_login(text)
    if email is None:
        raise click.ClickException(f"{text!r} is not a valid email address")
    return email


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password.removesuffix("\r")
    elif sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt="Repeat password")
    else:
        raise click.ClickException("no terminal to ask for a password: use --password-stdin")
    if not password:
        raise click.ClickException("the password is empty")
    return password


def _users(ctx: Context) -> UserStore:
    return UserStore(ctx.database())


@click.group("user")
def user_group() -> None:
    """Manage user accounts."""


@user_group.command("add")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@pass_context
def add(ctx: Context, email: str, password_stdin: bool) -> None:
    """Create an enabled user with a password."""
    address = _email(email)
    password = _read_password(password_stdin)
    digest = make_hasher(ctx.config.auth).hash(password)
    try:
        _users(ctx).add(address, digest)
    except UserExists as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"user {address} added")


@user_group.command("passwd")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@pass_context
def passwd(ctx: Context, email: str, password_stdin: bool) -> None:
    """Set a user's password."""
    address = _email(email)
    users = _users(ctx)
    if users.get(address) is None:
        raise click.ClickException(f"no such user: {address}")
    digest = make_hasher(ctx.config.auth).hash(_read_password(password_stdin))
    try:
        users.set_password(address, digest)
    except UserNotFound as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"password of {address} changed")


def _set_enabled(ctx: Context, email: str, enabled: bool) -> None:
    address = _email(email)
    try:
        _users(ctx).set_enabled(address, enabled)
    except UserNotFound as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"user {address} {'enabled' if enabled else 'disabled'}")


@user_group.command("disable")
@click.argument("email")
@pass_context
def disable(ctx: Context, email: str) -> None:
    """Refuse the user's logins from the next AUTH on."""
    _set_enabled(ctx, email, False)


@user_group.command("enable")
@click.argument("email")
@pass_context
def enable(ctx: Context, email: str) -> None:
    """Allow a disabled user again."""
    _set_enabled(ctx, email, True)


@user_group.command("delete")
@click.argument("email")
@pass_context
def delete(ctx: Context, email: str) -> None:
    """Remove a user."""
    address = _email(email)
    try:
        _users(ctx).delete(address)
    except UserNotFound as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"user {address} deleted")


@user_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def list_users(ctx: Context, as_json: bool) -> None:
    """List users."""
    records = _users(ctx).list()
    if as_json:
        rows = [
            {
                "email": r.email,
                "enabled": r.enabled,
                "created_at": r.created_at.isoformat() if r.created_at else None,
                "last_login_at": r.last_login_at.isoformat() if r.last_login_at else None,
            }
            for r in records
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    for r in records:
        state = "enabled " if r.enabled else "disabled"
        last = r.last_login_at.isoformat(timespec="seconds") if r.last_login_at else "never"
        click.echo(f"{r.email}\t{state}\tlast login: {last}")


def register(group: click.Group) -> None:
    group.add_command(user_group)
