"""The self-service site against hostile clients: connection caps and clocks, access rules,
the current password, the authentication policy, and input that used to crash a request.

Real gateway processes over loopback; clients bind different 127.x addresses to be
different hosts.
"""

from __future__ import annotations

import http.client
import resource
import socket
import ssl
import struct
import time
import tomllib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from submitgw import config as config_mod
from submitgw.app.gateway import raise_fd_limit
from tests.support.gateway import PASSWORD, USER, GatewayProcess, run_cli
from tests.support.web import WebClient

NEW_PASSWORD = "a fresh passphrase for spring"
CHANGE = {
    "current_password": PASSWORD,
    "new_password": NEW_PASSWORD,
    "new_password_again": NEW_PASSWORD,
}
QUIET_AUTH = {"auth_delay": 0.01, "auth_max_delay": 0.02}
# Short clocks, so that each can be seen to run out.
CLOCKS = {
    "handshake_timeout": 1.0,
    "header_timeout": 2.0,
    "body_timeout": 1.0,
    "idle_timeout": 1.0,
}
# Slack for a loaded two-core machine on top of each clock.
SLACK = 3.0


def tcp(gw: GatewayProcess, source: str) -> socket.socket:
    return socket.create_connection(
        ("127.0.0.1", gw.web_port), timeout=10, source_address=(source, 0)
    )


def tls(gw: GatewayProcess, source: str) -> ssl.SSLSocket:
    return gw.ssl_context().wrap_socket(tcp(gw, source), server_hostname="127.0.0.1")


def seconds_until_closed(sock: socket.socket, limit: float = 10.0) -> float:
    """How long until the server ends the connection (reading whatever it says first)."""
    started = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError as exc:
        raise AssertionError(f"still open after {limit} s") from exc
    except (OSError, ssl.SSLError):
        pass  # reset or aborted: closed all the same
    finally:
        sock.close()
    return time.monotonic() - started


