"""`submitgw user sender …`: the addresses and domains a user may send as.

A subgroup of `user`, kept in its own module; `user.register` attaches it.
"""

from __future__ import annotations

import click

from submitgw.cli.context import Context, email_argument, pass_context
from submitgw.cli.services import admin_actor
from submitgw.rules.binding import fold, normalise_pattern
from submitgw.store import SenderExists

PATTERN = "ADDRESS|@DOMAIN"


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
    with ctx.services() as s:
        wanted = normalise_pattern(pattern)
        # Always allowed, so never a binding; an unknown user is reported as such first.
        if wanted == fold(address) and s.users.get(address) is not None:
            raise SenderExists(address, wanted, own=True)
        stored = s.senders.add(address, wanted)
        s.accounts.trail(address, "sender-added", admin_actor(), stored)
    click.echo(f"{address} may now send as {stored}")


@sender_group.command("remove")
@click.argument("email")
@click.argument("pattern", metavar=PATTERN)
@pass_context
def remove(ctx: Context, email: str, pattern: str) -> None:
    """Take back a binding; effective from the user's next connection."""
    address = email_argument(email)
    with ctx.services() as s:
        stored = s.senders.remove(address, normalise_pattern(pattern))
        s.accounts.trail(address, "sender-removed", admin_actor(), stored)
    click.echo(f"{address} may no longer send as {stored}")


@sender_group.command("list")
@click.argument("email")
@pass_context
def list_senders(ctx: Context, email: str) -> None:
    """What EMAIL may send as: its own address, then its bindings."""
    address = email_argument(email)
    with ctx.services() as s:
        own, *bound = s.senders.allowed(address)
    click.echo(f"{own}\town address")
    for pattern in bound:
        click.echo(f"{pattern}\t{'domain' if pattern.startswith('@') else 'address'}")
