"""The self-service HTTPS site: users change their password and manage app passwords.

Built on aiohttp because it is asyncio-native: the site runs in the gateway's
own event loop beside the SMTP listeners (no second process or thread pool of
its own), and it is a well-kept, widely deployed server. Argon2 work goes to
the same bounded pool as SMTP AUTH, database work to worker threads; failed
sign-ins count towards the same per-account and per-client lockouts as SMTP
AUTH (`Limiter.login`), and all failures get one generic answer.

Sign-in follows the account's policy as SMTP AUTH does: a certificate alone
only for "certificate" and "password-or-certificate" users, both for
"password+certificate" users, whose session stays bound to that certificate.
Changing the password needs the current one (or a certificate sign-in), checked
and counted like a sign-in, so a left-open session cannot take the account.

Sessions live in this process's memory: a gateway restart signs everyone out,
and behind a load balancer a browser must stay with one gateway. Every request
re-reads the account, so a disabled user, a revoked certificate, a changed
policy or a password changed anywhere (CLI, another gateway) ends the session
at once. Connections are capped and timed by `sitelistener`.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import html
import ipaddress
import logging
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from aiohttp import web

from submitgw.config import Config, Endpoint
from submitgw.errors import AuthFailed, LoginLocked, Need, Refusal
from submitgw.rules.passwords import PasswordRejected, is_expired
from submitgw.rules.policy import certificate_alone_allowed
from submitgw.services import audit
from submitgw.services.accounts import AccountService, Actor
from submitgw.services.authn import CertificateAuthenticator, PasswordAuthenticator, Verified
from submitgw.services.limiter import Limiter
from submitgw.services.offload import offload
from submitgw.store import CertificateStore, UserRecord, UserStore
from submitgw.store.errors import NotFound
from submitgw.types import CERTIFICATE, TWO_FACTOR, CertificateUser
from submitgw.web import pages
from submitgw.web.listener import CLOSE_GRACE, GuardedSite, Screen, SiteConnection, connection_of
from submitgw.web.replies import GENERIC_LOGIN_ERROR, WebError, web_error

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

COOKIE = "__Host-submitgw"
# Signed-out browsers get a token in this cookie and in the sign-in form (double submit).
LOGIN_COOKIE = "__Host-submitgw-login"
MAX_SESSIONS = 10_000
MAX_BODY = 64 * 1024
LINGER = 2.0
WRONG_CURRENT_PASSWORD = "The current password is wrong"
UNUSABLE_TEXT = "The text contains characters that cannot be used"

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Strict-Transport-Security": "max-age=31536000",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}


@dataclass
class WebSession:
    token: str
    user: str
    csrf: str
    method: str  # "password" or "certificate"
    started: float
    seen: float
    password_changed_at: datetime | None
    cert_fingerprint: str | None = None
    cert_serial: str | None = None
    # One-shot messages and the app password to show once, for the next page.
    flash: list[tuple[str, str]] = field(default_factory=list)
    new_secret: tuple[int, str, str] | None = None


class SessionTable:
    def __init__(self, idle: float, maximum: float, clock: Callable[[], float]) -> None:
        self.idle = idle
        self.maximum = maximum
        self._clock = clock
        self._sessions: dict[str, WebSession] = {}

    def create(
        self,
        user: str,
        method: str,
        changed: datetime | None,
        cert: CertificateUser | None = None,
    ) -> WebSession:
        self.prune()
        if len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions.values(), key=lambda s: s.seen)
            self.drop(oldest.token)
        now = self._clock()
        session = WebSession(
            secrets.token_urlsafe(32),
            user,
            secrets.token_urlsafe(32),
            method,
            now,
            now,
            changed,
            cert.fingerprint if cert else None,
            cert.serial if cert else None,
        )
        self._sessions[session.token] = session
        return session

    def get(self, token: str | None) -> WebSession | None:
        session = self._sessions.get(token) if token else None
        if session is None:
            return None
        now = self._clock()
        if now - session.seen > self.idle or now - session.started > self.maximum:
            self.drop(session.token)
            return None
        session.seen = now
        return session

    def expires_at(self, session: WebSession) -> datetime:
        end = min(session.seen + self.idle, session.started + self.maximum)
        return datetime.fromtimestamp(end, UTC)

    def drop(self, token: str) -> None:
        self._sessions.pop(token, None)

    def drop_user(self, user: str, keep: str | None = None) -> None:
        for token in [t for t, s in self._sessions.items() if s.user == user and t != keep]:
            self.drop(token)

    def prune(self) -> None:
        now = self._clock()
        for token, s in list(self._sessions.items()):
            if now - s.seen > self.idle or now - s.started > self.maximum:
                self.drop(token)


@dataclass(frozen=True)
class Visit:
    """A signed-in request: its session, the account as it is now, and what it may do."""

    session: WebSession
    record: UserRecord
    expired: bool


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def _usable(value: str) -> bool:
    """Whether text can be stored and hashed: JSON may carry lone surrogates, UTF-8 cannot."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(value: str) -> str:
    """Client-typed text made safe for a log line."""
    return value.encode("utf-8", "replace").decode("utf-8").lower()[:320]


