"""The password lifecycle over real SMTP: app passwords, password changes and expiry.

Every test runs real gateway processes (STARTTLS or implicit TLS, checked against the
gateway's CA) and changes credentials the way an admin does, with `submitgw user …`
commands, while the gateway keeps running: nothing is restarted, because a change must
hold at the next AUTH, whatever logins the gateway remembers (see test_login_cache.py).
The shared-database cases start two gateways on one PostgreSQL database and make the
change through one of them. The only thing faked is the age of a password:
`users.password_changed_at` is moved into the past.

How a self-service user sees the same rules (and that the site never takes an app
password) is in tests/web/test_site.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import CursorResult, update

from submitgw import config as config_mod
from submitgw.store import Database
from submitgw.store.models import User
from tests.gateway.test_interop import (
    RCPT,
    assert_relayed,
    crlf_message,
    msmtprc,
    swaks_args,
    token,
    wait_for_events,
)
from tests.support.client import Dialog, b64
from tests.support.clients import run_client
from tests.support.gateway import PASSWORD, USER, GatewayProcess, run_cli
from tests.support.smarthost import CaptureSmarthost, require_tool

BOB = "bob@example.org"
BOB_PASSWORD = "a different long passphrase"
NEW_PASSWORD = "a brand new passphrase 42"
WRONG = "a wrong guess at it"
# The alphabet has no l, o, 0 or 1; five groups of four.
APP_PASSWORD = re.compile(r"[a-km-np-z2-9]{4}(?:-[a-km-np-z2-9]{4}){4}")
OK = "235 2.7.0 Authentication successful"
BAD_CREDENTIALS = "535 5.7.8 Authentication credentials invalid"
EXPIRED_ASK_ADMIN = "535 5.7.8 Password expired, ask your administrator for a new one"
# Lockouts are exercised in tests/gateway/test_limits.py; here failures must not slow tests down.
QUIET_AUTH = {"auth_delay": 0.01, "auth_max_delay": 0.02}
MAX_AGE_ONE_DAY = {"passwords": {"max_age_days": 1}, "limits": QUIET_AUTH}


@dataclass(frozen=True)
class AppPassword:
    id: int
    label: str
    secret: str

    @property
    def logged_as(self) -> str:
        """How the auth and message log events name it."""
        return f"{self.id} {self.label}"


# --- admin commands -------------------------------------------------------------------------


def cli_ok(config: Path, *args: str, input: str | None = None) -> str:
    result = run_cli(config, *args, input=input)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def app_passwords(gw: GatewayProcess, email: str = USER) -> list[dict[str, Any]]:
    listed = json.loads(cli_ok(gw.config, "user", "app-password", "list", email, "--json"))
    assert isinstance(listed, list)
    return listed


def add_app_password(gw: GatewayProcess, label: str, email: str = USER) -> AppPassword:
    """`user app-password add`: the password is printed once, alone on the last line."""
    out = cli_ok(gw.config, "user", "app-password", "add", email, "--label", label)
    lines = out.splitlines()
    assert APP_PASSWORD.fullmatch(lines[-1]), out
    assert [x for x in lines if APP_PASSWORD.search(x)] == [lines[-1]], "printed once"
    found = re.search(rf"\b(\d+)\b.*{re.escape(label)}", out)
    assert found, f"the output names the new app password's id and label:\n{out}"
    return AppPassword(int(found.group(1)), label, lines[-1])


def revoke_app_password(gw: GatewayProcess, app: AppPassword, email: str = USER) -> None:
    cli_ok(gw.config, "user", "app-password", "revoke", email, str(app.id))


def passwd(gw: GatewayProcess, password: str, email: str = USER) -> None:
    cli_ok(gw.config, "user", "passwd", email, "--password-stdin", input=password + "\n")


def expire(gw: GatewayProcess, email: str = USER) -> None:
    cli_ok(gw.config, "user", "passwd", email, "--expire")


def age_password(gw: GatewayProcess, days: float, email: str = USER) -> None:
    """The clock, faked: the password was last changed `days` ago."""
    db = Database(config_mod.load(gw.config).database.url)
    try:
        with db.session() as session:
            changed = datetime.now(UTC) - timedelta(days=days)
            statement = update(User).where(User.email == email)
            result = session.execute(statement.values(password_changed_at=changed))
            assert cast(CursorResult[Any], result).rowcount == 1
    finally:
        db.dispose()


# --- gateways -------------------------------------------------------------------------------


@pytest.fixture
def gw(gateway_factory: Any) -> GatewayProcess:
    gateway: GatewayProcess = gateway_factory({"limits": QUIET_AUTH})
    return gateway


def site_url(gw: GatewayProcess) -> str:
    """What the expired reply must name: the site at the port `--listen-selfservice` gave,
    under the [server] hostname of the generated config (`init --hostname gw.test`)."""
    return f"https://gw.test:{gw.web_port}/"


def pg_pair(
    gateway_factory: Any,
    pg_url: str,
    options: dict[str, dict[str, Any]] | None = None,
    *,
    selfservice: bool = False,
) -> tuple[GatewayProcess, GatewayProcess]:
    """Two gateway processes on one fresh PostgreSQL database, with USER and BOB."""
    merged = {"database": {"url": pg_url}, "limits": QUIET_AUTH, **(options or {})}
    gw1 = gateway_factory(merged, users=False, start=False, name="gw1", selfservice=selfservice)
    cli_ok(gw1.config, "db", "upgrade")
    gw1.add_user()
    gw1.add_user(BOB, BOB_PASSWORD)
    gw1.start()
    gw2 = gateway_factory(merged, users=False, name="gw2", selfservice=selfservice)
    return gw1, gw2


# --- SMTP -----------------------------------------------------------------------------------


def connect(gw: GatewayProcess) -> Dialog:
    d = Dialog(gw.port)
    assert d.cmd("EHLO client.test").code == 250
    assert d.starttls(gw.ssl_context()).code == 220
    assert d.cmd("EHLO client.test").code == 250
    return d


def auth(gw: GatewayProcess, user: str, password: str, *, authzid: str = "") -> str:
    """The final reply line to AUTH PLAIN on a new connection, which is then closed."""
    d = connect(gw)
    try:
        return d.cmd("AUTH PLAIN " + b64(f"{authzid}\0{user}\0{password}")).lines[-1]
    finally:
        d.close()


def expired_reply(url: str) -> str:
    return f"535 5.7.8 Password expired, change it at {url}"


def send_as(gw: GatewayProcess, user: str, password: str) -> str:
    """Log in and submit one message; returns the marker its body carries."""
    d = connect(gw)
    try:
        login = d.login(user, password)
        assert login.code == 235, login
        marker = token()
        assert d.cmd(f"MAIL FROM:<{user}>").code == 250
        assert d.cmd(f"RCPT TO:<{RCPT}>").code == 250
        assert d.cmd("DATA").code == 354
        d.send(crlf_message(marker).encode() + b".\r\n")
        reply = d.read()
        assert reply.code == 250, reply
        d.cmd("QUIT")
        return marker
    finally:
        d.close()


def auth_results(gw: GatewayProcess, n: int) -> list[str]:
    """The results of the first `n` auth events, waiting for the log to catch up."""
    return [e["result"] for e in wait_for_events(gw, "auth", n)[:n]]


def swaks_auth(
    gw: GatewayProcess, marker: str, password: str, listener: str = "starttls"
) -> subprocess.CompletedProcess[str]:
    auth_args = ["--auth", "LOGIN", "--auth-user", USER, "--auth-password", password]
    return run_client([*swaks_args(gw, listener, marker), *auth_args])


# --- app passwords: real clients ------------------------------------------------------------


def test_swaks_sends_with_an_app_password(gw: GatewayProcess, smarthost: CaptureSmarthost) -> None:
    app = add_app_password(gw, "swaks on the laptop")
    (listed,) = app_passwords(gw)
    assert (listed["id"], listed["label"], listed["last_used_at"]) == (app.id, app.label, None)
    assert app.secret not in json.dumps(listed), "the listing never shows the password"
    marker = token()

    result = swaks_auth(gw, marker, app.secret)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"<~  {OK}" in result.stdout
    assert_relayed(gw, smarthost, marker)
    (message,) = gw.log_events("message")
    assert message["app_password"] == app.logged_as
    (event,) = wait_for_events(gw, "auth")
    assert (event["result"], event["user"], event["app_password"]) == ("ok", USER, app.logged_as)
    assert app_passwords(gw)[0]["last_used_at"] is not None


def test_msmtp_sends_with_an_app_password(
    gw: GatewayProcess, smarthost: CaptureSmarthost, tmp_path: Path
) -> None:
    msmtp = require_tool("msmtp")
    app = add_app_password(gw, "msmtp on the server")
    rc = msmtprc(tmp_path / "msmtprc", gw, listener="implicit", auth="on", password=app.secret)
    marker = token()

    result = run_client([msmtp, "-C", str(rc), RCPT], input=crlf_message(marker))

    assert result.returncode == 0, result.stderr
    assert_relayed(gw, smarthost, marker)
    (message,) = gw.log_events("message")
    assert message["app_password"] == app.logged_as
    (event,) = wait_for_events(gw, "auth")
    assert (event["mechanism"], event["result"]) == ("PLAIN", "ok")


# --- app passwords: what logs in, as whom ---------------------------------------------------


def test_app_password_typed_with_or_without_dashes_and_in_any_case(gw: GatewayProcess) -> None:
    app = add_app_password(gw, "Thunderbird laptop")
    compact = app.secret.replace("-", "")
    forms = {
        "as printed": app.secret,
        "no dashes": compact,
        "upper case": app.secret.upper(),
        "upper case, no dashes": compact.upper(),
        "spaces for dashes": app.secret.replace("-", " "),
    }
    for form, typed in forms.items():
        assert auth(gw, USER, typed) == OK, form
    assert auth(gw, USER.upper(), app.secret) == OK, "the login name is case-blind too"

    # Only the first group picks the hash to check: the other sixteen characters count.
    last = "b" if app.secret[-1] != "b" else "c"
    for wrong in (app.secret[:-1] + last, app.secret[:-1], app.secret[:4], app.secret + "x"):
        assert auth(gw, USER, wrong) == BAD_CREDENTIALS, wrong
    assert auth_results(gw, 10) == ["ok"] * 6 + ["failed"] * 4


def test_account_password_and_every_app_password_work_side_by_side(
    gw: GatewayProcess, smarthost: CaptureSmarthost
) -> None:
    phone, laptop = add_app_password(gw, "phone"), add_app_password(gw, "laptop")
    assert phone.secret != laptop.secret and phone.id != laptop.id

    send_as(gw, USER, PASSWORD)
    send_as(gw, USER, phone.secret)
    send_as(gw, USER, laptop.secret)

    assert len(smarthost.wait_for_messages(3)) == 3
    messages = wait_for_events(gw, "message", 3)
    assert [m["app_password"] for m in messages] == [None, phone.logged_as, laptop.logged_as]
    events = wait_for_events(gw, "auth", 3)
    assert [e.get("app_password") for e in events] == [None, phone.logged_as, laptop.logged_as]


def test_another_users_app_password_does_not_log_in_as_this_user(gw: GatewayProcess) -> None:
    gw.add_user(BOB, BOB_PASSWORD)
    bobs = add_app_password(gw, "bob's phone", BOB)

    assert auth(gw, USER, bobs.secret) == BAD_CREDENTIALS
    # Bob's own credentials asking to act for alice (PLAIN authorisation identity).
    assert auth(gw, BOB, bobs.secret, authzid=USER) == BAD_CREDENTIALS
    # Nor can alice's address revoke it by its id.
    refused = run_cli(gw.config, "user", "app-password", "revoke", USER, str(bobs.id))
    assert refused.returncode != 0
    # It is a good password, of bob's.
    assert auth(gw, BOB, bobs.secret) == OK
    assert auth(gw, BOB, bobs.secret, authzid=BOB) == OK
    assert auth_results(gw, 4) == ["failed", "failed", "ok", "ok"]
    assert {e["user"] for e in wait_for_events(gw, "auth", 4)[2:]} == {BOB}


def test_app_password_follows_the_account_state(gw: GatewayProcess) -> None:
    """An app password logs in as its user, never around the user's own restrictions."""
    app = add_app_password(gw, "phone")
    cli_ok(gw.config, "user", "disable", USER)
    assert auth(gw, USER, app.secret) == BAD_CREDENTIALS
    cli_ok(gw.config, "user", "enable", USER)
    assert auth(gw, USER, app.secret) == OK

    cli_ok(gw.config, "user", "set-auth", USER, "certificate")
    assert auth(gw, USER, app.secret) == BAD_CREDENTIALS
    cli_ok(gw.config, "user", "set-auth", USER, "password+certificate")
    assert auth(gw, USER, app.secret) == BAD_CREDENTIALS, "no certificate in this session"


