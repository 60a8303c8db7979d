"""`submitgw user …`: accounts that may relay through the gateway.

Password changes go through AccountService, so the CLI applies the same policy
as the self-service site and every change lands in the account trail, signed
with the admin's OS login name and this host.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from submitgw.cli.context import Context, email_argument, pass_context
from submitgw.cli.services import admin_actor
from submitgw.cli.user_app_password import app_password_group
from submitgw.cli.user_limits import set_limit, show_limits, unlock
from submitgw.cli.user_sender import sender_group
from submitgw.config import selfservice_url
from submitgw.store import AUTH_POLICIES, EventRecord
from submitgw.types import CERTIFICATE, DEFAULT_AUTH_POLICY, TWO_FACTOR

# Policies under which the user cannot log in at all without a certificate.
CERTIFICATE_NEEDED = (CERTIFICATE, TWO_FACTOR)

HISTORY_LIMIT = 50
HISTORY_MAX = 1_000_000


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
    default=DEFAULT_AUTH_POLICY,
    show_default=True,
    help="How the user logs in: with the password, the client certificate alone, "
    "either of them, or both in one session.",
)
@pass_context
def add(ctx: Context, email: str, password_stdin: bool, policy: str) -> None:
    """Create an enabled user with a password (optional for --auth certificate).

    The password must pass the [passwords] policy. POLICY is password, certificate,
    password-or-certificate (the default) or password+certificate.
    """
    address = email_argument(email)
    # None for a certificate user: AccountService stores the hash of a random
    # secret nobody knows (then `user passwd` should the policy change).
    password: str | None = None
    if policy != CERTIFICATE or password_stdin:
        password = _read_password(password_stdin)
    with ctx.services() as s:
        s.accounts.create_user(address, password, policy, admin_actor())
    click.echo(f"user {address} added")
    if policy in CERTIFICATE_NEEDED:
        click.echo(f"next: submitgw pki issue {address}")


def _expired_lines(address: str, url: str | None, app_passwords: int, config: Path) -> list[str]:
    """Whether the site is on is read from `config`, the file this command loaded: a
    gateway started with `serve --listen-selfservice` may differ, so the line says where."""
    if url:
        first = (
            f"password of {address} expired: it must be changed at {url} before mail is accepted"
            f" (the self-service site per {config})"
        )
    else:
        first = (
            f"password of {address} expired: mail is refused until you set a new one with "
            f"'submitgw user passwd {address}' (the self-service site is off in {config})"
        )
    if not app_passwords:
        return [first]
    return [
        first,
        f"its {app_passwords} app password(s) keep working: "
        f"submitgw user app-password list {address}",
    ]


@user_group.command("passwd")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option(
    "--expire",
    is_flag=True,
    help="Set no password: the user must change the current one on the self-service site "
    "before SMTP AUTH accepts it again.",
)
@pass_context
def passwd(ctx: Context, email: str, password_stdin: bool, expire: bool) -> None:
    """Set a user's password (it must pass the [passwords] policy), or --expire it."""
    address = email_argument(email)
    if expire and password_stdin:
        raise click.ClickException("--expire sets no password: leave out --password-stdin")
    with ctx.services() as s:
        if s.users.get(address) is None:
            raise click.ClickException(f"no such user: {address}")
        if expire:
            s.accounts.expire_password(address, admin_actor())
            count = len(s.credentials.app_passwords(address))
            for line in _expired_lines(address, selfservice_url(ctx.config), count, ctx.path):
                click.echo(line)
            return
        s.accounts.change_password(address, _read_password(password_stdin), admin_actor())
    click.echo(f"password of {address} changed")


@user_group.command("set-auth")
@click.argument("email")
@click.argument("policy", type=click.Choice(AUTH_POLICIES), metavar="POLICY")
@pass_context
def set_auth(ctx: Context, email: str, policy: str) -> None:
    """Set how a user logs in: POLICY is password, certificate, password-or-certificate
    or password+certificate.

    Effective from the user's next connection.
    """
    address = email_argument(email)
    with ctx.services() as s:
        s.users.set_auth_policy(address, policy)
        s.accounts.trail(address, "auth-changed", admin_actor(), f"auth {policy}")
        usable = [
            c
            for c in s.certificates.list(address)
            if not c.revoked and c.not_after > datetime.now(UTC)
        ]
    click.echo(f"user {address} now logs in with: {policy}")
    if policy in CERTIFICATE_NEEDED and not usable:
        click.echo(f"{address} has no valid certificate yet: submitgw pki issue {address}")


def _set_enabled(ctx: Context, email: str, enabled: bool) -> None:
    address = email_argument(email)
    with ctx.services() as s:
        s.users.set_enabled(address, enabled)
        action = "user-enabled" if enabled else "user-disabled"
        s.accounts.trail(address, action, admin_actor())
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
    """Remove a user, with their app passwords; `user history` keeps their trail."""
    address = email_argument(email)
    with ctx.services() as s:
        s.users.delete(address)
        s.accounts.trail(address, "user-deleted", admin_actor())
    click.echo(f"user {address} deleted")


@user_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def list_users(ctx: Context, as_json: bool) -> None:
    """List users."""
    with ctx.services() as s:
        records = s.users.list()
        networks = s.networks.by_user()
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


def _event_json(event: EventRecord) -> dict[str, str]:
    return {
        "at": event.at.isoformat(),
        "action": event.action,
        "actor": event.actor,
        "source": event.source,
        "detail": event.detail,
    }


@user_group.command("history")
@click.argument("email")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--limit",
    type=click.IntRange(1, HISTORY_MAX),
    default=HISTORY_LIMIT,
    show_default=True,
    help="Show at most this many entries.",
)
@pass_context
def history(ctx: Context, email: str, as_json: bool, limit: int) -> None:
    """The account trail of EMAIL, newest first: when, what, by whom, from where.

    Kept after the user is deleted, so it still says who deleted them.
    """
    address = email_argument(email)
    with ctx.services() as s:
        events = s.credentials.events(address, limit)
    if as_json:
        click.echo(json.dumps([_event_json(e) for e in events], indent=2))
        return
    if not events:
        click.echo(f"no account changes recorded for {address}")
        return
    for e in events:
        when = e.at.isoformat(timespec="seconds")
        click.echo("\t".join((when, e.action, e.actor, e.source, e.detail)).rstrip("\t"))


def register(group: click.Group) -> None:
    """`user` with its subgroups and the limit commands, which live in their own modules."""
    user_group.add_command(sender_group)
    user_group.add_command(app_password_group)
    for command in (set_limit, show_limits, unlock):
        user_group.add_command(command)
    group.add_command(user_group)
