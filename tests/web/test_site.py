"""The self-service site over real HTTPS: JSON API, forms, CSRF, cookies, lockouts, expiry.

Every test runs a real gateway process with the site on; its effects are checked
where they matter, on SMTP AUTH of the same gateway.
"""

from __future__ import annotations

import smtplib
import ssl
from typing import Any

import pytest

from submitgw import config as config_mod
from submitgw.services.accounts import AccountService, Actor
from submitgw.store import Database
from submitgw.web.site import SessionTable
from tests.support.clients import run_client
from tests.support.gateway import PASSWORD, USER, GatewayProcess, run_cli
from tests.support.smarthost import require_tool
from tests.support.web import WebClient

NEW_PASSWORD = "a fresh passphrase for spring"
FAST_LOCKOUT = {"limits": {"auth_delay": 0.01, "auth_max_delay": 0.02}}
CHANGE = {
    "current_password": PASSWORD,
    "new_password": NEW_PASSWORD,
    "new_password_again": NEW_PASSWORD,
}


@pytest.fixture
def site(gateway_factory: Any) -> GatewayProcess:
    return gateway_factory(FAST_LOCKOUT, selfservice=True)


def client(gw: GatewayProcess, context: ssl.SSLContext | None = None) -> WebClient:
    return WebClient(gw.web_port, context or gw.ssl_context())


def signed_in(gw: GatewayProcess) -> WebClient:
    web = client(gw)
    assert web.login(USER, PASSWORD).status == 200
    return web


def smtp_login(gw: GatewayProcess, user: str, password: str) -> tuple[int, str]:
    with gw.smtp(login=False) as smtp:
        try:
            code, text = smtp.login(user, password)
        except smtplib.SMTPResponseException as err:
            code, text = err.smtp_code, err.smtp_error
        return code, text.decode() if isinstance(text, bytes) else text


def account_service(gw: GatewayProcess) -> tuple[AccountService, Database]:
    cfg = config_mod.load(gw.config)
    db = Database(cfg.database.url)
    return AccountService(db, cfg.auth, cfg.passwords), db


# --- signing in -------------------------------------------------------------------------


def test_sign_in_sets_a_host_only_secure_httponly_strict_cookie(site: GatewayProcess) -> None:
    web = client(site)
    reply = web.login(USER, PASSWORD)

    assert reply.status == 200
    body = reply.json()
    assert body["user"] == USER and body["password_expired"] is False
    assert len(body["csrf_token"]) >= 32
    (cookie,) = [c for c in reply.set_cookies() if c.startswith("__Host-submitgw=")]
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"secure", "httponly", "path", "samesite"} <= flags
    assert "samesite=strict" in cookie.lower()
    assert "domain" not in flags
    assert reply.headers["Cache-Control"] == "no-store"


def test_every_page_forbids_caching_framing_and_inline_scripts(site: GatewayProcess) -> None:
    web = signed_in(site)
    for path in ("/", "/api/account"):
        reply = web.request("GET", path)
        assert reply.status == 200, path
        assert reply.headers["Cache-Control"] == "no-store"
        assert "frame-ancestors 'none'" in reply.headers["Content-Security-Policy"]
        assert "script-src" not in reply.headers["Content-Security-Policy"]  # default-src 'none'
        assert reply.headers["X-Frame-Options"] == "DENY"
    assert client(site).request("GET", "/api/account").headers["Cache-Control"] == "no-store"


def test_unknown_user_and_wrong_password_get_the_same_answer(site: GatewayProcess) -> None:
    wrong = client(site).login(USER, "not the password at all")
    unknown = client(site).login("nobody@example.org", "not the password at all")

    assert wrong.status == unknown.status == 401
    assert wrong.body == unknown.body
    assert wrong.json() == {"error": "Invalid email or password"}
    assert not any(c.startswith("__Host-submitgw=") for c in wrong.set_cookies())


def test_sign_in_needs_json(site: GatewayProcess) -> None:
    reply = client(site).request("POST", "/api/session", form={"email": USER, "password": PASSWORD})
    assert reply.status == 415


