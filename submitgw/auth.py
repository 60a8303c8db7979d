"""Password authentication: SASL PLAIN/LOGIN payloads -> an Identity, or one generic failure.

argon2id costs ~100 ms of CPU per verify, so verification (and the database read
that goes with it) runs in a bounded thread pool; when the pool and its queue are
full the client gets `454 4.7.0` at once instead of stalling every session.
Every failure path verifies a hash, so unknown, disabled and wrong-password
logins all cost the same time and get the same `535 5.7.8`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from submitgw.address import normalise_login
from submitgw.config import AuthConfig
from submitgw.errors import AuthBusy, AuthFailed, SmtpReply
from submitgw.store import UserStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identity:
    """Who a session is speaking for, carried to the Received header and the logs."""

    user: str
    mechanism: str


def make_hasher(cfg: AuthConfig) -> argon2.PasswordHasher:
    return argon2.PasswordHasher(
        time_cost=cfg.argon2_time_cost,
        memory_cost=cfg.argon2_memory_kib,
        parallelism=cfg.argon2_parallelism,
        type=argon2.Type.ID,
    )


def decode_sasl(blob: str) -> bytes:
    """Base64 as RFC 4954 wants it; `=` is an empty response, anything invalid is 501."""
    blob = blob.strip()
    if blob == "*":
        raise SmtpReply(501, "5.7.0", "Authentication cancelled")
    if blob == "=":
        return b""
    try:
        return base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SmtpReply(501, "5.5.2", "Cannot decode base64 response") from exc


def split_plain(payload: bytes) -> tuple[bytes, bytes, bytes]:
    """RFC 4616: authzid NUL authcid NUL passwd."""
    parts = payload.split(b"\x00")
    if len(parts) != 3:
        raise SmtpReply(501, "5.5.2", "Malformed PLAIN response")
    authzid, authcid, password = parts
    return authzid, authcid, password


class PasswordAuthenticator:
    def __init__(self, users: UserStore, cfg: AuthConfig) -> None:
        self._users = users
        self._hasher = make_hasher(cfg)
        self._dummy_hash = self._hasher.hash("not a password of anybody's")
        self._pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="argon2")
        self._capacity = cfg.workers + cfg.max_pending
        self._in_flight = 0

    @property
    def hasher(self) -> argon2.PasswordHasher:
        return self._hasher

    async def login(
        self, authcid: bytes, password: bytes, authzid: bytes, mechanism: str
    ) -> Identity:
        """Check a login off the event loop; raises AuthFailed, AuthBusy or 454."""
        if self._in_flight >= self._capacity:
            log.warning("auth pool saturated (%d in flight)", self._in_flight)
            raise AuthBusy()
        self._in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            user = await loop.run_in_executor(self._pool, self._check, authcid, password, authzid)
        except SmtpReply:
            raise
        except Exception as exc:
            log.error("credential store unavailable: %s", type(exc).__name__)
            raise SmtpReply(
                454, "4.7.0", "Temporary authentication failure, try again later"
            ) from exc
        finally:
            self._in_flight -= 1
        if user is None:
            raise AuthFailed()
        return Identity(user=user, mechanism=mechanism)

    def _check(self, authcid: bytes, password: bytes, authzid: bytes) -> str | None:
        """Runs in a worker thread. Always verifies exactly one hash."""
        try:
            login = normalise_login(authcid.decode("utf-8"))
            wanted = authzid.decode("utf-8").strip().lower()
        except UnicodeDecodeError:
            login, wanted = None, ""
        record = self._users.get(login) if login else None
        stored = record.password_hash if record else self._dummy_hash
        try:
            good = self._hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            good = False
        if not good or record is None or not record.enabled:
            return None
        if wanted and wanted != record.email:
            return None
        new_hash = None
        if self._hasher.check_needs_rehash(stored):
            new_hash = self._hasher.hash(password)
        self._users.record_login(record.email, new_hash)
        return record.email

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