def reset(sock: socket.socket) -> None:
    """Close with a TCP RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def connection_ends(gw: GatewayProcess, client: str) -> list[str]:
    return [e["end"] for e in gw.log_events("site-connection") if e["client"] == client]


def wait_for_ends(gw: GatewayProcess, client: str, count: int, limit: float = 15.0) -> list[str]:
    deadline = time.monotonic() + limit
    while len(ends := connection_ends(gw, client)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return ends


def web(gw: GatewayProcess, context: ssl.SSLContext | None = None, **kw: Any) -> WebClient:
    return WebClient(gw.web_port, context or gw.ssl_context(), **kw)


def json_raw(client: WebClient, method: str, path: str, body: bytes) -> Any:
    headers = {"Content-Type": "application/json"}
    if client.csrf:
        headers["X-CSRF-Token"] = client.csrf
    return client.request(method, path, raw=body, headers=headers)


def smtp_code(gw: GatewayProcess, password: str) -> int:
    import smtplib

    with gw.smtp(login=False) as smtp:
        try:
            return smtp.login(USER, password)[0]
        except smtplib.SMTPResponseException as err:
            return err.smtp_code


# --- connection caps ------------------------------------------------------------------------


def test_connections_over_a_cap_are_closed_at_accept(gateway_factory: Any) -> None:
    gw = gateway_factory(
        {"selfservice": {"max_connections": 4, "max_connections_per_ip": 2}}, selfservice=True
    )
    held = [tls(gw, "127.0.0.50"), tls(gw, "127.0.0.50")]

    # The third from the same address is closed before it says anything: no TLS work.
    third = tcp(gw, "127.0.0.50")
    assert seconds_until_closed(third) < 1.0
    held += [tls(gw, "127.0.0.51"), tls(gw, "127.0.0.51")]
    # Four in all: a new address is turned away too.
    assert seconds_until_closed(tcp(gw, "127.0.0.52")) < 1.0
    assert wait_for_ends(gw, "127.0.0.50", 1) == ["too-many-connections-from-client"]
    assert wait_for_ends(gw, "127.0.0.52", 1) == ["too-many-connections"]

    # A closed connection gives its slot back.
    held.pop(0).close()
    wait_for_ends(gw, "127.0.0.50", 2)
    assert web(gw, source="127.0.0.50").request("GET", "/").status == 200
    for sock in held:
        sock.close()


def test_every_way_a_connection_ends_gives_its_slot_back_once(gateway_factory: Any) -> None:
    # Which clock ends a connection is the test above's; here the header clock need not
    # outlast the handshake clock, and each round waits for both.
    clocks = {**CLOCKS, "header_timeout": CLOCKS["handshake_timeout"]}
    gw = gateway_factory({"selfservice": {"max_connections_per_ip": 2, **clocks}}, selfservice=True)
    client = "127.0.0.53"
    for _ in range(2):
        garbage = tcp(gw, client)
        garbage.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP on the TLS port
        seconds_until_closed(garbage)
        tcp(gw, client).close()  # gone mid-handshake
        seconds_until_closed(tcp(gw, client))  # silent until the handshake timeout
        answered = tls(gw, client)
        answered.sendall(b"GET /style.css HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        assert answered.recv(4096).startswith(b"HTTP/1.1 200 ")
        reset(answered)  # a reset after a request
        partial = tls(gw, client)
        partial.sendall(b"GET / HTTP/1.1\r\n")
        seconds_until_closed(partial)  # header timeout
        assert web(gw, source=client).request("GET", "/").status == 200

    ends = wait_for_ends(gw, client, 12)
    assert Counter(ends) == {"tls-failed": 6, "closed": 4, "header-timeout": 2}, ends

    # Twelve connections came and went through a cap of two: both places are free again,
    # and no more than two (a slot released twice would admit a third).
    held = [tls(gw, client), tls(gw, client)]
    assert seconds_until_closed(tcp(gw, client)) < 1.0
    assert wait_for_ends(gw, client, 13)[-1] == "too-many-connections-from-client"
    for sock in held:
        sock.close()


# --- clocks ---------------------------------------------------------------------------------


def test_each_phase_of_a_connection_has_a_clock(gateway_factory: Any) -> None:
    """Each phase on its own connection, all at once: every clock is per connection, so
    the test waits for the longest one, not for their sum."""
    gw = gateway_factory({"selfservice": CLOCKS}, selfservice=True)
    client = "127.0.0.54"

    def no_client_hello() -> None:
        """No ClientHello: the handshake timeout."""
        assert 0.5 < seconds_until_closed(tcp(gw, client)) < CLOCKS["handshake_timeout"] + SLACK

    def silence_after_tls() -> None:
        """TLS up, then silence: the header clock runs from the connection."""
        assert 1.5 < seconds_until_closed(tls(gw, client)) < CLOCKS["header_timeout"] + SLACK

    def trickling_head() -> None:
        """A head trickling in, a line every 0.4 s: the header clock runs from its first byte."""
        slow = tls(gw, client)
        slow.sendall(b"GET / HTTP/1.1\r\nHost: gw.test\r\n")
        started = time.monotonic()
        slow.settimeout(0.4)
        with pytest.raises(OSError):  # written to until the server hangs up
            while time.monotonic() - started < 10:
                slow.sendall(b"X-Slow: 1\r\n")
                try:
                    if not slow.recv(4096):
                        raise ConnectionResetError("closed")
                except TimeoutError:
                    continue
        assert time.monotonic() - started < CLOCKS["header_timeout"] + SLACK
        slow.close()

    def body_stops_short() -> None:
        """A body that stops short: 408, and the connection is closed."""
        body = tls(gw, client)
        body.sendall(
            b"POST /api/session HTTP/1.1\r\nHost: gw.test\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"email": '
        )
        body.settimeout(CLOCKS["body_timeout"] + SLACK)
        assert body.recv(4096).startswith(b"HTTP/1.1 408 ")
        seconds_until_closed(body)

    def idle_after_an_answer() -> None:
        """Kept alive after an answer, then idle: the idle timeout."""
        conn = http.client.HTTPSConnection(
            "127.0.0.1", gw.web_port, context=gw.ssl_context(), source_address=(client, 0)
        )
        conn.request("GET", "/style.css")
        reply = conn.getresponse()
        reply.read()
        assert reply.status == 200 and not reply.will_close
        assert conn.sock is not None
        assert 0.5 < seconds_until_closed(conn.sock) < CLOCKS["idle_timeout"] + SLACK

    phases = (
        no_client_hello,
        silence_after_tls,
        trickling_head,
        body_stops_short,
        idle_after_an_answer,
    )
    with ThreadPoolExecutor(len(phases)) as pool:
        for future in [pool.submit(phase) for phase in phases]:
            future.result()

    ends = wait_for_ends(gw, client, 5)
    assert Counter(ends) == {
        "tls-failed": 1,
        "header-timeout": 2,
        "body-timeout": 1,
        "idle-timeout": 1,
    }, ends


SITE_LIMITS = [
    "max_connections",
    "max_connections_per_ip",
    "handshake_timeout",
    "header_timeout",
    "body_timeout",
    "idle_timeout",
]


@pytest.mark.parametrize("key", SITE_LIMITS)
def test_site_caps_and_clocks_must_be_positive(key: str, tmp_path: Any) -> None:
    with pytest.raises(config_mod.ConfigError, match=key):
        config_mod.from_dict({"selfservice": {key: 0}}, tmp_path)


def test_the_generated_config_lists_the_site_caps_and_clocks(tmp_path: Any) -> None:
    generated = tomllib.loads(config_mod.render_default_config("gw.test"))["selfservice"]
    cfg = config_mod.from_dict({}, tmp_path).selfservice
    assert {key: generated[key] for key in SITE_LIMITS} == {
        key: getattr(cfg, key) for key in SITE_LIMITS
    }


def test_open_file_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 64:
        pytest.skip("needs a finite hard limit above 64")
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    try:
        assert raise_fd_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --- access rules -----------------------------------------------------------------------------


def test_denied_clients_get_403_and_no_sign_in(gateway_factory: Any) -> None:
    deny_message = "Access denied by policy; write to postmaster@example.org"
    gw = gateway_factory(
        {"policy": {"deny_message": deny_message}, "limits": QUIET_AUTH},
        selfservice=True,
        start=False,
    )
    result = run_cli(gw.config, "access", "deny", "127.0.0.60")
    assert result.returncode == 0, result.stderr
    gw.start()
    denied = web(gw, source="127.0.0.60")

    page = denied.request("GET", "/")
    signin = denied.login(USER, PASSWORD)

    assert page.status == 403 and deny_message in page.text
    assert page.headers["Connection"] == "close"
    assert signin.status == 403 and signin.json() == {"error": deny_message}
    assert "__Host-submitgw" not in denied.cookies
    assert web(gw, source="127.0.0.61").login(USER, PASSWORD).status == 200
    decisions = [e["decision"] for e in gw.log_events("access") if e["client"] == "127.0.0.60"]
    assert decisions and set(decisions) == {"deny"}
    assert not [e for e in gw.log_events("auth") if e["client"] == "127.0.0.60"]


# --- the current password -----------------------------------------------------------------------


def test_a_password_change_needs_the_current_password(gateway_factory: Any) -> None:
    gw = gateway_factory(
        {"limits": {"auth_failures_per_account": 4, **QUIET_AUTH}}, selfservice=True
    )
    site = web(gw)
    assert site.login(USER, PASSWORD).status == 200
    wrong = {**CHANGE, "current_password": "not the password at all"}

    missing = site.call("PUT", "/api/password", {**CHANGE, "current_password": ""})
    refused = site.call("PUT", "/api/password", wrong)
    assert missing.status == 400
    assert refused.status == 403 and refused.json() == {"error": "The current password is wrong"}

    page = site.request("GET", "/")
    assert 'name="current_password"' in page.text
    form = site.request("POST", "/password", form={**wrong, "csrf": page.hidden()})
    assert form.status == 303
    assert "The current password is wrong" in site.request("GET", "/").text

    # Wrong current passwords count like failed sign-ins: the account locks, SMTP too.
    for _ in range(2):
        assert site.call("PUT", "/api/password", wrong).status == 403
    locked = site.call("PUT", "/api/password", CHANGE)
    assert locked.status == 429 and int(locked.headers["Retry-After"]) > 0
    assert smtp_code(gw, PASSWORD) == 454
    results = [
        e["result"]
        for e in gw.log_events("auth")
        if e["mechanism"] == "selfservice-current-password"
    ]
    assert results == ["failed"] * 4 + ["locked"]

    assert run_cli(gw.config, "user", "unlock", USER).returncode == 0
    assert smtp_code(gw, PASSWORD) == 235  # nothing was changed
    assert site.call("PUT", "/api/password", CHANGE).status == 204
    assert smtp_code(gw, NEW_PASSWORD) == 235


# --- the authentication policy -----------------------------------------------------------------


def test_a_certificate_alone_signs_in_no_password_user(gateway_factory: Any) -> None:
    gw = gateway_factory({"limits": QUIET_AUTH}, selfservice=True, start=False)
    assert run_cli(gw.config, "user", "set-auth", USER, "password").returncode == 0
    gw.start()
    cert = gw.issue_cert()
    with_cert = web(gw, cert.context(gw.ca_file))

    page = with_cert.request("GET", "/")
    api = with_cert.request("POST", "/api/session", json_body={"certificate": True})
    form = with_cert.request("POST", "/login/certificate", form={"csrf": page.hidden()})

    assert 'id="cert-login"' not in page.text
    assert api.status == 401
    assert form.status == 200 and 'id="login"' in form.text
    assert "__Host-submitgw" not in with_cert.cookies

    # For a "certificate" user it does, and the certificate stands for the password.
    assert run_cli(gw.config, "user", "set-auth", USER, "certificate").returncode == 0
    signin = with_cert.request("POST", "/api/session", json_body={"certificate": True})
    assert signin.status == 200
    with_cert.csrf = signin.json()["csrf_token"]
    assert 'name="current_password"' not in with_cert.request("GET", "/").text
    change = {k: v for k, v in CHANGE.items() if k != "current_password"}
    assert with_cert.call("PUT", "/api/password", change).status == 204


def test_a_two_factor_session_is_tied_to_its_certificate(gateway_factory: Any) -> None:
    gw = gateway_factory({"limits": QUIET_AUTH}, selfservice=True)
    cert = gw.issue_cert()
    password_only = web(gw)
    assert password_only.login(USER, PASSWORD).status == 200
    assert run_cli(gw.config, "user", "set-auth", USER, "password+certificate").returncode == 0
    # The policy now asks for more than that session has.
    assert password_only.call("GET", "/api/account").status == 401

    with_cert = web(gw, cert.context(gw.ca_file))
    assert with_cert.login(USER, PASSWORD).status == 200
    assert with_cert.call("GET", "/api/account").status == 200
    # The cookie without the certificate is worth nothing, and ends the session.
    stolen = web(gw, cookies=dict(with_cert.cookies), csrf=with_cert.csrf)
    assert stolen.call("GET", "/api/account").status == 401
    assert with_cert.call("GET", "/api/account").status == 401

    assert with_cert.login(USER, PASSWORD).status == 200
    assert with_cert.call("PUT", "/api/password", CHANGE).status == 204
    assert run_cli(gw.config, "pki", "revoke", cert.serial).returncode == 0
    assert with_cert.call("GET", "/api/account").status == 401


# --- input that used to crash a request ----------------------------------------------------------


def test_lone_surrogates_and_deep_nesting_get_400(gateway_factory: Any) -> None:
    gw = gateway_factory(
        {"limits": {"auth_failures_per_account": 3, **QUIET_AUTH}}, selfservice=True
    )
    site = web(gw)
    surrogate_password = b'{"email": "alice@example.org", "password": "x\\ud800"}'

    bad_email = json_raw(
        site, "POST", "/api/session", b'{"email": "\\udfff@x.org", "password": "x"}'
    )
    nested = json_raw(site, "POST", "/api/session", b"[" * 60000)
    bad_form = site.request(
        "POST",
        "/login",
        raw=b"email=alice%40example.org&password=\xff\xfe",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert bad_email.status == nested.status == bad_form.status == 400
    # Each one a failed sign-in: the third locks the account.
    for _ in range(3):
        assert json_raw(site, "POST", "/api/session", surrogate_password).status == 400
    assert web(gw).login(USER, PASSWORD).status == 429

    assert run_cli(gw.config, "user", "unlock", USER).returncode == 0
    assert site.login(USER, PASSWORD).status == 200
    for body in (
        b'{"current_password": "x\\ud800", "new_password": "n", "new_password_again": "n"}',
        b'{"current_password": "%s", "new_password": "long enough \\ud800 passphrase", '
        b'"new_password_again": "long enough \\ud800 passphrase"}' % PASSWORD.encode(),
    ):
        assert json_raw(site, "PUT", "/api/password", body).status == 400
    assert json_raw(site, "POST", "/api/app-passwords", b'{"label": "\\ud800"}').status == 400
    assert json_raw(site, "POST", "/api/app-passwords", b'{"label": ' * 6000).status == 400
    assert site.call("GET", "/api/app-passwords").json() == []
    assert smtp_code(gw, PASSWORD) == 235

    log = gw.log_text()
    assert "Traceback" not in log
    assert '"level": "error"' not in log
