"""`submitgw audit …`: who sent this message, and what did this account do.

Reads the audit trail the gateway writes (messages with every recipient, logins,
certificate verdicts, access decisions, limit hits, sessions) together with the
account trail of admin and self-service changes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from submitgw.cli.context import Context, pass_context
from submitgw.rules.address import normalise_login
from submitgw.rules.message import normalise_message_id
from submitgw.rules.trail import ip_range, parse_time
from submitgw.services.audit import escape_text
from submitgw.store.audit import AuditQuery, AuditRecord

SEARCH_LIMIT = 100
SEARCH_MAX = 100_000
# Field name in a record -> its label on a human-readable line, in this order.
MESSAGE_FIELDS = {
    "queue_id": "queue",
    "message_id": "message-id",
    "sender": "from",
    "recipients": "to",
    "size": "size",
    "mechanism": "auth",
    "cert_serial": "cert",
    "cert_fingerprint": "fingerprint",
    "app_password": "app-password",
    "smarthost": "smarthost",
    "smarthost_queue_id": "smarthost-queue",
    "reply": "reply",
}


@click.group("audit")
def audit_group() -> None:
    """The audit trail: who sent a message, what an account or a client did.

    The gateway records every session, login attempt (never a password),
    certificate verdict, access decision, limit hit and message (with every
    recipient, its queue id and Message-ID) in the database; see [audit].
    """


def _when(end: bool) -> Any:
    def convert(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            return parse_time(value, datetime.now(UTC), end=end)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return convert


def _network(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return ip_range(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _login(text: str) -> str:
    """A user as the trail keeps it: a login name normalised like AUTH does."""
    return normalise_login(text) or text.strip().lower()


def _record_json(record: AuditRecord) -> dict[str, Any]:
    return {
        "at": record.at.isoformat(),
        "kind": record.kind,
        "user": record.user,
        "client": record.client,
        "session": record.session,
        **record.fields,
    }


def _shown(value: object) -> str:
    if isinstance(value, list):
        return ",".join(escape_text(str(v)) for v in value)
    return escape_text(str(value))


def _record_line(record: AuditRecord) -> str:
    """One tab-separated line; every value escaped, so none can forge a line or a field."""
    columns = [
        record.at.isoformat(timespec="seconds"),
        record.kind,
        _shown(record.user or "-"),
        _shown(record.client or "-"),
        _shown(record.session or "-"),
    ]
    if record.kind == "message":
        pairs = [(MESSAGE_FIELDS[k], record.fields.get(k)) for k in MESSAGE_FIELDS]
    else:
        pairs = list(record.fields.items())
    columns += [f"{label}={_shown(value)}" for label, value in pairs if value not in (None, "")]
    return "\t".join(columns)


@audit_group.command("search")
@click.option("--message-id", metavar="ID", help="The Message-ID header, with or without <>.")
@click.option("--queue-id", metavar="ID", help="The gateway's queue id, or the smarthost's.")
@click.option("--user", metavar="EMAIL", help="The account (or the login name tried).")
@click.option(
    "--ip", "network", metavar="IP|CIDR", callback=_network, help="Client address or network."
)
@click.option("--recipient", metavar="ADDRESS", help="A recipient of the message.")
@click.option("--session", metavar="ID", help="Everything of one SMTP session.")
@click.option(
    "--since", metavar="T", callback=_when(False), help="From T: 2026-12-01[T10:00] or 2h, 7d."
)
@click.option(
    "--until", metavar="T", callback=_when(True), help="Before T (a bare date: to its end)."
)
@click.option(
    "--limit",
    type=click.IntRange(1, SEARCH_MAX),
    default=SEARCH_LIMIT,
    show_default=True,
    help="Show at most this many records.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def search(
    ctx: Context,
    message_id: str | None,
    queue_id: str | None,
    user: str | None,
    network: Any,
    recipient: str | None,
    session: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """Find records, newest first; the filters given must all match.

    A Message-ID, queue id or recipient finds messages (who sent it: user,
    certificate, client address, time, queue ids, recipients); a user also
    finds their logins and the changes made to their account; an address or
    network finds everything that came from it. One record a line,
    tab-separated: time (UTC), kind, user, client, session, then name=value.
    """
    query = AuditQuery(
        message_id=normalise_message_id(message_id) if message_id is not None else None,
        queue_id=queue_id.strip() if queue_id is not None else None,
        user=_login(user) if user is not None else None,
        ip_low=network.low if network is not None else None,
        ip_high=network.high if network is not None else None,
        recipient=recipient,
        session=session.strip() if session is not None else None,
        since=since,
        until=until,
        limit=limit,
    )
    with ctx.services() as s:
        records = s.audit.search(query)
    if as_json:
        click.echo(json.dumps([_record_json(r) for r in records], indent=2))
        return
    if not records:
        click.echo("no records match")
        return
    for record in records:
        click.echo(_record_line(record))


@audit_group.command("prune")
@click.option(
    "--older-than",
    "days",
    type=click.IntRange(1, 1_000_000),
    metavar="DAYS",
    help="Delete records older than DAYS days (default: [audit] retention_days).",
)
@pass_context
def prune(ctx: Context, days: int | None) -> None:
    """Delete audit records past their retention, a few thousand rows per transaction.

    The gateway does this by itself once a day; the account trail is kept.
    """
    if days is None:
        days = ctx.config.audit.retention_days
        if days == 0:
            raise click.ClickException(
                "[audit] retention_days is 0 (keep for ever): give --older-than DAYS"
            )
    before = datetime.now(UTC) - timedelta(days=days)
    with ctx.services() as s:
        deleted = s.audit.prune(before)
    click.echo(f"deleted {deleted} audit records older than {before.isoformat(timespec='seconds')}")


def register(group: click.Group) -> None:
    group.add_command(audit_group)
