"""`submitgw audit search | prune` and the admin changes the account trail now records.

Rules proven here: the human form is one tab-separated line per record, every
client-chosen value escaped (no line or field can be forged); `--json` is the
same records as objects; bad filters are one-line usage errors; prune deletes
what is past retention (the config's, or --older-than) and keeps the rest and
the account trail; every admin change to certificates, limits, networks, sender
bindings and access rules lands in the account trail, shown by `user history`
and by `audit search --user` with the user's other records. On SQLite and
PostgreSQL.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from submitgw import config as config_mod
from submitgw.rules.trail import ip_key
from submitgw.store import Database
from submitgw.store.audit import AuditStore, EventRow, MessageRow
from tests.support.gateway import USER, run_cli

NOW = datetime.now(UTC)


@pytest.fixture(autouse=True)
def now() -> None:
    """Records are made relative to the test's start (ages like `57m` are read at the run)."""
    global NOW
    NOW = datetime.now(UTC)


@pytest.fixture
def gw(gateway_factory: Any, backend: str, request: pytest.FixtureRequest) -> Any:
    options = {}
    if backend == "postgresql":
        options = {"database": {"url": request.getfixturevalue("pg_migrated_url")}}
    return gateway_factory(options, start=False)


def write(config: Path, events: list[EventRow], messages: list[MessageRow]) -> None:
    db = Database(config_mod.load(config).database.url)
    try:
        AuditStore(db).write(events, messages)
    finally:
        db.dispose()


def message(n: int, *, days: float = 0, **changes: Any) -> MessageRow:
    values: dict[str, Any] = {
        "at": NOW - timedelta(days=days, minutes=60 - n),
        "queue_id": f"01QUEUE{n:011d}",
        "message_id": f"m{n}@example.org",
        "session": f"s{n}",
        "client": "192.0.2.7",
        "ip": ip_key("192.0.2.7"),
        "user": USER,
        "mechanism": "EXTERNAL",
        "cert_serial": "4F:2A:91",
        "cert_fingerprint": "ab" * 32,
        "app_password": None,
        "sender": USER,
        "size": 1234,
        "recipients": ("bob@example.net", "carol@example.net"),
        "smarthost": "10.0.0.25:25",
        "smarthost_queue_id": f"PF{n}",
        "reply": f"250 2.0.0 Ok: queued as PF{n}",
    }
    values.update(changes)
    return MessageRow(**values)


def login(n: int, *, days: float = 0, client: str = "192.0.2.7") -> EventRow:
    return EventRow(
        at=NOW - timedelta(days=days, minutes=60 - n),
        kind="auth",
        session=f"s{n}",
        client=client,
        ip=ip_key(client),
        user=USER,
        result="ok",
        detail={"mechanism": "PLAIN"},
    )


def ok(config: Path, *args: str, input: str | None = None) -> str:
    result = run_cli(config, *args, input=input)
    assert result.returncode == 0, result.stderr
    return result.stdout


def found(config: Path, *filters: str) -> list[dict[str, Any]]:
    return list(json.loads(ok(config, "audit", "search", *filters, "--json")))


def test_who_sent_this_one_line_per_record(gw: Any) -> None:
    write(gw.config, [login(1)], [message(2)])

    lines = ok(gw.config, "audit", "search", "--message-id", "<m2@example.org>").splitlines()

    (line,) = lines
    fields = line.split("\t")
    assert fields[1:5] == ["message", USER, "192.0.2.7", "s2"]
    assert datetime.fromisoformat(fields[0]) <= NOW
    assert fields[5:] == [
        "queue=01QUEUE00000000002",
        "message-id=m2@example.org",
        f"from={USER}",
        "to=bob@example.net,carol@example.net",
        "size=1234",
        "auth=EXTERNAL",
        "cert=4F:2A:91",
        f"fingerprint={'ab' * 32}",
        "smarthost=10.0.0.25:25",
        "smarthost-queue=PF2",
        "reply=250 2.0.0 Ok: queued as PF2",
    ]
    (record,) = found(gw.config, "--message-id", "m2@example.org")
    assert record["recipients"] == ["bob@example.net", "carol@example.net"]
    assert record["cert_serial"] == "4F:2A:91" and record["kind"] == "message"
    assert ok(gw.config, "audit", "search", "--message-id", "nothing@x") == "no records match\n"


def test_client_chosen_values_cannot_forge_a_line_or_a_field(gw: Any) -> None:
    hostile = "evil@x\n2026-01-01T00:00:00+00:00\tmessage\troot@example.org\x1b[2J"
    write(gw.config, [], [message(1, message_id=hostile, sender="a\tb@example.org")])

    (line,) = ok(gw.config, "audit", "search", "--recipient", "bob@example.net").splitlines()

    assert "\\n2026-01-01T00:00:00+00:00\\tmessage\\troot@example.org\\x1b[2J" in line
    assert "from=a\\tb@example.org" in line and "\x1b" not in line


