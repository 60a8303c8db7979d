"""`submitgw user sender …`: the addresses and domains a user may send as.

A subgroup of `user`, kept in its own module; `user.register` attaches it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from submitgw.cli import Context, email_argument, pass_context
from submitgw.rules.binding import InvalidPattern, fold, normalise_pattern
from submitgw.store import SenderExists, SenderNotFound, SenderStore, UserNotFound

T = TypeVar("T")
PATTERN = "ADDRESS|@DOMAIN"


def _with_store(ctx: Context, action: Callable[[SenderStore], T]) -> T:
    """Run one store call; its expected failures become one-line errors."""
    db = ctx.database()
    try:
        return action(SenderStore(db))
    except (UserNotFound, SenderExists, SenderNotFound, InvalidPattern) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        db.dispose()


def _pattern(text: str) -> str:
    """The stored form of a binding, as the gateway compares it."""
    try:
        return normalise_pattern(text)
    except InvalidPattern as exc:
        raise click.ClickException(str(exc)) from exc


def _add(store: SenderStore, email: str, pattern: str) -> str:
    """The user's own address is always allowed, so it is never stored as a binding."""
    if pattern == fold(email) and store.list(email) is not None:
        raise SenderExists(email, pattern, own=True)
    return store.add(email, pattern)


@click.group("sender")
def sender_group() -> None:
    """Addresses and domains a user may send as (MAIL FROM and From:).

    Every user may always send as their own address; add more with ADDRESS, or
    @DOMAIN for every address at exactly that domain (not its subdomains).
    """


@sender_group.command("add")
@click.argument("email")
@click.argument("pattern", metavar=PATTERN)
@pass_context
def add(ctx: Context, email: str, pattern: str) -> None:
    """Allow EMAIL to send as ADDRESS, or as any address @DOMAIN."""
    address = email_argument(email)
    wanted = _pattern(pattern)
    stored = _with_store(ctx, lambda store: _add(store, address, wanted))
    click.echo(f"{address} may now send as {stored}")


@sender_group.command("remove")
@click.argument("email")
@click.argument("pattern", metavar=PATTERN)
@pass_context
def remove(ctx: Context, email: str, pattern: str) -> None:
    """Take back a binding; effective from the user's next connection."""
    address = email_argument(email)
    wanted = _pattern(pattern)
    stored = _with_store(ctx, lambda store: store.remove(address, wanted))
    click.echo(f"{address} may no longer send as {stored}")


@sender_group.command("list")
@click.argument("email")
@pass_context
def list_senders(ctx: Context, email: str) -> None:
    """What EMAIL may send as: its own address, then its bindings."""
    address = email_argument(email)
    own, *bound = _with_store(ctx, lambda store: store.allowed(address))
    click.echo(f"{own}\town address")
    for pattern in bound:
        click.echo(f"{pattern}\t{'domain' if pattern.startswith('@') else 'address'}")