def test_api_needs_a_session(site: GatewayProcess) -> None:
    web = client(site)
    for method, path in [
        ("GET", "/api/account"),
        ("GET", "/api/app-passwords"),
        ("GET", "/api/certificates"),
        ("PUT", "/api/password"),
        ("POST", "/api/app-passwords"),
    ]:
        assert web.call(method, path, {}).status == 401, (method, path)


def test_app_password_cannot_sign_in_to_the_site(site: GatewayProcess) -> None:
    web = signed_in(site)
    secret = web.call("POST", "/api/app-passwords", {"label": "phone"}).json()["password"]

    assert client(site).login(USER, secret).status == 401
    assert smtp_login(site, USER, secret)[0] == 235


def test_failed_web_sign_ins_lock_smtp_auth_too(site: GatewayProcess) -> None:
    for _ in range(5):
        assert client(site).login(USER, "wrong password, again").status == 401

    locked = client(site).login(USER, PASSWORD)
    code, text = smtp_login(site, USER, PASSWORD)

    assert locked.status == 429
    assert int(locked.headers["Retry-After"]) > 0
    assert (code, text.split()[0]) == (454, "4.7.0")


def test_failed_smtp_logins_lock_the_site_too(site: GatewayProcess) -> None:
    # smtplib tries PLAIN, then LOGIN: two counted failures per call.
    codes = [smtp_login(site, USER, "wrong password, again")[0] for _ in range(3)]
    assert codes[0] == 535 and codes[-1] == 454

    assert client(site).login(USER, PASSWORD).status == 429


# --- CSRF -------------------------------------------------------------------------------


def test_api_changes_need_the_csrf_token(site: GatewayProcess) -> None:
    web = signed_in(site)
    body = CHANGE

    missing = web.call("PUT", "/api/password", body, csrf=False)
    wrong = web.request("PUT", "/api/password", json_body=body, headers={"X-CSRF-Token": "x" * 43})
    add = web.call("POST", "/api/app-passwords", {"label": "phone"}, csrf=False)

    assert missing.status == wrong.status == add.status == 403
    assert missing.json() == {"error": "CSRF token missing or wrong"}
    assert smtp_login(site, USER, PASSWORD)[0] == 235
    assert web.call("GET", "/api/app-passwords").json() == []


def test_forms_need_the_csrf_token(site: GatewayProcess) -> None:
    web = client(site)
    page = web.request("GET", "/")
    login_token = page.hidden()

    forged_login = client(site).request(
        "POST", "/login", form={"email": USER, "password": PASSWORD, "csrf": login_token}
    )
    assert forged_login.status == 403  # the token without its cookie

    ok = web.request(
        "POST", "/login", form={"email": USER, "password": PASSWORD, "csrf": login_token}
    )
    assert ok.status == 303
    form = CHANGE
    assert web.request("POST", "/password", form=form).status == 403
    assert web.request("POST", "/password", form={**form, "csrf": login_token}).status == 403
    assert web.request("POST", "/app-passwords", form={"label": "x"}).status == 403
    assert smtp_login(site, USER, PASSWORD)[0] == 235

    token = web.request("GET", "/").hidden()
    assert web.request("POST", "/password", form={**form, "csrf": token}).status == 303
    assert smtp_login(site, USER, NEW_PASSWORD)[0] == 235


def test_cross_site_requests_are_refused(site: GatewayProcess) -> None:
    web = signed_in(site)
    reply = web.request(
        "POST",
        "/api/app-passwords",
        json_body={"label": "x"},
        headers={"X-CSRF-Token": web.csrf or "", "Sec-Fetch-Site": "cross-site"},
    )
    assert reply.status == 403


# --- password change ---------------------------------------------------------------------


