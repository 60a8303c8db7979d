"""The one wiring place: a configuration and a database in, the project's parts out.

`Stores` (here) is what every command and the gateway build on: the repositories and
the account service over one database, each made when first used. `app.gateway`
builds the serving side on top of it (authentication pools, screening, limits, the
listeners); it is a module of its own so that an admin command does not import the
SMTP and web stacks it never runs.
"""

from __future__ import annotations

from functools import cached_property

from submitgw.config import Config
from submitgw.services.accounts import AccountService
from submitgw.services.audit import Recorder
from submitgw.store import (
    AccessRuleStore,
    CertificateStore,
    CredentialStore,
    Database,
    SenderStore,
    UserNetworkStore,
    UserStore,
)
from submitgw.store.audit import AuditStore
from submitgw.store.counters import CounterStore


class Stores:
    """The repositories and the account service on one database, made on first use."""

    def __init__(self, db: Database, config: Config, recorder: Recorder | None = None) -> None:
        self.db = db
        self.config = config
        # Where account changes are reported besides the account trail (the gateway's sinks).
        self.recorder = recorder or Recorder()

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
    def audit(self) -> AuditStore:
        return AuditStore(self.db)

    @cached_property
    def counters(self) -> CounterStore:
        return CounterStore(self.db)

    @cached_property
    def accounts(self) -> AccountService:
        """Password and account changes, with the same policy and trail everywhere."""
        return AccountService(
            self.db, self.config.auth, self.config.passwords, recorder=self.recorder
        )
