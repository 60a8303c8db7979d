"""`submitgw access …` (who may connect at all) and `submitgw user set-networks`.

Rules are stored in the database and read by the gateway on every connection,
so each change here applies to the next connection without a restart.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import click

from submitgw.cli.context import Context, pass_context, row_id
from submitgw.cli.services import admin_actor
from submitgw.cli.user import user_group
from submitgw.rules.access import (
    CONFIRMED,
    DNS_ERROR,
    NO_PTR,
    ClientName,
    client_address,
    parse_network,
    parse_rule,
    rule_kind,
)
from submitgw.rules.address import normalise_login
from submitgw.services.dns import ReverseDns
from submitgw.services.screening import ClientScreen, Verdict, deny_refusal
from submitgw.smtp import replies

# Access rules belong to no account: their changes are in the trail under no address.
NO_ACCOUNT = ""
# `access check` exit codes: 0 allowed, DENIED_EXIT denied; 1 stays "the command failed"
# (as for every command), so a script cannot mistake a broken setup for a denial.
DENIED_EXIT = 3

_KIND_NAMES = {
    "ip": "IP address",
    "cidr": "network",
    "name": "domain name",
    "suffix": "domain suffix",
    "unknown": "no forward-confirmed name",
}


@click.group("access")
def access_group() -> None:
    """Client access rules: which hosts may connect at all.

    RULE is an IP address, a CIDR network (IPv4 or IPv6), a domain name
    (example.net: that name only), a domain suffix (.example.net: every name
    under it, not example.net itself) or `unknown` (no forward-confirmed reverse
    DNS name). Most specific first: IP, longest CIDR, name, longest suffix,
    unknown, then [policy] default.
    """


def _add(ctx: Context, action: str, text: str, comment: str) -> None:
    with ctx.services() as s:
        stored = s.access_rules.add(action, parse_rule(text), comment)
        detail = f"#{stored.rule.id} {action} {stored.rule.rule} {comment}".rstrip()
        s.accounts.trail(NO_ACCOUNT, "access-rule-added", admin_actor(), detail)
    rule = stored.rule
    kind = _KIND_NAMES[rule_kind(rule.rule)]
    click.echo(f"added rule #{rule.id}: {rule.action} {rule.rule} ({kind}); effective now")


@access_group.command("deny")
@click.argument("rule")
@click.option("--comment", default="", help="Why, for the next admin (shown by list).")
@pass_context
def deny(ctx: Context, rule: str, comment: str) -> None:
    """Refuse clients matching RULE: 554 5.7.1 instead of the greeting."""
    _add(ctx, "deny", rule, comment)


@access_group.command("allow")
@click.argument("rule")
@click.option("--comment", default="", help="Why, for the next admin (shown by list).")
@pass_context
def allow(ctx: Context, rule: str, comment: str) -> None:
    """Let clients matching RULE connect (an exception to a wider deny or to default=deny)."""
    _add(ctx, "allow", rule, comment)


@access_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def list_rules(ctx: Context, as_json: bool) -> None:
    """List the rules, oldest first."""
    with ctx.services() as s:
        stored = s.access_rules.list()
    if as_json:
        rows = [
            {
                "id": entry.rule.id,
                "action": entry.rule.action,
                "rule": entry.rule.rule,
                "kind": rule_kind(entry.rule.rule),
                "comment": entry.rule.comment,
                "created_at": entry.created_at.isoformat(),
            }
            for entry in stored
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    if not stored:
        click.echo("no access rules: every client is treated per [policy] default")
        return
    for entry in stored:
        r = entry.rule
        created = entry.created_at.isoformat(timespec="seconds")
        comment = f"\t{r.comment}" if r.comment else ""
        click.echo(f"#{r.id}\t{r.action}\t{r.rule}\t{created}{comment}")


@access_group.command("remove")
@click.argument("rule_id", metavar="ID", type=row_id)
@pass_context
def remove(ctx: Context, rule_id: int) -> None:
    """Delete rule ID (as shown by list)."""
    with ctx.services() as s:
        rule = s.access_rules.remove(rule_id)
        detail = f"#{rule.id} {rule.action} {rule.rule}"
        s.accounts.trail(NO_ACCOUNT, "access-rule-removed", admin_actor(), detail)
    click.echo(f"removed rule #{rule.id}: {rule.action} {rule.rule}")


def describe_name(name: ClientName) -> str:
    """The reverse DNS outcome in words, including why a client is `unknown`."""
    if name.status == CONFIRMED:
        return f"{', '.join(name.names)} (forward-confirmed: PTR and A/AAAA agree)"
    why = {NO_PTR: "no PTR", DNS_ERROR: "DNS error"}.get(name.status, "PTR not confirmed")
    return f"unknown ({why}: {name.detail})"


def render_check(ctx: Context, ip: str, verdict: Verdict) -> list[str]:
    """The `access check` report: every line a ticket needs, nothing to interpret."""
    cfg = ctx.config
    decision = verdict.decision
    servers = ", ".join(cfg.dns.nameservers) or "system (/etc/resolv.conf)"
    lines = [
        f"client:         {ip}",
        f"gateway:        {cfg.server.hostname} ({ctx.path})",
        f"checked at:     {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"dns servers:    {servers}, timeout {cfg.dns.timeout:g}s",
    ]
    if verdict.name is not None:
        lines.append(f"reverse DNS:    {describe_name(verdict.name)}")
    lines.append(f"policy default: {cfg.policy.default}")
    if decision.matched:
        lines.append(f"matching rules: {len(decision.matched)}, most specific first")
        width = max(len(rule.rule) for rule in decision.matched)
        for rule in decision.matched:
            kind = _KIND_NAMES[rule_kind(rule.rule)]
            comment = f'  "{rule.comment}"' if rule.comment else ""
            lines.append(
                f"  #{rule.id:<4} {rule.action:<5} {rule.rule:<{width}}  ({kind}){comment}"
            )
    else:
        lines.append("matching rules: none")
    winner = decision.rule
    if winner is not None:
        lines.append(f"winning rule:   #{winner.id} {winner.action} {winner.rule}")
    else:
        lines.append(f'winning rule:   none: [policy] default = "{cfg.policy.default}"')
    if decision.allowed:
        lines.append("decision:       ALLOW (the client gets the 220 greeting)")
    else:
        reply = replies.line(deny_refusal(cfg.policy))
        lines.append(f'decision:       DENY (the client gets "{reply}" and is disconnected)')
    return lines


@access_group.command("check")
@click.argument("ip")
@pass_context
def check(ctx: Context, ip: str) -> None:
    """Dry run: what the gateway would decide for a client at IP, and why.

    Prints the forward-confirmed name (or why the client is `unknown`), every
    matching rule, the winning rule and the decision. Exit status: 0 allow,
    3 deny, 1 error.
    """
    try:
        address = str(client_address(ip))
    except ValueError as exc:
        raise click.ClickException(f"{ip!r} is not an IP address") from exc
    cfg = ctx.config
    with ctx.services() as s:
        screen = ClientScreen(s.access_rules, ReverseDns(cfg.dns), cfg.policy)
        verdict = asyncio.run(screen.verdict(address, always_resolve=True))
    click.echo("\n".join(render_check(ctx, address, verdict)))
    if not verdict.decision.allowed:
        raise SystemExit(DENIED_EXIT)


@click.command("set-networks")
@click.argument("email")
@click.argument("cidrs", nargs=-1, metavar="CIDR...")
@click.option("--clear", is_flag=True, help="Remove all networks: log in from anywhere again.")
@pass_context
def set_networks(ctx: Context, email: str, cidrs: tuple[str, ...], clear: bool) -> None:
    """Let EMAIL log in only from these networks (replacing any set before).

    From anywhere else even the right password or certificate gets 535 5.7.8,
    as a wrong one does. Effective from the user's next login.
    """
    if clear == bool(cidrs):
        raise click.UsageError("give one or more CIDRs, or --clear (not both)")
    address = normalise_login(email)
    if address is None:
        raise click.ClickException(f"{email!r} is not a valid email address")
    with ctx.services() as s:
        stored = s.networks.set(address, [str(parse_network(text)) for text in cidrs])
        detail = " ".join(stored) or "cleared"
        s.accounts.trail(address, "networks-changed", admin_actor(), detail)
    if stored:
        click.echo(f"user {address} may now log in only from: {', '.join(stored)}")
    else:
        click.echo(f"user {address} may now log in from anywhere")


def register(group: click.Group) -> None:
    group.add_command(access_group)
    user_group.add_command(set_networks)