def test_password_change_takes_effect_at_once(site: GatewayProcess) -> None:
    web = signed_in(site)
    other_browser = signed_in(site)

    reply = web.call("PUT", "/api/password", CHANGE)

    assert reply.status == 204
    assert smtp_login(site, USER, PASSWORD)[0] == 535
    assert smtp_login(site, USER, NEW_PASSWORD)[0] == 235
    assert web.call("GET", "/api/account").status == 200
    assert other_browser.call("GET", "/api/account").status == 401
    (event,) = [e for e in site.log_events("account") if e["action"] == "password-changed"]
    assert event["user"] == USER and event["actor"] == USER
    assert "selfservice from 127.0.0.1" in event["source"]


@pytest.mark.parametrize(
    ("new", "again", "message"),
    [
        ("short pass", "short pass", "at least 12 characters"),
        ("x" * 1025, "x" * 1025, "at most 1024 characters"),
        ("ALICE-in-wonderland-42", "ALICE-in-wonderland-42", "user name"),
        ("qwertyuiop123456", "qwertyuiop123456", "commonly used"),
        (PASSWORD, PASSWORD, "last 5 passwords"),
        (NEW_PASSWORD, NEW_PASSWORD + "!", "differ"),
    ],
)
def test_each_policy_rule_is_refused_with_its_message(
    site: GatewayProcess, new: str, again: str, message: str
) -> None:
    web = signed_in(site)
    body = {"current_password": PASSWORD, "new_password": new, "new_password_again": again}
    reply = web.call("PUT", "/api/password", body)

    assert reply.status == 400
    assert message in reply.json()["error"]
    assert smtp_login(site, USER, PASSWORD)[0] == 235


def test_an_admin_password_change_signs_the_browser_out(site: GatewayProcess) -> None:
    web = signed_in(site)
    result = run_cli(site.config, "user", "passwd", USER, "--password-stdin", input=NEW_PASSWORD)
    assert result.returncode == 0, result.stderr

    assert web.call("GET", "/api/account").status == 401


def test_disabling_the_user_ends_the_session(site: GatewayProcess) -> None:
    web = signed_in(site)
    assert run_cli(site.config, "user", "disable", USER).returncode == 0

    assert web.call("GET", "/api/account").status == 401


# --- expiry ---------------------------------------------------------------------------------


def test_expired_password_may_only_be_replaced(site: GatewayProcess) -> None:
    service, db = account_service(site)
    try:
        service.expire_password(USER, Actor("admin:test", "test"))
    finally:
        db.dispose()
    code, text = smtp_login(site, USER, PASSWORD)
    assert code == 535 and f"change it at https://gw.test:{site.web_port}/" in text

    web = client(site)
    reply = web.login(USER, PASSWORD)
    assert reply.status == 200 and reply.json()["password_expired"] is True
    assert web.call("GET", "/api/account").json()["password_expired"] is True
    assert web.call("GET", "/api/app-passwords").status == 403
    assert web.call("POST", "/api/app-passwords", {"label": "x"}).status == 403
    assert 'id="expired"' in web.request("GET", "/").text

    assert web.call("PUT", "/api/password", CHANGE).status == 204
    assert web.call("GET", "/api/app-passwords").status == 200
    assert smtp_login(site, USER, NEW_PASSWORD)[0] == 235


# --- app passwords and certificates -----------------------------------------------------------


def test_app_password_lifecycle_over_the_api(site: GatewayProcess) -> None:
    web = signed_in(site)

    created = web.call("POST", "/api/app-passwords", {"label": "  Thunderbird   laptop "})
    assert created.status == 201
    app = created.json()
    assert app["label"] == "Thunderbird laptop"
    assert smtp_login(site, USER, app["password"])[0] == 235

    (listed,) = web.call("GET", "/api/app-passwords").json()
    assert listed["id"] == app["id"] and "password" not in listed
    assert listed["last_used_at"] is not None

    assert web.call("DELETE", f"/api/app-passwords/{app['id']}").status == 204
    assert web.call("GET", "/api/app-passwords").json() == []
    assert smtp_login(site, USER, app["password"])[0] == 535
    assert web.call("DELETE", f"/api/app-passwords/{app['id']}").status == 404
    actions = [e["action"] for e in site.log_events("account")]
    assert actions == ["app-password-added", "app-password-revoked"]


