"""Persistent state (SQLite or PostgreSQL via SQLAlchemy), behind small synchronous stores."""

from submitgw.store.access import (
    AccessRuleStore,
    RuleExists,
    RuleNotFound,
    StoredRule,
    UserNetworkStore,
)
from submitgw.store.certificates import (
    AlreadyRevoked,
    CertificateExists,
    CertificateIdentity,
    CertificateNotFound,
    CertificateRecord,
    CertificateStore,
)
from submitgw.store.credentials import (
    AppPasswordHash,
    AppPasswordNotFound,
    AppPasswordRecord,
    CredentialStore,
    EventRecord,
)
from submitgw.store.db import Database, MigrationRequired
from submitgw.store.senders import SenderExists, SenderNotFound, SenderStore
from submitgw.store.users import UserExists, UserNotFound, UserRecord, UserStore
from submitgw.types import AUTH_POLICIES

__all__ = [
    "AUTH_POLICIES",
    "AccessRuleStore",
    "AlreadyRevoked",
    "AppPasswordHash",
    "AppPasswordNotFound",
    "AppPasswordRecord",
    "CertificateExists",
    "CertificateIdentity",
    "CertificateNotFound",
    "CertificateRecord",
    "CertificateStore",
    "CredentialStore",
    "Database",
    "EventRecord",
    "MigrationRequired",
    "RuleExists",
    "RuleNotFound",
    "SenderExists",
    "SenderNotFound",
    "SenderStore",
    "StoredRule",
    "UserExists",
    "UserNetworkStore",
    "UserNotFound",
    "UserRecord",
    "UserStore",
]
