"""Log lines cannot be forged: whatever a client types stays inside its own field and line.

Rules proven here: in both log formats every record is exactly one line for any
reader that splits on Unicode line breaks (`str.splitlines`: LF, CR, VT, FF,
FS/GS/RS, NEL, U+2028, U+2029), JSON lines are pure ASCII, and text values read
back to exactly what was logged, so no value can add a field or a record.
Once with the formatters in-process, once through a real gateway whose
self-service sign-in logs the email address an unauthenticated client typed.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

import pytest

from submitgw.errors import AuthFailed, LoginLocked, PasswordExpired, TooManyLogins
from submitgw.services.audit import (
    JsonFormatter,
    Recorder,
    SessionTrail,
    TextFormatter,
    escape_text,
    text_value,
)
from submitgw.types import Identity
from tests.support.gateway import GatewayProcess
from tests.support.web import WebClient

LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
FORGED = "2026-01-01T00:00:00 info submitgw.audit: event=auth user=root@example.org result=ok"
HOSTILE = [
    f"mallory@example.org\n{FORGED}",
    f"mallory@example.org\r{FORGED}",
    'mallory@example.org\u2028{"event": "auth", "result": "ok"}',
    "mallory@example.org\x85result=ok",
    "a\u2029b\x00c\x1bd\x7fe\u202ef\ud800g",
    'x result=ok user="root@example.org"',
    'back\\slash\\n "quoted" tab\tend',
    "",
    "nbsp\u00a0ideographic\u3000space",
    "plain ünïcödé is kept",
]


def record(event: dict[str, Any] | None = None, msg: str = "%s", *args: Any) -> logging.LogRecord:
    rec = logging.LogRecord("submitgw.audit", logging.WARNING, __file__, 1, msg, args, None)
    if event is not None:
        rec.event = event
    return rec


_ESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|.)")
_FIELD = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|\S+)(?: |$)')


def unescape(text: str) -> str:
    def one(m: re.Match[str]) -> str:
        code = m.group(1)
        if len(code) > 1:
            return chr(int(code[1:], 16))
        return {"n": "\n", "r": "\r", "t": "\t"}.get(code, code)

    return _ESCAPE.sub(one, text)


def parse_text_line(line: str) -> tuple[str, dict[str, str]]:
    """A reader of the text format: (prefix, fields), each field read back exactly once."""
    prefix, _, body = line.partition(": ")
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(body):
        m = _FIELD.match(body, pos)
        assert m is not None, f"unreadable at {pos}: {body[pos:]!r}"
        value = m.group(2)
        if value.startswith('"'):
            value = value[1:-1]
        assert m.group(1) not in fields, f"field {m.group(1)} twice: {line!r}"
        fields[m.group(1)] = unescape(value)
        pos = m.end()
    return prefix, fields


@pytest.mark.parametrize("value", HOSTILE)
def test_text_event_is_one_line_and_reads_back_exactly(value: str) -> None:
    event = {"event": "auth", "user": value, "result": "failed"}

    line = TextFormatter().format(record(event))

    assert line.splitlines() == [line]
    assert not any(c in line for c in LINE_BREAKS)
    prefix, fields = parse_text_line(line)
    assert prefix.endswith(" warning submitgw.audit")
    assert fields == {"event": "auth", "user": value, "result": "failed"}


@pytest.mark.parametrize("value", HOSTILE)
def test_text_message_is_one_line(value: str) -> None:
    line = TextFormatter().format(record(None, "smarthost said: %s", value))

    assert line.splitlines() == [line]
    assert unescape(line.partition(": ")[2]) == f"smarthost said: {value}"


@pytest.mark.parametrize("value", HOSTILE)
def test_json_event_is_one_ascii_line_and_reads_back_exactly(value: str) -> None:
    event = {"event": "auth", "user": value, "addresses": [value, "b@example.org"]}

    line = JsonFormatter().format(record(event))

    assert line.isascii()
    assert line.splitlines() == [line]
    entry = json.loads(line)
    assert entry["user"] == value
    assert entry["addresses"] == [value, "b@example.org"]


def test_text_traceback_stays_on_its_line() -> None:
    try:
        raise ValueError("first\nsecond")
    except ValueError:
        rec = logging.LogRecord(
            "submitgw.smtp.relay", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )

    line = TextFormatter().format(rec)

    assert line.splitlines() == [line]
    assert "ValueError: first\\nsecond" in line


def test_plain_values_stay_readable() -> None:
    assert escape_text("alice@example.org") == "alice@example.org"
    assert text_value("alice@example.org") == "alice@example.org"
    assert text_value("certificate has expired") == '"certificate has expired"'
    assert text_value(None) == "None"
    assert text_value("a\u2028b") == "a\\u2028b"
    assert text_value("\U000e0001") == "\\U000e0001"


# --- through a real gateway -------------------------------------------------------------


def start_with_text_log(gw: GatewayProcess) -> None:
    gw.configure({"log": {"format": "text"}})
    gw.start()


FAST_LOCKOUT = {"limits": {"auth_delay": 0.01, "auth_max_delay": 0.02}}
TYPED = [HOSTILE[0], HOSTILE[2], HOSTILE[3]]


def sign_in_as_each(gw: GatewayProcess) -> None:
    web = WebClient(gw.web_port, gw.ssl_context())
    for email in TYPED:
        assert web.login(email, "not the password").status == 401


def log_lines(gw: GatewayProcess) -> list[str]:
    """The log as a reader that honours every Unicode line break sees it."""
    data = gw.log_path.read_bytes().decode("utf-8", "strict")
    return data.splitlines()


def test_gateway_json_log_keeps_typed_sign_in_names_on_their_lines(gateway_factory: Any) -> None:
    gw = gateway_factory(FAST_LOCKOUT, selfservice=True, process=True)

    sign_in_as_each(gw)
    gw.stop()

    entries = [json.loads(line) for line in log_lines(gw)]
    failed = [e for e in entries if e.get("event") == "auth" and e.get("session") == "web"]
    assert [e["user"] for e in failed] == [t.lower() for t in TYPED]
    assert all(e["result"] == "failed" for e in failed)
    assert gw.log_path.read_bytes().isascii()


def test_gateway_text_log_keeps_typed_sign_in_names_on_their_lines(gateway_factory: Any) -> None:
    gw = gateway_factory(FAST_LOCKOUT, selfservice=True, start=False, process=True)
    start_with_text_log(gw)

    sign_in_as_each(gw)
    gw.stop()

    lines = log_lines(gw)
    assert not [line for line in lines if not re.match(r"\d{4}-\d\d-\d\dT", line)]
    events = [parse_text_line(line)[1] for line in lines if " submitgw.audit: " in line]
    auth = [e for e in events if e.get("event") == "auth"]
    assert [e["user"] for e in auth] == [t.lower() for t in TYPED]
    assert all(e["result"] == "failed" for e in auth)
    assert not [e for e in events if e.get("user") == "root@example.org"]


def test_session_trail_tags_every_event_and_names_why_a_login_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    trail = SessionTrail(Recorder(), "s1", "submission", "192.0.2.7")
    with caplog.at_level(logging.INFO, logger="submitgw.audit"):
        trail.login_refused("PLAIN", "a@example.org", LoginLocked(0.0))
        trail.login_refused("PLAIN", "a@example.org", TooManyLogins())
        trail.login_refused("PLAIN", "a@example.org", PasswordExpired(None))
        trail.login_refused("PLAIN", None, AuthFailed())
        trail.login("LOGIN", Identity("a@example.org", "LOGIN", app_password="3 phone"))
        trail.sender_refused(None, "header", ["b@example.org"], "550 no")
        trail.ended(tls=None, user=None, cert_serial=None, messages=0, seconds=1.23456, end="x")
    events = [r.event for r in caplog.records]  # type: ignore[attr-defined]
    assert all(e["session"] == "s1" and e["client"] == "192.0.2.7" for e in events)
    assert [e.get("result") for e in events[:5]] == ["locked", "limited", "expired", "failed", "ok"]
    assert events[4]["app_password"] == "3 phone" and "app_password" not in events[0]
    assert events[5] == {
        "event": "sender",
        "session": "s1",
        "client": "192.0.2.7",
        "user": None,
        "check": "header",
        "addresses": ["b@example.org"],
        "reply": "550 no",
    }
    assert events[6]["listener"] == "submission" and events[6]["seconds"] == 1.235


class _Collect:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def record(self, event: Any) -> None:
        self.events.append(dict(event))


class _Broken:
    def record(self, event: Any) -> None:
        raise RuntimeError("sink down")


def test_every_sink_sees_each_logged_event_and_a_broken_sink_stops_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    collected = _Collect()
    recorder = Recorder([_Broken(), collected])
    trail = SessionTrail(recorder, "s2", "submissions", "192.0.2.8")
    with caplog.at_level(logging.INFO, logger="submitgw.audit"):
        trail.login("PLAIN", Identity("a@example.org", "PLAIN"))
        recorder.connection_refused(listener="submission", client="192.0.2.9", reason="cap")
        trail.tls_failed("alert")
    logged = [r.event for r in caplog.records if hasattr(r, "event")]  # type: ignore[attr-defined]
    assert collected.events == logged
    assert [e["event"] for e in collected.events] == ["auth", "connection", "tls"]
    assert sum("an event sink failed" in r.getMessage() for r in caplog.records) == 3