def test_app_passwords_go_with_a_deleted_account(gw: GatewayProcess) -> None:
    app = add_app_password(gw, "phone")
    cli_ok(gw.config, "user", "delete", USER)
    assert auth(gw, USER, app.secret) == BAD_CREDENTIALS

    gw.add_user()  # the same address again: a new account, which has no app passwords

    assert app_passwords(gw) == []
    assert auth(gw, USER, app.secret) == BAD_CREDENTIALS
    assert auth(gw, USER, PASSWORD) == OK


# --- app passwords: revocation --------------------------------------------------------------


def test_revoked_app_password_fails_at_the_next_auth(
    gw: GatewayProcess, smarthost: CaptureSmarthost
) -> None:
    phone, laptop = add_app_password(gw, "phone"), add_app_password(gw, "laptop")
    marker = token()
    first = swaks_auth(gw, marker, phone.secret)
    assert first.returncode == 0, first.stdout + first.stderr
    assert_relayed(gw, smarthost, marker)

    revoke_app_password(gw, phone)

    again = swaks_auth(gw, token(), phone.secret)
    assert again.returncode != 0
    assert f"<~* {BAD_CREDENTIALS}" in again.stdout
    assert " ~> MAIL FROM" not in again.stdout
    assert auth_results(gw, 2) == ["ok", "failed"]
    # Only that device is cut off.
    assert [e["id"] for e in app_passwords(gw)] == [laptop.id]
    assert auth(gw, USER, laptop.secret) == OK
    assert auth(gw, USER, PASSWORD) == OK
    assert len(smarthost.messages()) == 1