def test_an_app_password_of_another_user_cannot_be_revoked(site: GatewayProcess) -> None:
    site.add_user("bob@example.org", "a different long passphrase")
    bob = client(site)
    assert bob.login("bob@example.org", "a different long passphrase").status == 200
    app = bob.call("POST", "/api/app-passwords", {"label": "bob phone"}).json()

    alice = signed_in(site)
    assert alice.call("DELETE", f"/api/app-passwords/{app['id']}").status == 404
    assert smtp_login(site, "bob@example.org", app["password"])[0] == 235


@pytest.mark.parametrize("label", ["", "   ", "x" * 101, "bad\x07label"])
def test_bad_labels_are_refused(site: GatewayProcess, label: str) -> None:
    reply = signed_in(site).call("POST", "/api/app-passwords", {"label": label})
    assert reply.status == 400 and reply.json()["error"]


def test_certificates_are_listed_read_only(site: GatewayProcess) -> None:
    cert = site.issue_cert()
    web = signed_in(site)

    (listed,) = web.call("GET", "/api/certificates").json()
    assert listed["serial"] == cert.serial and listed["revoked_at"] is None
    assert f'data-serial="{cert.serial}"' in web.request("GET", "/").text
    assert web.call("DELETE", "/api/certificates").status == 405


def test_sign_in_with_a_client_certificate(site: GatewayProcess) -> None:
    cert = site.issue_cert()
    assert run_cli(site.config, "user", "set-auth", USER, "certificate").returncode == 0
    web = client(site, cert.context(site.ca_file))
    assert 'id="cert-login"' in web.request("GET", "/").text

    reply = web.request("POST", "/api/session", json_body={"certificate": True})
    assert reply.status == 200 and reply.json()["user"] == USER
    web.csrf = reply.json()["csrf_token"]
    assert web.call("GET", "/api/account").json()["signed_in_with"] == "certificate"

    assert run_cli(site.config, "pki", "revoke", cert.serial).returncode == 0
    assert web.call("GET", "/api/account").status == 401


def test_password_or_certificate_users_sign_in_with_either(site: GatewayProcess) -> None:
    """The default policy: the certificate alone, or the password alone."""
    cert = site.issue_cert()
    with_cert = client(site, cert.context(site.ca_file))
    assert 'id="cert-login"' in with_cert.request("GET", "/").text

    reply = with_cert.request("POST", "/api/session", json_body={"certificate": True})
    assert reply.status == 200 and reply.json()["user"] == USER
    with_cert.csrf = reply.json()["csrf_token"]
    account = with_cert.call("GET", "/api/account").json()
    assert account["auth_policy"] == "password-or-certificate"
    assert account["signed_in_with"] == "certificate"
    # Signed in with the certificate, which stands for the current password.
    assert 'name="current_password"' not in with_cert.request("GET", "/").text
    change = {k: v for k, v in CHANGE.items() if k != "current_password"}
    assert with_cert.call("PUT", "/api/password", change).status == 204

    by_password = client(site)
    assert by_password.login(USER, NEW_PASSWORD).status == 200
    assert by_password.call("GET", "/api/account").json()["signed_in_with"] == "password"
    # Signed in with the password: changing it needs it again.
    assert 'name="current_password"' in by_password.request("GET", "/").text
    again = {"new_password": PASSWORD, "new_password_again": PASSWORD}
    assert by_password.call("PUT", "/api/password", again).status == 400

    # Narrowed to "password": the certificate session ends, the certificate alone is refused.
    assert run_cli(site.config, "user", "set-auth", USER, "password").returncode == 0
    assert with_cert.call("GET", "/api/account").status == 401
    assert with_cert.request("POST", "/api/session", json_body={"certificate": True}).status == 401
    assert by_password.call("GET", "/api/account").status == 200


