"""Account changes shared by the CLI and the self-service site.

Each change applies the password rules, writes the database in one
transaction (which also moves the user's credential generation on, voiding the
logins gateways remember) and leaves a trail entry (who, from where, when) in the
database and as an `account` log event. A change is in force at the next AUTH on
every gateway sharing the database.
Synchronous: the site calls these from its argon2 worker pool.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import argon2

from submitgw.config import AuthConfig, PasswordsConfig
from submitgw.rules.passwords import (
    app_password_form,
    check_label,
    check_new_password,
    new_app_password,
)
from submitgw.services import audit
from submitgw.services.authn import make_hasher
from submitgw.store import AppPasswordRecord, CredentialStore, Database, UserNotFound, UserStore
from submitgw.store.users import UserRecord, normalise_email


@dataclass(frozen=True)
class Actor:
    """Who made a change and from where: `admin:root` / `cli on gw1`, or the user / their IP."""

    who: str
    source: str


class AccountService:
    def __init__(
        self,
        db: Database,
        auth: AuthConfig,
        passwords: PasswordsConfig,
        hasher: argon2.PasswordHasher | None = None,
        recorder: audit.Recorder | None = None,
    ) -> None:
        self.recorder = recorder or audit.Recorder()
        self.users = UserStore(db)
        self.credentials = CredentialStore(db)
        self.cfg = passwords
        self.hasher = hasher or make_hasher(auth)

    def reconfigure(self, auth: AuthConfig, passwords: PasswordsConfig) -> None:
        """Live reload: later changes follow these password rules and hash with these
        argon2 parameters."""
        self.cfg = passwords
        self.hasher = make_hasher(auth)

    def _trail(self, email: str, action: str, actor: Actor, detail: str = "") -> None:
        email = normalise_email(email)
        self.credentials.record(email, action, actor.who, actor.source, detail)
        self.recorder.emit(
            {
                "event": "account",
                "user": email,
                "action": action,
                "actor": actor.who,
                "source": actor.source,
                "detail": detail,
            },
            logging.INFO,
        )

    def create_user(
        self, email: str, password: str | None, policy: str, actor: Actor
    ) -> UserRecord:
        """`password` None: a random one nobody knows (certificate-only users)."""
        if password is None:
            password = new_app_password()
        else:
            check_new_password(password, email, self.cfg, [], self.hasher)
        record = self.users.add(email, self.hasher.hash(password), auth_policy=policy)
        self._trail(record.email, "user-added", actor, f"auth {policy}")
        return record

    def change_password(self, email: str, password: str, actor: Actor) -> None:
        """Raises PasswordRejected (with the rule broken) or UserNotFound."""
        recent = self.credentials.recent_hashes(email, self.cfg.history)
        check_new_password(password, email, self.cfg, recent, self.hasher)
        self.credentials.change_password(email, self.hasher.hash(password), keep=self.cfg.history)
        self._trail(email, "password-changed", actor)

    def expire_password(self, email: str, actor: Actor) -> None:
        self.credentials.expire_password(email)
        self._trail(email, "password-expired", actor)

    def add_app_password(
        self, email: str, label: str, actor: Actor
    ) -> tuple[AppPasswordRecord, str]:
        """The new record and its password, which is stored only as a hash."""
        label = check_label(label)
        if self.users.get(email) is None:
            raise UserNotFound(normalise_email(email))
        for _ in range(5):
            secret = new_app_password()
            form = app_password_form(secret.encode())
            assert form is not None
            selector, canonical = form
            try:
                record = self.credentials.add_app_password(
                    email, label, selector, self.hasher.hash(canonical)
                )
            except ValueError:
                continue
            self._trail(email, "app-password-added", actor, f"{record.id} {label}")
            return record, secret
        raise RuntimeError("could not draw an unused app password selector")

    def revoke_app_password(self, email: str, app_id: int, actor: Actor) -> str:
        label = self.credentials.revoke_app_password(email, app_id)
        self._trail(email, "app-password-revoked", actor, f"{app_id} {label}")
        return label

    def trail(self, email: str, action: str, actor: Actor, detail: str = "") -> None:
        """Record a change made elsewhere (user disabled, certificate revoked …)."""
        self._trail(email, action, actor, detail)