@pytest.mark.postgres
def test_revocation_holds_at_once_on_every_gateway_sharing_postgresql(
    gateway_factory: Any, smarthost: CaptureSmarthost, pg_url: str
) -> None:
    gw1, gw2 = pg_pair(gateway_factory, pg_url)
    app = add_app_password(gw1, "phone")
    assert auth(gw2, USER, app.secret) == OK, "made through one gateway, usable on the other"
    send_as(gw1, USER, app.secret)
    assert len(smarthost.wait_for_messages(1)) == 1

    revoke_app_password(gw2, app)

    for gw in (gw1, gw2):
        assert auth(gw, USER, app.secret) == BAD_CREDENTIALS
        assert auth(gw, USER, PASSWORD) == OK
    (message,) = gw1.log_events("message")
    assert message["app_password"] == app.logged_as
    assert app_passwords(gw1) == []


# --- password changes -----------------------------------------------------------------------


def test_old_password_is_refused_at_once_after_passwd(
    gw: GatewayProcess, smarthost: CaptureSmarthost
) -> None:
    app = add_app_password(gw, "phone")
    assert auth(gw, USER, PASSWORD) == OK

    passwd(gw, NEW_PASSWORD)

    assert auth(gw, USER, PASSWORD) == BAD_CREDENTIALS
    marker = send_as(gw, USER, NEW_PASSWORD)
    (msg,) = smarthost.wait_for_messages(1)
    assert marker.encode() in msg.raw
    assert auth_results(gw, 3) == ["ok", "failed", "ok"], "the old password is wrong, not expired"
    # The devices' own passwords are not the account password: they stay.
    assert auth(gw, USER, app.secret) == OK


