"""Persistent state (SQLite or PostgreSQL via SQLAlchemy), behind small synchronous stores."""

from submitgw.store.db import Database, MigrationRequired
from submitgw.store.users import UserExists, UserNotFound, UserRecord, UserStore

__all__ = [
    "Database",
    "MigrationRequired",
    "UserExists",
    "UserNotFound",
    "UserRecord",
    "UserStore",
]
