"""`submitgw db copy`: a setup filled through the CLI moves to PostgreSQL and works as before.

Rules proven here: after the copy every admin view (users, certificates, rules, app
passwords, bindings, limits, the trail) reads the same on PostgreSQL as on SQLite; a
gateway on the copy logs users in with their old passwords and app passwords, keeps a
revoked certificate revoked, binds senders as before and takes new users; the refusals
are one line and exit status 1.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.client import Dialog
from tests.support.gateway import PASSWORD, USER, ClientCert, run_cli, set_options
from tests.support.smarthost import CaptureSmarthost

BOB, CAROL, DAVE, FRANK = (f"{name}@example.org" for name in ("bob", "carol", "dave", "frank"))
BOB_FIRST, BOB_NOW = "first walk by the river", "second walk by the river"
FRANK_PASSWORD = "a new user after the move"
CERTS_ON = {
    "submission": {"client_certificates": "optional"},
    "submissions": {"client_certificates": "optional"},
}
# Every admin view of the data the copy must carry.
VIEWS = [
    ("user", "list", "--json"),
    ("pki", "list", "--json"),
    ("access", "list", "--json"),
    ("user", "history", USER, "--json"),
    ("user", "history", BOB, "--json"),
    ("user", "app-password", "list", BOB, "--json"),
    ("user", "sender", "list", USER),
    ("user", "limits", BOB, "--json"),
    ("audit", "search", "--json", "--limit", "1000"),
]


def ok(config: Path, *args: str, input: str | None = None) -> str:
    result = run_cli(config, *args, input=input)
    assert result.returncode == 0, result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def issue(config: Path, email: str, folder: Path) -> ClientCert:
    folder.mkdir(parents=True)
    out = ok(config, "pki", "issue", email, "--out", str(folder))
    fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    (cert_path,) = folder.glob("*.crt")
    (key_path,) = folder.glob("*.key")
    return ClientCert(cert_path, key_path, fields["serial"], fields["fingerprint_sha256"])


def fill(config: Path, certs: Path) -> tuple[str, ClientCert, ClientCert]:
    """Users with each policy, and everything an admin can give them: through the CLI."""
    ok(config, "user", "add", USER, "--password-stdin", input=PASSWORD)
    ok(config, "user", "add", BOB, "--password-stdin", "--auth", "password", input=BOB_FIRST)
    ok(config, "user", "passwd", BOB, "--password-stdin", input=BOB_NOW)
    ok(config, "user", "add", CAROL, "--auth", "certificate")
    ok(
        config,
        "user",
        "add",
        DAVE,
        "--password-stdin",
        "--auth",
        "password+certificate",
        input=PASSWORD,
    )
    app_password = ok(config, "user", "app-password", "add", BOB, "--label", "phone").splitlines()[
        -1
    ]
    kept = issue(config, CAROL, certs / "kept")
    revoked = issue(config, CAROL, certs / "revoked")
    ok(config, "pki", "revoke", revoked.serial)
    ok(config, "access", "deny", "192.0.2.0/24", "--comment", "documentation net ✓")
    ok(config, "user", "set-networks", USER, "127.0.0.0/8", "::1/128")
    ok(config, "user", "set-networks", DAVE, "198.51.100.0/24")
    ok(config, "user", "sender", "add", USER, "sales@example.com")
    ok(config, "user", "set-limit", BOB, "--messages-per-hour", "7")
    ok(config, "user", "disable", DAVE)
    return app_password, kept, revoked


def external(gw: Any, cert: ClientCert) -> str:
    d = Dialog(gw.port)
    try:
        d.cmd("EHLO client.test")
        assert d.starttls(cert.context(gw.ca_file)).code == 220
        d.cmd("EHLO client.test")
        return d.cmd("AUTH EXTERNAL =").lines[-1]
    finally:
        d.close()


@pytest.mark.postgres
def test_a_setup_moved_to_postgresql_works_as_before(
    gateway_factory: Any, smarthost: CaptureSmarthost, pg_url: str, tmp_path: Path
) -> None:
    gw = gateway_factory(CERTS_ON, users=False, start=False)
    app_password, kept, revoked = fill(gw.config, tmp_path / "certs")
    gw.start()
    with gw.smtp() as client:
        client.sendmail(USER, ["bob@example.net", "carol@example.net"], b"Subject: x\r\n\r\nHi.")
    gw.stop()
    before = {view: ok(gw.config, *view) for view in VIEWS}
    trail = json.loads(before[("audit", "search", "--json", "--limit", "1000")])
    assert {"message", "auth", "session", "account"} <= {r["kind"] for r in trail}

    out = ok(gw.config, "db", "copy", "--to", pg_url).splitlines()

    assert "users: 4 rows copied" in out
    assert "certificates: 2 rows copied" in out
    assert out[-1].startswith("copied into postgresql+psycopg://")
    moved = gw.dir / "moved.toml"
    moved.write_text(set_options(gw.config.read_text(), {"database": {"url": pg_url}}))
    assert {view: ok(moved, *view) for view in VIEWS} == before
    assert json.loads(before[("user", "history", BOB, "--json")]), "the trail is not empty"

    gw.configure({"database": {"url": pg_url}})
    gw.start()

    with gw.smtp() as client:
        client.sendmail(
            "sales@example.com", ["bob@example.net"], b"From: sales@example.com\r\n\r\nHi.\r\n"
        )
    relayed = smarthost.wait_for_messages(2)[-1]
    assert relayed.envelope["mail_from"] == "sales@example.com"
    with gw.smtp(login=False) as client:
        client.login(BOB, app_password)
    with gw.smtp(login=False) as client:
        client.login(BOB, BOB_NOW)
    assert external(gw, kept).startswith("235 ")
    assert external(gw, revoked).startswith("535 5.7.8 Certificate revoked on ")

    ok(moved, "user", "add", FRANK, "--password-stdin", input=FRANK_PASSWORD)
    ok(moved, "access", "allow", "203.0.113.0/24")
    with gw.smtp(login=False) as client:
        client.login(FRANK, FRANK_PASSWORD)
    history = json.loads(ok(moved, "user", "history", FRANK, "--json"))
    assert [entry["action"] for entry in history] == ["user-added"]


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.postgres
def test_copying_into_a_database_that_holds_rows_is_refused(
    gateway_factory: Any, pg_url: str
) -> None:
    gw = gateway_factory(users=True, start=False)
    ok(gw.config, "db", "copy", "--to", pg_url)

    line = one_line_error(run_cli(gw.config, "db", "copy", "--to", pg_url))

    assert line == (
        "Error: the target database is not empty (1 row in account_events): "
        "copy only into a new, empty database"
    )


def test_copying_into_an_unreachable_database_is_one_line(gateway_factory: Any) -> None:
    gw = gateway_factory(users=False, start=False)
    url = "postgresql+psycopg://gw:s3cret@127.0.0.1:1/submitgw"

    line = one_line_error(run_cli(gw.config, "db", "copy", "--to", url))

    assert line.startswith(
        "Error: cannot connect to the target database postgresql+psycopg://gw:***@127.0.0.1:1/"
    )
    assert "s3cret" not in line


def test_copying_onto_itself_is_refused(gateway_factory: Any) -> None:
    gw = gateway_factory(users=True, start=False)
    url = f"sqlite:///{gw.dir / 'submitgw.db'}"

    line = one_line_error(run_cli(gw.config, "db", "copy", "--to", url))

    assert line == f"Error: the target {url} is the configured database itself"


def test_copying_needs_a_target(gateway_factory: Any) -> None:
    gw = gateway_factory(users=False, start=False)

    result = run_cli(gw.config, "db", "copy")

    assert result.returncode == 2
    assert "--to" in result.stderr
