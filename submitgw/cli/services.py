"""What a command works with: the stores and services on one database handle.

`Context.services()` opens it, turns the refusals listed in `ONE_LINE_ERRORS`
into one-line errors, and disposes of the engine on every path, so no command
has its own copy of that.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

import click

from submitgw.config import Config
from submitgw.rules.access import RuleError
from submitgw.rules.binding import InvalidPattern
from submitgw.rules.passwords import PasswordRejected
from submitgw.services.accounts import AccountService, Actor
from submitgw.store import (
    AccessRuleStore,
    AlreadyRevoked,
    AppPasswordNotFound,
    CertificateExists,
    CertificateNotFound,
    CertificateStore,
    CredentialStore,
    Database,
    MigrationRequired,
    RuleExists,
    RuleNotFound,
    SenderExists,
    SenderNotFound,
    SenderStore,
    UserExists,
    UserNetworkStore,
    UserNotFound,
    UserStore,
)
from submitgw.store.counters import CounterStore

# Refusals whose text is already the one line an admin should read, by class.
ONE_LINE_ERRORS: tuple[type[Exception], ...] = (
    # The store's refusals (one entry once they share a base class).
    AlreadyRevoked,
    AppPasswordNotFound,
    CertificateExists,
    CertificateNotFound,
    MigrationRequired,
    RuleExists,
    RuleNotFound,
    SenderExists,
    SenderNotFound,
    UserExists,
    UserNotFound,
    # The rules' refusals of what an admin typed.
    InvalidPattern,
    PasswordRejected,
    RuleError,
)


def admin_actor() -> Actor:
    """Who the trail names for a CLI change: the OS login running it, on this host."""
    try:
        login = getpass.getuser()
    except OSError:
        # No login name in the environment nor the password database (bare containers).
        login = f"uid {os.getuid()}"
    return Actor(f"admin:{login}", f"cli on {socket.gethostname()}")


class Services:
    """The stores and services of one command, created on first use."""

    def __init__(self, db: Database, config: Config) -> None:
        self.db = db
        self._config = config

    @cached_property
    def users(self) -> UserStore:
        return UserStore(self.db)

    @cached_property
    def certificates(self) -> CertificateStore:
        return CertificateStore(self.db)

    @cached_property
    def credentials(self) -> CredentialStore:
        return CredentialStore(self.db)

    @cached_property
    def senders(self) -> SenderStore:
        return SenderStore(self.db)

    @cached_property
    def access_rules(self) -> AccessRuleStore:
        return AccessRuleStore(self.db)

    @cached_property
    def networks(self) -> UserNetworkStore:
        return UserNetworkStore(self.db)

    @cached_property
    def counters(self) -> CounterStore:
        return CounterStore(self.db)

    @cached_property
    def accounts(self) -> AccountService:
        """Password and account changes, with the same policy and trail as the site."""
        return AccountService(self.db, self._config.auth, self._config.passwords)


@contextmanager
def open_services(url: str, config: Config, *, require_current: bool = True) -> Iterator[Services]:
    """Services on a new engine: expected refusals become one line, the engine always goes."""
    db = Database(url)
    try:
        if require_current:
            db.check_current()
        yield Services(db, config)
    except ONE_LINE_ERRORS as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        db.dispose()
