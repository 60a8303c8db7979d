"""`submitgw user …`: accounts that may relay through the gateway."""

from __future__ import annotations

import json
import secrets
import sys
from datetime import UTC, datetime

import click

from submitgw.auth import make_hasher
from submitgw.cli import Context, email_argument, pass_context
from submitgw.store import (
    AUTH_POLICIES,
    CertificateStore,
    UserExists,
    UserNetworkStore,
    UserNotFound,
    UserStore,
)


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
@click.option(
    "--auth",
    "policy",
    type=click.Choice(AUTH_POLICIES),
    default="password",
    show_default=True,
    help="How the user logs in: password, client certificate, or both in one session.",
)
@pass_context
def add(ctx: Context, email: str, password_stdin: bool, policy: str) -> None:
    """Create an enabled user with a password (optional for --auth certificate)."""
    address = email_argument(email)
    if policy == "certificate" and not password_stdin:
        # Never used to log in; a valid hash of a secret nobody knows keeps the
        # column meaningful should the policy later change (then: user passwd).
        password = secrets.token_urlsafe(32)
    else:
        password = _read_password(password_stdin)
    digest = make_hasher(ctx.config.auth).hash(password)
    try:
        _users(ctx).add(address, digest, auth_policy=policy)
    except UserExists as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"user {address} added")
    if policy != "password":
        click.echo(f"next: submitgw pki issue {address}")


@user_group.command("passwd")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@pass_context
def passwd(ctx: Context, email: str, password_stdin: bool) -> None:
    """Set a user's password."""
    address = email_argument(email)
    users = _users(ctx)
    if users.get(address) is None:
        raise click.ClickException(f"no such user: {address}")
    digest = make_hasher(ctx.config.auth).hash(_read_password(password_stdin))
    try:
        users.set_password(address, digest)
    except UserNotFound as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"password of {address} changed")


@user_group.command("set-auth")
@click.argument("email")
@click.argument("policy", type=click.Choice(AUTH_POLICIES), metavar="POLICY")
@pass_context
def set_auth(ctx: Context, email: str, policy: str) -> None:
    """Set how a user logs in: POLICY is password, certificate or password+certificate.

    Effective from the user's next connection.
    """
    address = email_argument(email)
    db = ctx.database()
    try:
        UserStore(db).set_auth_policy(address, policy)
        usable = [
            c
            for c in CertificateStore(db).list(address)
            if not c.revoked and c.not_after > datetime.now(UTC)
        ]
    except UserNotFound as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        db.dispose()
    click.echo(f"user {address} now logs in with: {policy}")
    if policy != "password" and not usable:
        click.echo(f"{address} has no valid certificate yet: submitgw pki issue {address}")


def _set_enabled(ctx: Context, email: str, enabled: bool) -> None:
    address = email_argument(email)
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
    address = email_argument(email)
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
    db = ctx.database()
    records = UserStore(db).list()
    networks = UserNetworkStore(db).by_user()
    if as_json:
        rows = [
            {
                "email": r.email,
                "enabled": r.enabled,
                "created_at": r.created_at.isoformat() if r.created_at else None,
                "last_login_at": r.last_login_at.isoformat() if r.last_login_at else None,
                "auth_policy": r.auth_policy,
                "networks": networks.get(r.email, []),
            }
            for r in records
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    for r in records:
        state = "enabled " if r.enabled else "disabled"
        last = r.last_login_at.isoformat(timespec="seconds") if r.last_login_at else "never"
        nets = f"\tnetworks: {', '.join(networks[r.email])}" if r.email in networks else ""
        click.echo(f"{r.email}\t{state}\t{r.auth_policy}\tlast login: {last}{nets}")


def register(group: click.Group) -> None:
    # Imported here: `user sender` and the limit commands (`set-limit`, `limits`,
    # `unlock`) live in their own modules, which import this one.
    from submitgw.cli import user_limits
    from submitgw.cli.user_sender import sender_group

    user_group.add_command(sender_group)
    for command in (user_limits.set_limit, user_limits.show_limits, user_limits.unlock):
        user_group.add_command(command)
    group.add_command(user_group)
