"""Structured events: one per session, login, decision and message, never a secret.

Every event leaves through a `Recorder`: the log line first, then the sinks the
gateway adds (the database trail, metrics), so they all see the same events.

Events are plain dictionaries; the formatter renders them as JSON (one object a
line, for log shippers) or as `key=value` text. Callers pass only the fields
listed in the event functions, so no AUTH payload can slip into a log line.

Values come from clients (login names, addresses, TLS alerts), so neither format
lets them start a line or a field of their own: JSON is pure ASCII (U+2028, U+0085
and friends split lines for many readers), and text escapes every non-printable
character and quotes values with spaces, quotes or `=`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from submitgw.config import LogConfig
from submitgw.errors import LoginLocked, PasswordExpired, Refusal, TooManyLogins
from submitgw.rules.trail import smarthost_queue_id
from submitgw.types import CertificateVerdict, Identity

log = logging.getLogger("submitgw.audit")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        worker = getattr(record, "worker", None)
        if worker is not None:
            entry["worker"] = worker
        event = getattr(record, "event", None)
        if isinstance(event, dict):
            entry.update(event)
        else:
            entry["msg"] = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=True)


_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Characters that make a `key=value` field ambiguous unless the value is quoted.
_FIELD_BREAKERS = frozenset(' "=')


def _escape_char(char: str) -> str:
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape_text(text: str) -> str:
    """`text` with a backslash escape for every character Python does not call printable.

    That covers C0/C1 controls (CR, LF, NEL), line and paragraph separators, other
    Unicode spaces, format characters (bidi overrides) and lone surrogates; the ASCII
    space stays. Backslashes are doubled, so every escape reads back one way.
    """
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_escape_char(c) for c in text)


def text_value(value: object) -> str:
    """One `key=value` value: escaped, and in double quotes when it could look like more."""
    text = escape_text(str(value))
    if text and _FIELD_BREAKERS.isdisjoint(text):
        return text
    return '"' + text.replace('"', '\\"') + '"'


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, "event", None)
        when = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        if isinstance(event, dict):
            body = " ".join(f"{escape_text(str(k))}={text_value(v)}" for k, v in event.items())
        else:
            body = escape_text(record.getMessage())
        if record.exc_info and record.levelno >= logging.ERROR:
            body += f" error={text_value(self.formatException(record.exc_info))}"
        worker = getattr(record, "worker", None)
        name = escape_text(record.name) + ("" if worker is None else f"[{worker}]")
        return f"{when} {record.levelname.lower()} {name}: {body}"


class _WorkerField(logging.Filter):
    """Marks each line with the worker of `serve --workers` that wrote it."""

    def __init__(self, worker: int) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True


def setup_logging(cfg: LogConfig, worker: int | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if cfg.format == "json" else TextFormatter())
    if worker is not None:
        handler.addFilter(_WorkerField(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.level.upper())
    # aiosmtpd logs every command line (AUTH payloads included) at INFO/DEBUG.
    logging.getLogger("mail.log").setLevel(logging.CRITICAL)


class Sink(Protocol):
    """Takes events as they happen; it must neither block nor raise (queue, then work)."""

    def record(self, event: Mapping[str, Any]) -> None: ...


class Recorder:
    """The one way out for events: the log line, then every sink, in that order.

    Without sinks (admin commands, most tests) an event is a log line only.
    """

    def __init__(self, sinks: Iterable[Sink] = ()) -> None:
        self.sinks: list[Sink] = list(sinks)

    def emit(self, event: dict[str, Any], level: int = logging.INFO) -> None:
        log.log(level, "%s", event.get("event"), extra={"event": event})
        for sink in self.sinks:
            try:
                sink.record(event)
            except Exception:
                log.exception("an event sink failed")

    def session_event(
        self,
        *,
        session: str,
        listener: str,
        client: str,
        tls: str | None,
        user: str | None,
        cert_serial: str | None,
        messages: int,
        seconds: float,
        end: str,
    ) -> None:
        self.emit(
            {
                "event": "session",
                "session": session,
                "listener": listener,
                "client": client,
                "tls": tls,
                "user": user,
                "cert_serial": cert_serial,
                "messages": messages,
                "seconds": round(seconds, 3),
                "end": end,
            }
        )

    def message_event(
        self,
        *,
        session: str,
        client: str,
        user: str,
        mechanism: str | None,
        cert_serial: str | None,
        cert_fingerprint: str | None,
        app_password: str | None = None,
        queue_id: str | None = None,
        message_id: str | None = None,
        sender: str,
        recipients: Sequence[str],
        size: int,
        smarthost: str | None,
        reply: str,
        smarthost_seconds: float | None = None,
    ) -> None:
        """`recipients` is logged as a count and, in `recipient_list`, as the addresses.
        `smarthost_seconds`: how long the smarthost took over the message (DATA to its
        answer); None when the gateway refused it before it went there."""
        seconds = None if smarthost_seconds is None else round(smarthost_seconds, 3)
        self.emit(
            {
                "event": "message",
                "session": session,
                "client": client,
                "user": user,
                "mechanism": mechanism,
                "cert_serial": cert_serial,
                "cert_fingerprint": cert_fingerprint,
                "app_password": app_password,
                "queue_id": queue_id,
                "message_id": message_id,
                "sender": sender,
                "recipients": len(recipients),
                "recipient_list": list(recipients),
                "size": size,
                "smarthost": smarthost,
                "smarthost_queue_id": smarthost_queue_id(reply),
                "reply": reply,
                "smarthost_seconds": seconds,
            }
        )

    def auth_event(
        self,
        *,
        session: str,
        client: str,
        mechanism: str,
        user: str | None,
        ok: bool,
        locked: bool = False,
        expired: bool = False,
        limited: bool = False,
        app_password: str | None = None,
    ) -> None:
        """`locked`: refused unchecked because the name or the client is locked out;
        `expired`: the right password, refused because it is too old or expired by an admin;
        `limited`: refused unchecked, the name or client used up its successful logins."""
        result = (
            "ok"
            if ok
            else "locked"
            if locked
            else "limited"
            if limited
            else "expired"
            if expired
            else "failed"
        )
        event: dict[str, Any] = {
            "event": "auth",
            "session": session,
            "client": client,
            "mechanism": mechanism,
            "user": user,
            "result": result,
        }
        if app_password is not None:
            event["app_password"] = app_password
        self.emit(
            event,
            logging.INFO if ok else logging.WARNING,
        )

    def tls_failure(self, *, session: str, client: str, reason: str, listener: str) -> None:
        self.emit(
            {
                "event": "tls",
                "session": session,
                "listener": listener,
                "client": client,
                "result": "failed",
                "reason": reason,
            },
            logging.WARNING,
        )

    def smarthost_trouble(
        self, *, session: str, client: str, server: str, step: str, error: str, detail: str
    ) -> None:
        """A smarthost that could not be reached, went silent or away, or refused a step."""
        self.emit(
            {
                "event": "smarthost",
                "session": session,
                "client": client,
                "server": server,
                "step": step,
                "error": error,
                "detail": detail,
            },
            logging.INFO if error in ("4xx", "5xx") else logging.WARNING,
        )

    def certificate_event(self, *, session: str, client: str, verdict: CertificateVerdict) -> None:
        """A client certificate seen in a handshake: whose it is, or why it counts for nothing.

        The fingerprint is always there, so a refusal can be matched to the certificate;
        `user` is the inventory's (None before the inventory was asked).
        """
        self.emit(
            {
                "event": "certificate",
                "session": session,
                "client": client,
                "fingerprint_sha256": verdict.fingerprint,
                "serial": verdict.serial,
                "user": verdict.user,
                "result": "accepted" if verdict.ok else "rejected",
                "reason": None if verdict.flaw is None else verdict.flaw.value,
                "date": verdict.date.isoformat(timespec="seconds") if verdict.date else None,
            },
            logging.INFO if verdict.ok else logging.WARNING,
        )

    def connection_refused(self, *, listener: str, client: str, reason: str) -> None:
        """A socket closed at accept, before any TLS work: over a connection cap, stopping,
        or (behind a load balancer) without a trusted, timely, well-formed PROXY header."""
        self.emit(
            {
                "event": "connection",
                "listener": listener,
                "client": client,
                "result": "refused",
                "reason": reason,
            },
            logging.WARNING,
        )


@dataclass(frozen=True)
class SessionTrail:
    """One SMTP session's events, each already tagged with the session, client and listener.

    The session says what happened, once per event; which fields each event carries
    (and that no secret is among them) is decided here, not at every call site.
    """

    recorder: Recorder
    session: str
    listener: str
    client: str

    def tls_failed(self, reason: str) -> None:
        self.recorder.tls_failure(
            session=self.session, client=self.client, reason=reason, listener=self.listener
        )

    def smarthost(self, server: str, step: str, error: str, detail: str) -> None:
        """Trouble the relay reports (see `smtp.relay.Trouble`)."""
        self.recorder.smarthost_trouble(
            session=self.session,
            client=self.client,
            server=server,
            step=step,
            error=error,
            detail=detail,
        )

    def certificate(self, verdict: CertificateVerdict) -> None:
        self.recorder.certificate_event(session=self.session, client=self.client, verdict=verdict)

    def login(self, mechanism: str, identity: Identity) -> None:
        self.recorder.auth_event(
            session=self.session,
            client=self.client,
            mechanism=mechanism,
            user=identity.user,
            ok=True,
            app_password=identity.app_password,
        )

    def login_refused(self, mechanism: str, user: str | None, err: Refusal) -> None:
        """A failed AUTH; the log tells lockouts, login caps and expired passwords apart."""
        self.recorder.auth_event(
            session=self.session,
            client=self.client,
            mechanism=mechanism,
            user=user,
            ok=False,
            locked=isinstance(err, LoginLocked),
            limited=isinstance(err, TooManyLogins),
            expired=isinstance(err, PasswordExpired),
        )

    def sender_refused(
        self, identity: Identity | None, check: str, addresses: list[str], reply: str
    ) -> None:
        """An envelope sender (`check` "envelope") or From: ("header") the user may not use."""
        self.recorder.emit(
            {
                "event": "sender",
                "session": self.session,
                "client": self.client,
                "user": identity.user if identity else None,
                "check": check,
                "addresses": addresses,
                "reply": reply,
            }
        )

    def message(
        self,
        identity: Identity | None,
        *,
        queue_id: str,
        message_id: str | None,
        sender: str,
        recipients: Sequence[str],
        size: int,
        smarthost: str | None,
        reply: str,
        smarthost_seconds: float | None = None,
    ) -> None:
        self.recorder.message_event(
            session=self.session,
            client=self.client,
            user=identity.user if identity else "",
            mechanism=identity.mechanism if identity else None,
            cert_serial=identity.cert_serial if identity else None,
            cert_fingerprint=identity.cert_fingerprint if identity else None,
            app_password=identity.app_password if identity else None,
            queue_id=queue_id,
            message_id=message_id,
            sender=sender,
            recipients=recipients,
            size=size,
            smarthost=smarthost,
            reply=reply,
            smarthost_seconds=smarthost_seconds,
        )

    def ended(
        self,
        *,
        tls: str | None,
        user: str | None,
        cert_serial: str | None,
        messages: int,
        seconds: float,
        end: str,
    ) -> None:
        self.recorder.session_event(
            session=self.session,
            listener=self.listener,
            client=self.client,
            tls=tls,
            user=user,
            cert_serial=cert_serial,
            messages=messages,
            seconds=seconds,
            end=end,
        )