@pytest.mark.postgres
def test_old_password_is_refused_on_every_gateway_sharing_postgresql(
    gateway_factory: Any, smarthost: CaptureSmarthost, pg_url: str
) -> None:
    gw1, gw2 = pg_pair(gateway_factory, pg_url)
    for gw in (gw1, gw2):
        assert auth(gw, USER, PASSWORD) == OK

    passwd(gw1, NEW_PASSWORD)

    for gw in (gw2, gw1):
        assert auth(gw, USER, PASSWORD) == BAD_CREDENTIALS
        assert auth(gw, USER, NEW_PASSWORD) == OK
    send_as(gw2, USER, NEW_PASSWORD)
    assert len(smarthost.wait_for_messages(1)) == 1
    assert auth(gw2, BOB, BOB_PASSWORD) == OK, "bob's account is not touched"


def test_passwd_refuses_a_weak_password_and_the_old_one_keeps_working(
    gw: GatewayProcess,
) -> None:
    weak = {
        "short pass": "at least 12 characters",
        "Password123456!": "commonly used password",
        "alice's own new password": "must not contain your user name",
        PASSWORD: "must differ from your last 5 passwords",
    }
    for password, says in weak.items():
        result = run_cli(
            gw.config, "user", "passwd", USER, "--password-stdin", input=password + "\n"
        )
        assert result.returncode == 1, (password, result.stdout)
        assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1, (
            password,
            result.stderr,
        )
        assert auth(gw, USER, PASSWORD) == OK
        if password != PASSWORD:
            assert auth(gw, USER, password) == BAD_CREDENTIALS


