"""The login success cache over real SMTP, on two gateways sharing one PostgreSQL database.

Gateway B remembers a user's successful login (its cache counts the hit), then the
admin changes the account with `submitgw user …` (or the user on gateway A's
self-service site), and B must refuse the old credential at the very next AUTH:
nothing is restarted and B is told nothing, it reads the change from the user's
row. The rules themselves (wrong passwords still cost argon2, size and age bounds,
lockouts) are in tests/services/test_authn_cache.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.gateway.test_credentials import (
    BAD_CREDENTIALS,
    EXPIRED_ASK_ADMIN,
    NEW_PASSWORD,
    OK,
    QUIET_AUTH,
    add_app_password,
    auth,
    cli_ok,
    revoke_app_password,
)
from tests.gateway.test_interop import RCPT, wait_for_events
from tests.support.gateway import PASSWORD, USER, InProcessGateway
from tests.support.smarthost import CaptureSmarthost
from tests.support.web import WebClient


def hits(gw: InProcessGateway) -> int:
    assert gw.app is not None
    return gw.app.services.authenticator.cache.hits


def warm(gw: InProcessGateway, user: str, password: str) -> None:
    """Two logins: the first verifies the password, the second is served from the cache."""
    assert auth(gw, user, password) == OK
    before = hits(gw)
    assert auth(gw, user, password) == OK
    assert hits(gw) == before + 1, "the second login was remembered"


@dataclass(frozen=True)
class Change:
    """Something done to `user` on gateway A, and what B answers the old credential then."""

    user: str
    apply: Callable[[InProcessGateway, str], Any]
    reply: str = BAD_CREDENTIALS
    app_password: bool = False


def site_password_change(gw: InProcessGateway, user: str) -> None:
    web = WebClient(gw.web_port, gw.ssl_context())
    assert web.login(user, PASSWORD).status == 200
    body = {
        "current_password": PASSWORD,
        "new_password": NEW_PASSWORD,
        "new_password_again": NEW_PASSWORD,
    }
    assert web.call("PUT", "/api/password", body).status == 204


CHANGES = {
    "user passwd": Change(
        "passwd@example.org",
        lambda gw, user: cli_ok(
            gw.config, "user", "passwd", user, "--password-stdin", input=NEW_PASSWORD + "\n"
        ),
    ),
    "password changed on the site": Change("site@example.org", site_password_change),
    "user passwd --expire": Change(
        "expire@example.org",
        lambda gw, user: cli_ok(gw.config, "user", "passwd", user, "--expire"),
        EXPIRED_ASK_ADMIN,
    ),
    "user app-password revoke": Change("app@example.org", lambda gw, user: None, app_password=True),
    "user disable": Change(
        "disable@example.org", lambda gw, user: cli_ok(gw.config, "user", "disable", user)
    ),
    "user set-auth certificate": Change(
        "cert@example.org",
        lambda gw, user: cli_ok(gw.config, "user", "set-auth", user, "certificate"),
    ),
    "user set-networks": Change(
        "networks@example.org",
        lambda gw, user: cli_ok(gw.config, "user", "set-networks", user, "10.0.0.0/8"),
    ),
    "user delete": Change(
        "delete@example.org", lambda gw, user: cli_ok(gw.config, "user", "delete", user)
    ),
}


@pytest.mark.postgres
def test_every_change_voids_the_remembered_login_on_the_other_gateway(
    gateway_factory: Any, pg_migrated_url: str
) -> None:
    options = {"database": {"url": pg_migrated_url}, "limits": QUIET_AUTH}
    a: InProcessGateway = gateway_factory(
        options, users=False, start=False, name="a", selfservice=True
    )
    for change in CHANGES.values():
        a.add_user(change.user, PASSWORD)
    a.start()
    b: InProcessGateway = gateway_factory(options, users=False, name="b")
    for name, change in CHANGES.items():
        old = PASSWORD
        if change.app_password:
            app = add_app_password(a, "phone", change.user)
            old = app.secret
            warm(b, change.user, old)
            revoke_app_password(a, app, change.user)
        else:
            warm(b, change.user, old)
            change.apply(a, change.user)

        assert auth(b, change.user, old) == change.reply, name

    # Where the change set a new password, that one logs in on B and is remembered there.
    for name in ("user passwd", "password changed on the site"):
        warm(b, CHANGES[name].user, NEW_PASSWORD)


def test_a_remembered_login_is_logged_and_sends_like_any_other(
    gateway_factory: Any, smarthost: CaptureSmarthost
) -> None:
    gw: InProcessGateway = gateway_factory({"limits": QUIET_AUTH})

    warm(gw, USER, PASSWORD)
    with gw.smtp() as client:
        client.sendmail(USER, [RCPT], f"From: <{USER}>\r\nSubject: x\r\n\r\nhi\r\n")

    assert hits(gw) == 2
    assert len(smarthost.wait_for_messages(1)) == 1
    events = wait_for_events(gw, "auth", 3)
    assert [(e["result"], e["user"]) for e in events] == [("ok", USER)] * 3
