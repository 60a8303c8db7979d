"""Persistent state (SQLite or PostgreSQL via SQLAlchemy), behind small synchronous stores."""

from submitgw.store.certificates import (
    AlreadyRevoked,
    CertificateExists,
    CertificateIdentity,
    CertificateNotFound,
    CertificateRecord,
    CertificateStore,
    canonical_serial,
)
from submitgw.store.db import Database, MigrationRequired
from submitgw.store.models import AUTH_POLICIES
from submitgw.store.users import UserExists, UserNotFound, UserRecord, UserStore

__all__ = [
    "AUTH_POLICIES",
    "AlreadyRevoked",
    "CertificateExists",
    "CertificateIdentity",
    "CertificateNotFound",
    "CertificateRecord",
    "CertificateStore",
    "Database",
    "MigrationRequired",
    "UserExists",
    "UserNotFound",
    "UserRecord",
    "UserStore",
    "canonical_serial",
]
