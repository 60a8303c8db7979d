"""Password authentication: SASL PLAIN/LOGIN payloads -> an Identity, or one generic failure.

argon2id costs ~100 ms of CPU per verify, so verification (and the database read
that goes with it) runs in a bounded thread pool; when the pool and its queue are
full the client gets `454 4.7.0` at once instead of stalling every session. One
client address or login name holds only a few of its places (`pool.PoolShares`),
so a loop of logins, even with the right password, cannot keep others out. A
place is given back when the work is over, not when the client stops waiting:
a client that hangs up mid-verify still holds it while argon2 runs.
Every failure path verifies a hash, so unknown, disabled and wrong-password
logins all cost the same time and get the same `535 5.7.8`.

A correct SMTP password is remembered for a few minutes (`logincache`): the next
login with it reads the account's row, off the loop but outside the argon2 pool
(it needs no place there and waits behind no verification), and skips argon2 if
the row still carries the credential generation the password was verified under.
Every other check runs as for any login. Anything short of such a success goes the
full way through argon2, so no failure is ever answered faster than before.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import ParamSpec, TypeVar

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography import x509

import pki
from submitgw.config import AuthConfig, PasswordsConfig
from submitgw.errors import AuthBusy, AuthFailed, Kind, Need, PasswordExpired, Refusal, Unavailable
from submitgw.rules.access import source_allowed
from submitgw.rules.address import normalise_login
from submitgw.rules.certificates import Facts, facts, judged
from submitgw.rules.limits import account_key, client_key
from submitgw.rules.passwords import app_password_form, is_expired
from submitgw.rules.policy import password_allowed
from submitgw.services.logincache import LoginCache, Remembered
from submitgw.services.offload import offload
from submitgw.services.pool import PoolShares
from submitgw.store import (
    CertificateStore,
    CredentialStore,
    SenderStore,
    UserNetworkStore,
    UserNotFound,
    UserRecord,
    UserStore,
)
from submitgw.types import CertificateFlaw, CertificateUser, CertificateVerdict, Identity

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class AppPasswordUsed:
    id: int
    label: str


@dataclass(frozen=True)
class Verified:
    """A password that checked out: the account, and the app password if one was used."""

    record: UserRecord
    app: AppPasswordUsed | None
    expired: bool
    # What the account may send as, read in the same trip (None without a sender store).
    senders: tuple[str, ...] | None = None


def make_hasher(cfg: AuthConfig) -> argon2.PasswordHasher:
    return argon2.PasswordHasher(
        time_cost=cfg.argon2_time_cost,
        memory_cost=cfg.argon2_memory_kib,
        parallelism=cfg.argon2_parallelism,
        type=argon2.Type.ID,
    )


@dataclass(frozen=True)
class Hashing:
    """The hasher and the dummy hash that unknown logins are checked against, made with the
    same parameters so that an unknown login costs what a known one does."""

    hasher: argon2.PasswordHasher
    dummy_hash: str

    @classmethod
    def make(cls, cfg: AuthConfig) -> Hashing:
        """Blocking: hashes once (~0.1 s with the defaults); not on the event loop."""
        hasher = make_hasher(cfg)
        return cls(hasher, hasher.hash("not a password of anybody's"))


# How stale an account's recorded last login may be before a login writes it again.
LAST_LOGIN_RESOLUTION = timedelta(seconds=60)
# Certificates whose facts (signature, extensions) a gateway keeps; then it starts over.
MAX_FACTS = 1024


def login_note_due(last_login: datetime | None, now: datetime) -> bool:
    """Whether a login must be written: the first one, or the first in a minute."""
    return last_login is None or not timedelta(0) <= now - last_login < LAST_LOGIN_RESOLUTION


def sender_list(store: SenderStore | None, email: str) -> tuple[str, ...] | None:
    """In a worker thread, with the login's own read: None when there is nothing to read
    from, or the user went away meanwhile (the session then reads at MAIL and refuses)."""
    if store is None:
        return None
    try:
        return tuple(store.allowed(email))
    except UserNotFound:
        return None


def decode_sasl(blob: str) -> bytes:
    """Base64 as RFC 4954 wants it; `=` is an empty response, anything invalid is 501."""
    blob = blob.strip()
    if blob == "*":
        raise Refusal(Kind.AUTH_CANCELLED)
    if blob == "=":
        return b""
    try:
        return base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Refusal(Kind.BAD_BASE64) from exc


def split_plain(payload: bytes) -> tuple[bytes, bytes, bytes]:
    """RFC 4616: authzid NUL authcid NUL passwd."""
    parts = payload.split(b"\x00")
    if len(parts) != 3:
        raise Refusal(Kind.BAD_PLAIN)
    authzid, authcid, password = parts
    return authzid, authcid, password


class PasswordAuthenticator:
    def __init__(
        self,
        users: UserStore,
        cfg: AuthConfig,
        networks: UserNetworkStore | None = None,
        credentials: CredentialStore | None = None,
        passwords: PasswordsConfig | None = None,
        selfservice_url: str | None = None,
        hashing: Hashing | None = None,
        clock: Callable[[], float] = time.monotonic,
        senders: SenderStore | None = None,
    ) -> None:
        self._users = users
        self._networks = networks
        self._senders = senders
        self._credentials = credentials
        self._passwords = passwords or PasswordsConfig()
        self.selfservice_url = selfservice_url
        self._hashing = hashing or Hashing.make(cfg)
        self.cache = LoginCache(cfg.success_cache_entries, cfg.success_cache_seconds, clock)
        self._pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="argon2")
        self.shares = PoolShares(
            cfg.workers + cfg.max_pending, cfg.max_pending_per_ip, cfg.max_pending_per_account
        )

    @property
    def hasher(self) -> argon2.PasswordHasher:
        return self._hashing.hasher

    def reconfigure(
        self,
        cfg: AuthConfig,
        passwords: PasswordsConfig,
        selfservice_url: str | None,
        hashing: Hashing | None = None,
    ) -> None:
        """Live reload, for the logins that start from now on: the pool's waiting places and
        shares, the success cache's bounds, the password rules and, when the argon2
        parameters changed, `hashing` (made off the event loop). The number of workers
        stays: the pool is never rebuilt."""
        self.shares.resize(
            cfg.workers + cfg.max_pending, cfg.max_pending_per_ip, cfg.max_pending_per_account
        )
        self.cache.resize(cfg.success_cache_entries, cfg.success_cache_seconds)
        self._passwords = passwords
        self.selfservice_url = selfservice_url
        if hashing is not None:
            self._hashing = hashing

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run argon2 work in the bounded pool; AuthBusy when it is full, Unavailable when the
        store fails."""
        return await self._run(None, None, functools.partial(fn, *args, **kwargs))

    async def _run(self, client_ip: str | None, authcid: bytes | None, call: Callable[[], T]) -> T:
        """`run`, counted against the client's and the login name's share of the pool."""
        client = client_key(client_ip) if client_ip is not None else None
        account = account_key(authcid) if authcid is not None else None
        share = self.shares.claim(client, account)
        if share is None:
            log.warning(
                "auth pool: %s share full (%d in flight)",
                self.shares.refusal(client, account) or "pool",
                self.shares.holding(),
            )
            raise AuthBusy()
        try:
            # Released before the loop hears of the result, so the place is free when the
            # caller resumes.
            return await offload(
                call, Need.LOGIN, pool=self._pool, on_done=lambda _: share.release()
            )
        except Unavailable:
            share.release()  # the pool was shut down and never took the work
            raise

    async def login(
        self,
        authcid: bytes,
        password: bytes,
        authzid: bytes,
        mechanism: str,
        cert: CertificateUser | None = None,
        client_ip: str = "?",
    ) -> Identity:
        """SMTP AUTH: the password or an app password; raises AuthFailed, PasswordExpired,
        AuthBusy or Unavailable."""
        key = self._cache_key(authcid, password)
        remembered = self.cache.get(key) if key is not None else None
        found = None
        if remembered is not None:
            recall = functools.partial(self._recall, remembered, authcid, authzid, cert, client_ip)
            found = await offload(recall, Need.LOGIN)
            if found is not None:
                self.cache.hit()
        if found is None:
            check = functools.partial(
                self._check, authcid, password, authzid, cert, client_ip, allow_app=True
            )
            found = await self._run(client_ip, authcid, check)
            if key is not None:
                self._remember(key, found)
        if found is None:
            raise AuthFailed()
        if found.app is None and found.expired:
            raise PasswordExpired(self.selfservice_url)
        app = f"{found.app.id} {found.app.label}" if found.app else None
        if cert is not None:
            return Identity(
                found.record.email,
                mechanism,
                cert.serial,
                cert.fingerprint,
                app,
                senders=found.senders,
            )
        return Identity(found.record.email, mechanism, app_password=app, senders=found.senders)

    async def verify_account(
        self, login: str, password: str, cert: CertificateUser | None, client_ip: str
    ) -> Verified:
        """Self-service sign-in: the account password only (never an app password),
        accepted even when expired, so that it can set a new one."""
        authcid = login.encode()
        check = functools.partial(
            self._check, authcid, password.encode(), b"", cert, client_ip, allow_app=False
        )
        found = await self._run(client_ip, authcid, check)
        if found is None:
            raise AuthFailed()
        return found

    def _cache_key(self, authcid: bytes, password: bytes) -> bytes | None:
        """Where a success of this login would be remembered; None when none may be."""
        if not self.cache.enabled:
            return None
        try:
            login = normalise_login(authcid.decode("utf-8"))
        except UnicodeDecodeError:
            return None
        return self.cache.key(login, password) if login else None

    def _remember(self, key: bytes, found: Verified | None) -> None:
        """After argon2: remember a success under the generation read *before* the
        verification, so a change committed meanwhile voids it at the next login."""
        if found is None:
            self.cache.drop(key)
            return
        app_id, label = (found.app.id, found.app.label) if found.app else (None, "")
        self.cache.put(key, found.record.id, found.record.credential_generation, app_id, label)

    @staticmethod
    def _names(authcid: bytes, authzid: bytes) -> tuple[str | None, str]:
        try:
            return normalise_login(authcid.decode("utf-8")), authzid.decode("utf-8").strip().lower()
        except UnicodeDecodeError:
            return None, ""

    def _check(
        self,
        authcid: bytes,
        password: bytes,
        authzid: bytes,
        cert: CertificateUser | None,
        client_ip: str,
        allow_app: bool,
    ) -> Verified | None:
        """Runs in a worker thread. Always verifies exactly one hash.

        A password shaped like an app password is checked against the app
        password its first group selects, if the user has one; otherwise, like
        every other password, against the account's hash. The account's row is
        read before the app password, so that the generation a success carries
        is never newer than the app password it vouches for.
        """
        hashing = self._hashing
        login, wanted = self._names(authcid, authzid)
        # Read for every attempt, known user or not, so the queries reveal nothing.
        record, networks = self._account(login)
        app = None
        form = app_password_form(password) if allow_app else None
        if form is not None and login and self._credentials is not None:
            app = self._credentials.find_app_password(login, form[0])
        if app is not None and form is not None:
            stored, secret = app.password_hash, form[1].encode()
        else:
            stored, secret = (record.password_hash if record else hashing.dummy_hash), password
        try:
            good: bool = hashing.hasher.verify(stored, secret)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            good = False
        if not good or record is None:
            return None
        used = AppPasswordUsed(app.id, app.label) if app is not None else None
        found = self._admit(record, networks, used, wanted, cert, client_ip)
        if found is None:
            return None
        new_hash = None
        if used is None and not found.expired and hashing.hasher.check_needs_rehash(stored):
            new_hash = hashing.hasher.hash(password)
        self._note(found, new_hash)
        return found

    def _recall(
        self,
        remembered: Remembered,
        authcid: bytes,
        authzid: bytes,
        cert: CertificateUser | None,
        client_ip: str,
    ) -> Verified | None:
        """Runs in a worker thread: a remembered password, without argon2, if the account
        has not changed since it was verified and may log in now; else None, and the
        login goes the full way (so that a refusal costs what it always did)."""
        login, wanted = self._names(authcid, authzid)
        record, networks = self._account(login)
        if record is None:
            return None
        if (record.id, record.credential_generation) != (remembered.user_id, remembered.generation):
            return None
        used = None
        if remembered.app_id is not None:
            used = AppPasswordUsed(remembered.app_id, remembered.app_label)
        found = self._admit(record, networks, used, wanted, cert, client_ip)
        if found is not None:
            self._note(found, None)
        return found

    def _account(self, login: str | None) -> tuple[UserRecord | None, list[str]]:
        """The account and its networks (one query when networks are kept)."""
        if not login:
            return None, []
        if self._networks is not None:
            return self._networks.user_and_networks(login)
        return self._users.get(login), []

    def _admit(
        self,
        record: UserRecord,
        networks: list[str],
        app: AppPasswordUsed | None,
        wanted: str,
        cert: CertificateUser | None,
        client_ip: str,
    ) -> Verified | None:
        """The right password: whether its account may log in, here and now."""
        if not record.enabled:
            return None
        if wanted and wanted != record.email:
            return None
        if not password_allowed(record.auth_policy, record.email, cert):
            return None
        if not source_allowed(networks, client_ip):
            return None
        expired = is_expired(record.password_changed_at, record.password_expired, self._passwords)
        return Verified(record, app, expired, sender_list(self._senders, record.email))

    def _note(self, found: Verified, new_hash: str | None) -> None:
        """Record the login (and the app password's use); an expired password is not a
        login yet.

        The account's last login is kept to the minute: a mail client logging in
        for every message would otherwise cost a write transaction per message.
        An app password's last use is always written.
        """
        if found.app is not None and self._credentials is not None:
            self._credentials.app_password_used(found.app.id)
            self._users.record_login(found.record.email)
        elif not found.expired and (
            new_hash is not None or login_note_due(found.record.last_login_at, datetime.now(UTC))
        ):
            self._users.record_login(found.record.email, new_hash)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class CertificateAuthenticator:
    """Judges a TLS client certificate: a `CertificateVerdict`, usable or with its flaw.

    The handshake takes whatever a client offers, so `rules.certificates.judge`
    checks the certificate itself (issuer, validity, not a CA, clientAuth, a
    mailbox); this adds what only the database knows, asked on every session, so
    a revocation or a disabled user takes effect at the next connection on every
    gateway. What the certificate is under the CA (its signature, its extensions)
    cannot change, so it is worked out once per certificate and kept (`MAX_FACTS`).
    """

    def __init__(
        self,
        certificates: CertificateStore,
        ca_cert: x509.Certificate,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        senders: SenderStore | None = None,
    ) -> None:
        self._certificates = certificates
        # The CA and what is known of certificates under it, (fingerprint, serial, facts) by
        # fingerprint, swapped together in one step so no facts outlive their CA.
        self._trust: tuple[x509.Certificate, dict[str, tuple[str, Facts]]] = (ca_cert, {})
        self._clock = clock
        # What the certificate's user may send as is read with the certificate: one trip.
        self._senders = senders

    def reconfigure(self, ca_cert: x509.Certificate) -> None:
        """Live reload: certificates judged from now on must come from `ca_cert`."""
        self._trust = (ca_cert, {})

    async def judge(
        self, cert: x509.Certificate | bytes, client_ip: str | None = None
    ) -> CertificateVerdict:
        """The verdict on `cert` (an x509 object or its DER); never raises."""
        fingerprint = pki.fingerprint_sha256(cert)
        try:
            return await offload(
                lambda: self._judge(cert, fingerprint, client_ip), Need.CERTIFICATES
            )
        except Unavailable:
            return CertificateVerdict(fingerprint, flaw=CertificateFlaw.UNCHECKED)
        except Exception as exc:
            log.error("certificate check failed: %s", type(exc).__name__)
            return CertificateVerdict(fingerprint, flaw=CertificateFlaw.UNCHECKED)

    async def identify(
        self, der: bytes, client_ip: str | None = None
    ) -> tuple[CertificateUser | None, str]:
        """(the user, "ok") or (None, the flaw): `judge` for callers that need no facts."""
        verdict = await self.judge(der, client_ip)
        return verdict.holder, verdict.flaw or "ok"

    def _judge(
        self, cert_or_der: x509.Certificate | bytes, fingerprint: str, client_ip: str | None
    ) -> CertificateVerdict:
        """Runs in a worker thread: the database is asked only about a certificate we issued."""
        ca, kept = self._trust
        known = kept.get(fingerprint)
        if known is None:
            try:
                cert = (
                    cert_or_der
                    if isinstance(cert_or_der, x509.Certificate)
                    else x509.load_der_x509_certificate(cert_or_der)
                )
                serial = pki.format_serial(cert.serial_number)
            except ValueError:
                return CertificateVerdict(fingerprint, flaw=CertificateFlaw.NOT_OURS)
            known = serial, facts(cert, ca)
            if len(kept) >= MAX_FACTS:
                kept.clear()
            kept[fingerprint] = known
        serial, what = known
        finding = judged(what, self._clock())
        if finding is not None:
            return CertificateVerdict(fingerprint, serial, flaw=finding.flaw, date=finding.date)
        found = self._certificates.lookup(fingerprint)
        if found is None:
            return CertificateVerdict(fingerprint, serial, flaw=CertificateFlaw.NOT_IN_INVENTORY)
        verdict = functools.partial(CertificateVerdict, fingerprint, found.serial, found.email)
        if found.revoked:
            return verdict(flaw=CertificateFlaw.REVOKED, date=found.revoked_at)
        if not found.user_enabled:
            return verdict(flaw=CertificateFlaw.USER_DISABLED)
        if client_ip is not None and not source_allowed(list(found.networks), client_ip):
            return verdict(flaw=CertificateFlaw.OUTSIDE_NETWORKS)
        holder = CertificateUser(
            found.email,
            found.serial,
            fingerprint,
            found.auth_policy,
            senders=sender_list(self._senders, found.email),
        )
        return verdict(holder=holder)