def test_two_factor_users_need_password_and_certificate(site: GatewayProcess) -> None:
    cert = site.issue_cert()
    assert run_cli(site.config, "user", "set-auth", USER, "password+certificate").returncode == 0
    with_cert = client(site, cert.context(site.ca_file))

    cert_only = with_cert.request("POST", "/api/session", json_body={"certificate": True})
    password_only = client(site).login(USER, PASSWORD)

    assert cert_only.status == password_only.status == 401
    assert password_only.json() == {"error": "Invalid email or password"}
    assert with_cert.login(USER, PASSWORD).status == 200


def test_sign_in_from_outside_the_users_networks_is_refused(site: GatewayProcess) -> None:
    result = run_cli(site.config, "user", "set-networks", USER, "10.0.0.0/8")
    assert result.returncode == 0, result.stderr

    refused = client(site).login(USER, PASSWORD)

    assert refused.status == 401
    assert refused.json() == {"error": "Invalid email or password"}


def test_no_certificate_no_certificate_sign_in(site: GatewayProcess) -> None:
    web = client(site)
    assert 'id="cert-login"' not in web.request("GET", "/").text
    assert web.request("POST", "/api/session", json_body={"certificate": True}).status == 401


def test_sign_out_ends_the_session(site: GatewayProcess) -> None:
    web = signed_in(site)
    assert web.call("DELETE", "/api/session").status == 204
    assert web.call("GET", "/api/account").status == 401


# --- real clients -------------------------------------------------------------------------------


def test_curl_script_rotates_a_password(site: GatewayProcess, tmp_path: Any) -> None:
    """The README's script recipe, with curl: sign in, change the password, sign out."""
    curl = require_tool("curl")
    jar = tmp_path / "jar"
    base = [curl, "-sS", "--cacert", str(site.ca_file), "-b", str(jar), "-c", str(jar)]
    url = f"https://localhost:{site.web_port}"
    signin = run_client(
        [
            *base,
            "-H",
            "Content-Type: application/json",
            "-d",
            f'{{"email": "{USER}", "password": "{PASSWORD}"}}',
            f"{url}/api/session",
        ]
    )
    assert signin.returncode == 0, signin.stderr
    token = __import__("json").loads(signin.stdout)["csrf_token"]
    change = run_client(
        [
            *base,
            "-X",
            "PUT",
            "-w",
            "%{http_code}",
            "-H",
            "Content-Type: application/json",
            "-H",
            f"X-CSRF-Token: {token}",
            "-d",
            f'{{"current_password": "{PASSWORD}", "new_password": "{NEW_PASSWORD}", '
            f'"new_password_again": "{NEW_PASSWORD}"}}',
            f"{url}/api/password",
        ]
    )
    assert change.stdout.strip() == "204", change.stdout + change.stderr
    assert smtp_login(site, USER, NEW_PASSWORD)[0] == 235


def test_site_is_off_by_default(gateway: GatewayProcess) -> None:
    with pytest.raises(OSError):
        WebClient(gateway.web_port, gateway.ssl_context()).request("GET", "/")
    assert smtp_login(gateway, USER, PASSWORD)[0] == 235


# --- sessions (the clock is the only thing faked) -------------------------------------------------


def test_sessions_end_after_idle_time_and_maximum_age() -> None:
    now = [1000.0]
    table = SessionTable(idle=600, maximum=1800, clock=lambda: now[0])
    session = table.create(USER, "password", None)

    now[0] += 599
    assert table.get(session.token) is session
    now[0] += 601
    assert table.get(session.token) is None

    busy = table.create(USER, "password", None)
    for _ in range(3):
        now[0] += 500
        assert table.get(busy.token) is busy
    now[0] += 500  # 2000 s after sign-in, never idle for long
    assert table.get(busy.token) is None


def test_unknown_tokens_find_nothing() -> None:
    table = SessionTable(idle=600, maximum=1800, clock=lambda: 0.0)
    table.create(USER, "password", None)
    assert table.get("guessed") is None
    assert table.get(None) is None