def test_filters_combine_and_the_newest_come_first(gw: Any) -> None:
    write(
        gw.config,
        [login(1), login(3, client="2001:db8::9")],
        [message(2), message(4, client="198.51.100.3", ip=ip_key("198.51.100.3"))],
    )

    def queue_ids(*filters: str) -> list[str]:
        return [r.get("queue_id") or r["kind"] for r in found(gw.config, *filters)]

    assert queue_ids("--user", USER.upper()) == [
        "account",
        "01QUEUE00000000004",
        "auth",
        "01QUEUE00000000002",
        "auth",
    ]
    assert queue_ids("--ip", "192.0.2.7") == ["01QUEUE00000000002", "auth"]
    assert queue_ids("--ip", "198.51.100.0/24") == ["01QUEUE00000000004"]
    assert queue_ids("--ip", "2001:db8::/32") == ["auth"]
    assert queue_ids("--recipient", "Carol@Example.NET", "--limit", "1") == ["01QUEUE00000000004"]
    assert queue_ids("--queue-id", "PF2") == ["01QUEUE00000000002"]
    assert queue_ids("--session", "s3") == ["auth"]
    assert queue_ids("--since", "57m", "--ip", "0.0.0.0/0") == ["01QUEUE00000000004"]
    until = (NOW - timedelta(minutes=57, seconds=30)).isoformat()
    assert queue_ids("--until", until, "--ip", "::/0") == ["01QUEUE00000000002", "auth"]
    assert queue_ids("--since", "2h", "--until", until, "--ip", "192.0.2.0/24") == [
        "01QUEUE00000000002",
        "auth",
    ]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--ip", "192.0.2.300"], "--ip"),
        (["--since", "yesterday"], "--since"),
        (["--until", "2026-13-01"], "--until"),
        (["--limit", "0"], "--limit"),
    ],
)
def test_a_bad_filter_is_a_one_line_usage_error(gw: Any, args: list[str], named: str) -> None:
    result = run_cli(gw.config, "audit", "search", *args)

    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert named in line


def test_prune_keeps_what_is_within_retention(gw: Any) -> None:
    write(
        gw.config,
        [login(1, days=200), login(2, days=20)],
        [message(3, days=181), message(4, days=179), message(5, days=5)],
    )

    out = ok(gw.config, "audit", "prune")

    assert out.startswith("deleted 2 audit records older than ")
    kept = [r.get("queue_id") or r["session"] for r in found(gw.config, "--user", USER)]
    assert kept == [None, "01QUEUE00000000005", "s2", "01QUEUE00000000004"]
    assert ok(gw.config, "audit", "prune", "--older-than", "10").startswith("deleted 2 ")
    assert [r["kind"] for r in found(gw.config, "--user", USER)] == ["account", "message"]


def test_prune_without_retention_needs_a_number(gw: Any) -> None:
    gw.configure({"audit": {"retention_days": 0}})

    result = run_cli(gw.config, "audit", "prune")

    assert result.returncode == 1
    assert "retention_days is 0" in result.stderr and "--older-than" in result.stderr


def test_admin_changes_land_in_the_account_trail(gw: Any, tmp_path: Path) -> None:
    config = gw.config
    out = ok(config, "pki", "issue", USER, "--out", str(tmp_path / "a"))
    serial = next(line for line in out.splitlines() if line.startswith("serial: "))[8:]
    out = ok(config, "pki", "renew", serial, "--out", str(tmp_path / "b"))
    renewed = next(line for line in out.splitlines() if line.startswith("serial: "))[8:]
    ok(config, "pki", "revoke", serial, "--reason", "keyCompromise")
    ok(config, "user", "set-limit", USER, "--messages-per-hour", "7")
    ok(config, "user", "set-limit", USER, "--recipients-per-hour", "default")
    ok(config, "user", "set-networks", USER, "192.0.2.0/24")
    ok(config, "user", "set-networks", USER, "--clear")
    ok(config, "user", "sender", "add", USER, "@example.com")
    ok(config, "user", "sender", "remove", USER, "@example.com")
    ok(config, "user", "unlock", USER)
    ok(config, "access", "deny", "198.51.100.0/24", "--comment", "spam")
    ok(config, "access", "remove", "1")

    history = json.loads(ok(config, "user", "history", USER, "--json"))
    assert [(e["action"], e["detail"]) for e in history][::-1] == [
        ("user-added", "auth password-or-certificate"),
        ("certificate-issued", serial),
        ("certificate-renewed", f"{renewed} renews {serial}"),
        ("certificate-revoked", f"{serial} keyCompromise"),
        ("limits-changed", "messages 7"),
        ("limits-changed", "recipients default"),
        ("networks-changed", "192.0.2.0/24"),
        ("networks-changed", "cleared"),
        ("sender-added", "@example.com"),
        ("sender-removed", "@example.com"),
        ("login-unlocked", ""),
    ]
    assert all(e["actor"].startswith("admin:") for e in history)
    audited = found(config, "--user", USER)
    assert [r["action"] for r in audited] == [e["action"] for e in history]
    rules = [r for r in found(config, "--since", "1h") if r["user"] is None]
    assert [(r["action"], r["detail"]) for r in rules] == [
        ("access-rule-removed", "#1 deny 198.51.100.0/24"),
        ("access-rule-added", "#1 deny 198.51.100.0/24 spam"),
    ]