def _client_ip(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if not peer:
        return "?"
    try:
        address = ipaddress.ip_address(peer[0])
    except ValueError:
        return str(peer[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


class SelfService:
    def __init__(
        self,
        cfg: Config,
        authenticator: PasswordAuthenticator,
        certificates: CertificateAuthenticator | None,
        limiter: Limiter | None,
        *,
        users: UserStore,
        cert_store: CertificateStore,
        accounts: AccountService,
        clock: Callable[[], float] = time.time,
        screen: Screen | None = None,
        recorder: audit.Recorder | None = None,
    ) -> None:
        self.cfg = cfg
        self.recorder = recorder or audit.Recorder()
        self.screen = screen
        self.auth = authenticator
        self.certificates = certificates
        self.limiter = limiter
        self.users = users
        self.cert_store = cert_store
        self.accounts = accounts
        site = cfg.selfservice
        self.sessions = SessionTable(
            site.session_idle_minutes * 60.0, site.session_max_minutes * 60.0, clock
        )
        self.site: GuardedSite | None = None

    def reconfigure(
        self,
        cfg: Config,
        context: ssl.SSLContext,
        certificates: CertificateAuthenticator | None,
    ) -> None:
        """Live reload: new connections take `context` and the site's caps and clocks;
        signed-in sessions are timed by the new lengths from their next request."""
        self.cfg = cfg
        self.certificates = certificates
        self.sessions.idle = cfg.selfservice.session_idle_minutes * 60.0
        self.sessions.maximum = cfg.selfservice.session_max_minutes * 60.0
        if self.site is not None:
            self.site.reconfigure(cfg.selfservice, context)

    # --- plumbing -----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._guard, self._errors, self._headers], client_max_size=MAX_BODY
        )
        app.add_routes(
            [
                web.get("/", self.page),
                web.get("/style.css", self.stylesheet),
                web.post("/login", self.form_login),
                web.post("/login/certificate", self.form_certificate_login),
                web.post("/logout", self.form_logout),
                web.post("/password", self.form_password),
                web.post("/app-passwords", self.form_add_app_password),
                web.post("/app-passwords/{id}/revoke", self.form_revoke_app_password),
                web.post("/api/session", self.api_login),
                web.delete("/api/session", self.api_logout),
                web.get("/api/account", self.api_account),
                web.put("/api/password", self.api_password),
                web.get("/api/app-passwords", self.api_app_passwords),
                web.post("/api/app-passwords", self.api_add_app_password),
                web.delete("/api/app-passwords/{id}", self.api_revoke_app_password),
                web.get("/api/certificates", self.api_certificates),
            ]
        )
        return app

    async def start(
        self,
        endpoint: Endpoint,
        context: ssl.SSLContext,
        bound: list[socket.socket] | None = None,
    ) -> tuple[web.AppRunner, list[socket.socket]]:
        """Serve on `endpoint`; the runner's `cleanup` stops it (see `web.listener`).

        Also returns the listening sockets, which know the port a port 0 became.
        """
        runner = web.AppRunner(
            self.app(),
            access_log=None,
            handle_signals=False,
            # A backstop only: the site's own clocks end idle connections first.
            keepalive_timeout=self.cfg.selfservice.idle_timeout + CLOSE_GRACE,
            # After a refused body, how long to read what is still coming before closing.
            lingering_time=LINGER,
        )
        await runner.setup()
        site = GuardedSite(
            runner,
            endpoint,
            context,
            self.cfg.selfservice,
            self.screen,
            self.recorder,
            bound=bound,
        )
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.site = site
        return runner, site.sockets

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Outermost: the connection's clocks, the access rules, and the body read in time."""
        conn = connection_of(request)
        if conn is None:
            return await handler(request)
        conn.request_started()
        try:
            # The body first, even from a refused client: closing on unread data would
            # reset the connection under the answer.
            refused = await self._read_body(request) if request.body_exists else None
            denied = self._refusal(conn)
            if denied is not None:
                refused, conn.end = denied, "access-denied"
            elif refused is not None and refused.status == 408:
                conn.end = "body-timeout"
            if refused is not None:
                response = self._error_response(request, refused)
                response.force_close()
                return response
            return await handler(request)
        finally:
            conn.request_finished()

    @staticmethod
    def _refusal(conn: SiteConnection) -> WebError | None:
        """The access rules' verdict on this connection's client, as an HTTP answer."""
        if conn.refusal is None:
            return None
        return web_error(conn.refusal)

    async def _read_body(self, request: web.Request) -> WebError | None:
        """Read the whole body within `body_timeout`; handlers then find it in memory."""
        try:
            await asyncio.wait_for(request.read(), self.cfg.selfservice.body_timeout)
        except TimeoutError:
            return WebError(408, "The request took too long")
        except web.HTTPException as exc:
            return WebError(exc.status, exc.reason)
        except ConnectionError:
            raise
        except Exception:
            return WebError(400, "The request body could not be read")
        return None

    @web.middleware
    async def _headers(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        response = await handler(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """The one place refusals become responses: JSON under /api, a page elsewhere."""
        try:
            return await handler(request)
        except WebError as err:
            return self._error_response(request, err)
        except Refusal as refusal:
            return self._error_response(request, web_error(refusal))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return self._error_response(request, WebError(exc.status, exc.reason))
        except Exception:
            log.exception("self-service request failed: %s %s", request.method, request.path)
            return self._error_response(
                request, WebError(500, "Something went wrong; try again later")
            )

    def _error_response(self, request: web.Request, err: WebError) -> web.Response:
        headers = {**SECURITY_HEADERS}
        if err.retry_after is not None:
            headers["Retry-After"] = str(err.retry_after)
        if request.path.startswith("/api/"):
            return web.json_response({"error": err.message}, status=err.status, headers=headers)
        body = pages.layout(
            "Error",
            f'<p class="error" id="error">{html.escape(err.message)}</p>'
            '<p><a href="/">Back</a></p>',
        )
        return web.Response(text=body, status=err.status, content_type="text/html", headers=headers)

    async def _db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await offload(functools.partial(fn, *args, **kwargs), Need.ACCOUNT)

    async def _peer(self, request: web.Request) -> CertificateUser | None:
        """The user of a valid client certificate on this connection, if any."""
        if self.certificates is None or request.transport is None:
            return None
        ssl_object = request.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        if not der:
            return None
        found, _why = await self.certificates.identify(der, _client_ip(request))
        if found is None or not found.source_allowed:
            return None
        return found

    async def _visit(self, request: web.Request) -> Visit | None:
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            return None
        record = await self._db(self.users.get, session.user)
        if record is None or not record.enabled or not await self._holds(request, session, record):
            self.sessions.drop(session.token)
            return None
        expired = session.method == "password" and is_expired(
            record.password_changed_at, record.password_expired, self.cfg.passwords
        )
        return Visit(session, record, expired)

    async def _holds(self, request: web.Request, session: WebSession, record: UserRecord) -> bool:
        """Whether the session still meets the account's policy, as SMTP AUTH would.

        A certificate, where the session or the policy needs one, must be the session's
        own, on this very connection, and pass the inventory now (not revoked, user enabled).
        """
        if session.method == "certificate":
            allowed = certificate_alone_allowed(record.auth_policy)
        else:
            # A password changed elsewhere (admin, another gateway) also ends the session
            # of whoever signed in with the old one.
            allowed = (
                record.auth_policy != CERTIFICATE
                and record.password_changed_at == session.password_changed_at
            )
        if not allowed:
            return False
        if session.method == "password" and record.auth_policy != TWO_FACTOR:
            return True
        cert = await self._peer(request)
        return (
            cert is not None
            and session.cert_fingerprint is not None
            and cert.user == record.email
            and hmac.compare_digest(cert.fingerprint, session.cert_fingerprint)
        )

    async def _require(self, request: web.Request, *, allow_expired: bool = False) -> Visit:
        visit = await self._visit(request)
        if visit is None:
            raise WebError(401, "Not signed in, or the session has ended")
        if visit.expired and not allow_expired:
            raise WebError(403, "Your password has expired: set a new one first")
        return visit

    def _actor(self, request: web.Request, visit: Visit) -> Actor:
        how = (
            f"certificate {visit.session.cert_serial}" if visit.session.cert_serial else "password"
        )
        return Actor(visit.record.email, f"selfservice from {_client_ip(request)} ({how})")

    @staticmethod
    def _check_csrf(expected: str, given: str | None) -> None:
        if not given or not hmac.compare_digest(expected.encode(), given.encode()):
            raise WebError(403, "CSRF token missing or wrong")

    @staticmethod
    def _same_site(request: web.Request) -> None:
        """Browsers say where a request came from; refuse other sites outright."""
        if request.headers.get("Sec-Fetch-Site") == "cross-site":
            raise WebError(403, "Cross-site request refused")

    # --- signing in (shared by the form and the API) ------------------------------------

    async def _check_password(
        self,
        request: web.Request,
        cert: CertificateUser | None,
        email: str,
        password: str,
        mechanism: str,
        refused: WebError,
    ) -> Verified:
        """The account password, through the lockouts SMTP AUTH uses; a wrong one is counted.

        Text that cannot be a password (a lone surrogate from JSON) is a counted failure
        too, answered 400 instead of `refused`, without costing a hash.
        """
        ip = _client_ip(request)
        usable = _usable(email) and _usable(password)

        async def verify() -> Verified:
            if not usable:
                raise AuthFailed()
            return await self.auth.verify_account(email, password, cert, ip)

        try:
            if self.limiter is None:
                found = await verify()
            else:
                found = await self.limiter.login(email.encode("utf-8", "replace"), ip, verify)
        except Refusal as err:
            self.recorder.auth_event(
                session="web",
                client=ip,
                mechanism=mechanism,
                user=_shown(email),
                ok=False,
                locked=isinstance(err, LoginLocked),
            )
            if isinstance(err, AuthFailed):
                if not usable:
                    raise WebError(400, UNUSABLE_TEXT) from err
                raise refused from err
            raise web_error(err) from err
        self.recorder.auth_event(
            session="web", client=ip, mechanism=mechanism, user=found.record.email, ok=True
        )
        return found

    async def _sign_in_password(self, request: web.Request, email: Any, password: Any) -> Visit:
        if not isinstance(email, str) or not isinstance(password, str) or not email or not password:
            raise WebError(401, GENERIC_LOGIN_ERROR)
        cert = await self._peer(request)
        found = await self._check_password(
            request,
            cert,
            email.strip(),
            password,
            "selfservice-password",
            WebError(401, GENERIC_LOGIN_ERROR),
        )
        record = found.record
        # Only a two-factor session is bound to the certificate it signed in with.
        bound = cert if record.auth_policy == TWO_FACTOR else None
        session = self.sessions.create(record.email, "password", record.password_changed_at, bound)
        return Visit(session, record, found.expired)

    async def _sign_in_certificate(self, request: web.Request) -> Visit:
        cert = await self._peer(request)
        ip = _client_ip(request)
        if cert is None or not certificate_alone_allowed(cert.auth_policy):
            # As on SMTP: a certificate alone identifies only users whose policy takes it.
            self.recorder.auth_event(
                session="web",
                client=ip,
                mechanism="selfservice-certificate",
                user=cert.user if cert else None,
                ok=False,
            )
            if cert is not None and cert.auth_policy == TWO_FACTOR:
                raise WebError(401, "Your account needs your password as well as the certificate")
            if cert is not None:
                raise WebError(401, "Your account signs in with its password")
            raise WebError(401, "No valid client certificate was presented")
        record = await self._db(self.users.get, cert.user)
        if (
            record is None
            or not record.enabled
            or not certificate_alone_allowed(record.auth_policy)
        ):
            raise WebError(401, "No valid client certificate was presented")
        self.recorder.auth_event(
            session="web", client=ip, mechanism="selfservice-certificate", user=cert.user, ok=True
        )
        session = self.sessions.create(cert.user, "certificate", record.password_changed_at, cert)
        return Visit(session, record, False)

    def _set_cookie(self, response: web.StreamResponse, session: WebSession) -> None:
        response.set_cookie(
            COOKIE,
            session.token,
            path="/",
            secure=True,
            httponly=True,
            samesite="Strict",
            max_age=int(self.sessions.maximum),
        )

    # --- the operations (shared by the form and the API) ---------------------------------

    async def _change_password(
        self, request: web.Request, visit: Visit, current: Any, new: Any, again: Any
    ) -> None:
        if not isinstance(new, str) or not isinstance(again, str) or not new:
            raise WebError(400, "Type the new password twice")
        if new != again:
            raise WebError(400, "The two new passwords differ")
        if not _usable(new):
            raise WebError(400, UNUSABLE_TEXT)
        await self._check_current(request, visit, current)
        try:
            await self.auth.run(
                self.accounts.change_password, visit.record.email, new, self._actor(request, visit)
            )
        except PasswordRejected as err:
            raise WebError(400, str(err)) from err
        except Refusal as err:
            raise web_error(err) from err
        record = await self._db(self.users.get, visit.record.email)
        visit.session.password_changed_at = record.password_changed_at if record else None
        # Other browsers signed in with the old password are signed out.
        self.sessions.drop_user(visit.record.email, keep=visit.session.token)

    async def _check_current(self, request: web.Request, visit: Visit, current: Any) -> None:
        """Proof that the account's owner is at the keyboard, not just their session.

        The current password, checked and counted like a sign-in. A session signed in
        with a certificate alone ("certificate" users have no usable password) is
        vouched for by that certificate on this connection, which `_visit` checked for
        this very request.
        """
        if visit.session.method == "certificate":
            return
        if not isinstance(current, str) or not current:
            raise WebError(400, "Type your current password")
        await self._check_password(
            request,
            await self._peer(request),
            visit.record.email,
            current,
            "selfservice-current-password",
            WebError(403, WRONG_CURRENT_PASSWORD),
        )

    async def _add_app_password(
        self, request: web.Request, visit: Visit, label: Any
    ) -> tuple[int, str, datetime, str]:
        if not isinstance(label, str):
            raise WebError(400, "Give the app password a label")
        if not _usable(label):
            raise WebError(400, UNUSABLE_TEXT)
        try:
            record, secret = await self.auth.run(
                self.accounts.add_app_password,
                visit.record.email,
                label,
                self._actor(request, visit),
            )
        except ValueError as err:
            raise WebError(400, str(err)) from err
        except Refusal as err:
            raise web_error(err) from err
        return record.id, record.label, record.created_at, secret

    async def _revoke_app_password(self, request: web.Request, visit: Visit, raw_id: str) -> str:
        try:
            app_id = int(raw_id)
            return await self._db(
                self.accounts.revoke_app_password,
                visit.record.email,
                app_id,
                self._actor(request, visit),
            )
        except (ValueError, NotFound) as err:
            raise WebError(404, "No such app password") from err

    async def _app_passwords(self, email: str) -> list[dict[str, Any]]:
        apps = await self._db(self.accounts.credentials.app_passwords, email)
        return [
            {
                "id": a.id,
                "label": a.label,
                "created_at": _iso(a.created_at),
                "last_used_at": _iso(a.last_used_at),
            }
            for a in apps
        ]

    async def _certificates(self, email: str) -> list[dict[str, Any]]:
        certs = await self._db(self.cert_store.list, email)
        return [
            {
                "serial": c.serial,
                "not_before": _iso(c.not_before),
                "not_after": _iso(c.not_after),
                "revoked_at": _iso(c.revoked_at),
            }
            for c in certs
        ]

    async def _account(self, visit: Visit) -> dict[str, Any]:
        email = visit.record.email
        changed = visit.record.password_changed_at
        max_age = self.cfg.passwords.max_age_days
        return {
            "user": email,
            "auth_policy": visit.record.auth_policy,
            "signed_in_with": visit.session.method,
            "password_changed_at": _iso(changed),
            "password_expires_at": _iso(changed + timedelta(days=max_age))
            if changed and max_age
            else None,
            "password_expired": visit.expired,
            "app_passwords": await self._app_passwords(email),
            "certificates": await self._certificates(email),
        }

    # --- JSON API -----------------------------------------------------------------------

    async def _json(self, request: web.Request) -> dict[str, Any]:
        if request.content_type != "application/json":
            raise WebError(415, "Send JSON (Content-Type: application/json)")
        try:
            body = await request.json()
        except (ValueError, LookupError, RecursionError) as err:
            # ValueError covers bad JSON and bad UTF-8; RecursionError deep nesting.
            raise WebError(400, "The body is not valid JSON") from err
        if not isinstance(body, dict):
            raise WebError(400, "The body must be a JSON object")
        return body

    async def _api_visit(self, request: web.Request, *, allow_expired: bool = False) -> Visit:
        visit = await self._require(request, allow_expired=allow_expired)
        if request.method != "GET":
            self._same_site(request)
            self._check_csrf(visit.session.csrf, request.headers.get("X-CSRF-Token"))
        return visit

    async def api_login(self, request: web.Request) -> web.Response:
        self._same_site(request)
        body = await self._json(request)
        if body.get("certificate") is True:
            visit = await self._sign_in_certificate(request)
        else:
            visit = await self._sign_in_password(request, body.get("email"), body.get("password"))
        session = visit.session
        response = web.json_response(
            {
                "user": session.user,
                "csrf_token": session.csrf,
                "expires_at": _iso(self.sessions.expires_at(session)),
                "password_expired": visit.expired,
            }
        )
        self._set_cookie(response, session)
        return response

    async def api_logout(self, request: web.Request) -> web.Response:
        visit = await self._api_visit(request, allow_expired=True)
        self.sessions.drop(visit.session.token)
        response = web.Response(status=204)
        response.del_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
        return response

    async def api_account(self, request: web.Request) -> web.Response:
        visit = await self._api_visit(request, allow_expired=True)
        return web.json_response(await self._account(visit))

    async def api_password(self, request: web.Request) -> web.Response:
        visit = await self._api_visit(request, allow_expired=True)
        body = await self._json(request)
        await self._change_password(
            request,
            visit,
            body.get("current_password"),
            body.get("new_password"),
            body.get("new_password_again"),
        )
        return web.Response(status=204)

    async def api_app_passwords(self, request: web.Request) -> web.Response:
        visit = await self._api_visit(request)
        return web.json_response(await self._app_passwords(visit.record.email))

    async def api_add_app_password(self, request: web.Request) -> web.Response:
        visit = await self._api_visit(request)
        body = await self._json(request)
        app_id, label, created, secret = await self._add_app_password(
            request, visit, body.get("label")
        )
        return web.json_response(
            {"id": app_id, "label": label, "created_at": _iso(created), "password": secret},
            status=201,
        )

    async def api_revoke_app_password(self, request: web.Request) -> web.Response:
        visit = await self._api_visit(request)
        await self._revoke_app_password(request, visit, request.match_info["id"])
        return web.Response(status=204)

    async def api_certificates(self, request: web.Request) -> web.Response:
        visit = await self._api_visit(request)
        return web.json_response(await self._certificates(visit.record.email))

    # --- HTML forms -----------------------------------------------------------------------

    async def stylesheet(self, request: web.Request) -> web.Response:
        return web.Response(text=pages.STYLE, content_type="text/css")

    async def page(self, request: web.Request) -> web.Response:
        visit = await self._visit(request)
        if visit is None:
            return await self._login_page(request)
        flash, visit.session.flash = visit.session.flash, []
        secret, visit.session.new_secret = visit.session.new_secret, None
        account = await self._account(visit)
        body = pages.account_page(account, visit.session.csrf, visit.expired, flash, secret)
        return web.Response(text=body, content_type="text/html")

    async def _login_page(
        self, request: web.Request, error: str | None = None, status: int = 200
    ) -> web.Response:
        token = secrets.token_urlsafe(32)
        cert = await self._peer(request)
        # The certificate button only where a certificate alone may sign in.
        cert_user = cert.user if cert and certificate_alone_allowed(cert.auth_policy) else None
        body = pages.login_page(token, cert_user, error)
        response = web.Response(text=body, content_type="text/html", status=status)
        response.set_cookie(
            LOGIN_COOKIE, token, path="/", secure=True, httponly=True, samesite="Strict"
        )
        return response

    async def _form(self, request: web.Request) -> dict[str, str]:
        self._same_site(request)
        if request.content_type != "application/x-www-form-urlencoded":
            raise WebError(415, "Send a form (application/x-www-form-urlencoded)")
        try:
            data = await request.post()
        except (ValueError, LookupError) as err:
            raise WebError(400, "The form could not be read") from err
        return {k: v for k, v in data.items() if isinstance(v, str)}

    def _redirect(self, session: WebSession | None = None) -> web.Response:
        response = web.Response(status=303, headers={"Location": "/"})
        if session is not None:
            self._set_cookie(response, session)
        return response

    async def _form_sign_in(
        self, request: web.Request, sign_in: Callable[[dict[str, str]], Awaitable[Visit]]
    ) -> web.Response:
        """Check the sign-in form's CSRF token, then sign in with what the form holds."""
        form = await self._form(request)
        self._check_csrf(request.cookies.get(LOGIN_COOKIE, ""), form.get("csrf"))
        try:
            visit = await sign_in(form)
        except WebError as err:
            # A page asking again, not an HTTP authentication challenge (which a 401
            # would announce without the WWW-Authenticate header it requires).
            status = 200 if err.status == 401 else err.status
            response = await self._login_page(request, err.message, status)
            if err.retry_after is not None:
                response.headers["Retry-After"] = str(err.retry_after)
            return response
        response = self._redirect(visit.session)
        response.del_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
        return response

    async def form_login(self, request: web.Request) -> web.Response:
        return await self._form_sign_in(
            request,
            lambda form: self._sign_in_password(request, form.get("email"), form.get("password")),
        )

    async def form_certificate_login(self, request: web.Request) -> web.Response:
        return await self._form_sign_in(request, lambda _form: self._sign_in_certificate(request))

    async def _form_visit(
        self, request: web.Request, *, allow_expired: bool = False
    ) -> tuple[Visit, dict[str, str]]:
        form = await self._form(request)
        visit = await self._visit(request)
        if visit is None:
            raise WebError(401, "Not signed in, or the session has ended")
        self._check_csrf(visit.session.csrf, form.get("csrf"))
        if visit.expired and not allow_expired:
            raise WebError(403, "Your password has expired: set a new one first")
        return visit, form

    async def form_logout(self, request: web.Request) -> web.Response:
        visit, _form = await self._form_visit(request, allow_expired=True)
        self.sessions.drop(visit.session.token)
        response = self._redirect()
        response.del_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
        return response

    async def form_password(self, request: web.Request) -> web.Response:
        visit, form = await self._form_visit(request, allow_expired=True)
        try:
            await self._change_password(
                request,
                visit,
                form.get("current_password"),
                form.get("new_password"),
                form.get("new_password_again"),
            )
        except WebError as err:
            visit.session.flash.append(("error", err.message))
        else:
            visit.session.flash.append(
                ("notice", "Password changed. Use the new password in your mail programs.")
            )
        return self._redirect()

    async def form_add_app_password(self, request: web.Request) -> web.Response:
        visit, form = await self._form_visit(request)
        try:
            app_id, label, _created, secret = await self._add_app_password(
                request, visit, form.get("label", "")
            )
        except WebError as err:
            visit.session.flash.append(("error", err.message))
        else:
            visit.session.new_secret = (app_id, label, secret)
        return self._redirect()

    async def form_revoke_app_password(self, request: web.Request) -> web.Response:
        visit, _form = await self._form_visit(request)
        try:
            label = await self._revoke_app_password(request, visit, request.match_info["id"])
        except WebError as err:
            visit.session.flash.append(("error", err.message))
        else:
            visit.session.flash.append(("notice", f"App password “{label}” revoked."))
        return self._redirect()