# --- expiry ---------------------------------------------------------------------------------


def test_expired_password_names_the_selfservice_site(
    gateway_factory: Any, smarthost: CaptureSmarthost
) -> None:
    gw: GatewayProcess = gateway_factory(MAX_AGE_ONE_DAY, selfservice=True)
    age_password(gw, 2)
    d = connect(gw)

    reply = d.login(USER, PASSWORD)

    assert reply.lines == [expired_reply(site_url(gw))]
    assert d.cmd(f"MAIL FROM:<{USER}>").code == 530, "it did not log in"
    d.close()
    (event,) = wait_for_events(gw, "auth")
    assert (event["user"], event["result"]) == (USER, "expired")
    time.sleep(0.2)
    assert smarthost.messages() == [] and gw.log_events("message") == []


def test_swaks_sees_the_expired_reply_naming_the_configured_url(
    gateway_factory: Any, smarthost: CaptureSmarthost
) -> None:
    url = "https://mail.example.org/account/"
    options = {**MAX_AGE_ONE_DAY, "selfservice": {"url": url}}
    gw: GatewayProcess = gateway_factory(options, selfservice=True)
    age_password(gw, 2)

    result = swaks_auth(gw, token(), PASSWORD, listener="implicit")

    assert result.returncode != 0
    assert f"<~* {expired_reply(url)}" in result.stdout
    assert " ~> MAIL FROM" not in result.stdout
    assert auth_results(gw, 1) == ["expired"]
    # swaks has finished and the gateway relays pass-through: anything sent would be there.
    assert smarthost.messages() == []


def test_expired_password_with_the_site_off_says_ask_the_administrator(
    gateway_factory: Any,
) -> None:
    gw: GatewayProcess = gateway_factory(MAX_AGE_ONE_DAY)
    age_password(gw, 0.9)
    assert auth(gw, USER, PASSWORD) == OK, "younger than the maximum age"

    age_password(gw, 1.1)

    assert auth(gw, USER, PASSWORD) == EXPIRED_ASK_ADMIN
    assert auth_results(gw, 2) == ["ok", "expired"]


def test_expiry_is_not_revealed_to_a_guesser(gateway_factory: Any) -> None:
    gw: GatewayProcess = gateway_factory(MAX_AGE_ONE_DAY, selfservice=True)
    age_password(gw, 2)

    assert auth(gw, USER, WRONG) == BAD_CREDENTIALS
    assert auth(gw, USER, PASSWORD.upper()) == BAD_CREDENTIALS
    assert auth(gw, "nobody@example.org", PASSWORD) == BAD_CREDENTIALS
    assert auth(gw, USER, PASSWORD) == expired_reply(site_url(gw))
    assert auth_results(gw, 4) == ["failed", "failed", "failed", "expired"]


def test_expired_replies_are_not_counted_as_failed_logins(gateway_factory: Any) -> None:
    options = {**MAX_AGE_ONE_DAY, "limits": {"auth_failures_per_account": 3, **QUIET_AUTH}}
    gw: GatewayProcess = gateway_factory(options, selfservice=True)
    age_password(gw, 2)

    for _ in range(6):
        assert auth(gw, USER, PASSWORD) == expired_reply(site_url(gw))

    assert gw.log_events("lockout") == []
    passwd(gw, NEW_PASSWORD)
    assert auth(gw, USER, NEW_PASSWORD) == OK
    # The limit is live in this gateway: three wrong passwords do lock the account.
    for _ in range(3):
        assert auth(gw, USER, WRONG) == BAD_CREDENTIALS
    assert auth(gw, USER, NEW_PASSWORD).startswith("454 4.7.0 ")
    assert len(gw.log_events("lockout")) == 1


def test_app_passwords_keep_working_while_the_account_password_is_expired(
    gateway_factory: Any, smarthost: CaptureSmarthost
) -> None:
    gw: GatewayProcess = gateway_factory(MAX_AGE_ONE_DAY, selfservice=True)
    app = add_app_password(gw, "phone")
    age_password(gw, 2)

    assert auth(gw, USER, PASSWORD) == expired_reply(site_url(gw))
    marker = send_as(gw, USER, app.secret)

    (msg,) = smarthost.wait_for_messages(1)
    assert marker.encode() in msg.raw
    (message,) = wait_for_events(gw, "message")
    assert message["app_password"] == app.logged_as
    assert auth_results(gw, 2) == ["expired", "ok"]


def test_passwd_expire_forces_a_change_at_the_next_auth(gateway_factory: Any) -> None:
    gw: GatewayProcess = gateway_factory({"limits": QUIET_AUTH}, selfservice=True)
    gw.add_user(BOB, BOB_PASSWORD)
    app = add_app_password(gw, "phone")
    age_password(gw, 3650)
    assert auth(gw, USER, PASSWORD) == OK, "no maximum age: passwords do not get old"

    expire(gw)

    assert auth(gw, USER, PASSWORD) == expired_reply(site_url(gw))
    assert auth(gw, USER, WRONG) == BAD_CREDENTIALS
    assert auth(gw, USER, app.secret) == OK
    assert auth(gw, BOB, BOB_PASSWORD) == OK, "only that user's password expired"
    assert auth_results(gw, 3) == ["ok", "expired", "failed"]
    # A new password lifts it, and the expired one is then simply wrong.
    passwd(gw, NEW_PASSWORD)
    assert auth(gw, USER, NEW_PASSWORD) == OK
    assert auth(gw, USER, PASSWORD) == BAD_CREDENTIALS


def test_passwd_expire_with_the_site_off(gw: GatewayProcess) -> None:
    expire(gw)
    assert auth(gw, USER, PASSWORD) == EXPIRED_ASK_ADMIN


@pytest.mark.postgres
def test_expiry_holds_on_every_gateway_sharing_postgresql(
    gateway_factory: Any, pg_url: str
) -> None:
    gw1, gw2 = pg_pair(gateway_factory, pg_url, selfservice=True)
    assert auth(gw2, USER, PASSWORD) == OK

    expire(gw1)

    for gw in (gw2, gw1):
        assert auth(gw, USER, PASSWORD) == expired_reply(site_url(gw))
    passwd(gw2, NEW_PASSWORD)
    for gw in (gw1, gw2):
        assert auth(gw, USER, NEW_PASSWORD) == OK
        assert auth(gw, USER, PASSWORD) == BAD_CREDENTIALS
