"""Client access rules and per-user source networks: the only code that touches their tables.

Both are read by the gateway on every connection (rules) or login (networks),
uncached, so a change made with the CLI applies to the next connection of every
gateway sharing the database.

Per-user networks live in their own table rather than a `users` column: on
SQLite adding a column to `users` means a batch rebuild, whose DROP TABLE
cascades into every table referencing users (see migration 0002).
"""

from __future__ import annotations

import builtins
import dataclasses
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, delete, select
from sqlalchemy.exc import IntegrityError

from submitgw.store.db import Database
from submitgw.store.errors import Exists, NotFound
from submitgw.store.models import AccessRuleRow, User, UserNetworkRow, utcnow
from submitgw.store.users import (
    UserNotFound,
    UserRecord,
    next_generation,
    normalise_email,
)
from submitgw.types import ACTIONS, Rule


class RuleExists(Exists):
    def __init__(self, existing: Rule) -> None:
        super().__init__(
            f"rule {existing.rule} already exists as #{existing.id} ({existing.action}): "
            f"remove it first"
        )
        self.existing = existing


class RuleNotFound(NotFound):
    def __init__(self, rule_id: int) -> None:
        super().__init__(f"no access rule #{rule_id}")
        self.rule_id = rule_id


@dataclass(frozen=True)
class StoredRule:
    """A rule with its bookkeeping, for listing; `rule` is what matching uses."""

    rule: Rule
    created_at: datetime


def _stored(row: AccessRuleRow) -> StoredRule:
    return StoredRule(Rule(row.id, row.action, row.rule, row.comment or ""), row.created_at)


_RULES = select(AccessRuleRow.id, AccessRuleRow.action, AccessRuleRow.rule, AccessRuleRow.comment)
# The columns of a `UserRecord`, by its field names.
_RECORD_COLUMNS = tuple(getattr(User, field.name) for field in dataclasses.fields(UserRecord))
# What every login reads, built once: a statement object made per call costs more CPU
# than running it.
_USER_AND_NETWORKS = (
    select(*_RECORD_COLUMNS, UserNetworkRow.cidr)
    .outerjoin(UserNetworkRow, UserNetworkRow.user_id == User.id)
    .where(User.email == bindparam("email"))
)


class AccessRuleStore:
    """Synchronous access to `access_rules`; the gateway calls `rules` from a worker thread."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, action: str, rule: str, comment: str = "") -> StoredRule:
        """Store a rule already normalised by `rules.access.parse_rule`; RuleExists if stored."""
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}")
        row = AccessRuleRow(action=action, rule=rule, comment=comment, created_at=utcnow())
        try:
            with self._db.session() as session:
                session.add(row)
                session.flush()
                return _stored(row)
        except IntegrityError as exc:
            existing = self._find(rule)
            if existing is None:
                raise
            raise RuleExists(existing) from exc

    def _find(self, rule: str) -> Rule | None:
        with self._db.session() as session:
            row = session.scalars(select(AccessRuleRow).where(AccessRuleRow.rule == rule)).first()
            return _stored(row).rule if row is not None else None

    def list(self) -> builtins.list[StoredRule]:
        """Every rule, oldest first."""
        with self._db.session() as session:
            rows = session.scalars(select(AccessRuleRow).order_by(AccessRuleRow.id))
            return [_stored(row) for row in rows]

    def rules(self) -> builtins.list[Rule]:
        """What the gateway matches against, on every connection.

        A Core query, not the ORM: for a thousand rules it takes half the time.
        """
        with self._db.reader.connect() as connection:
            rows = connection.execute(_RULES).all()
        return [
            Rule(rule_id, action, rule, comment or "") for rule_id, action, rule, comment in rows
        ]

    def remove(self, rule_id: int) -> Rule:
        with self._db.session() as session:
            row = session.get(AccessRuleRow, rule_id)
            if row is None:
                raise RuleNotFound(rule_id)
            removed = _stored(row).rule
            session.delete(row)
            return removed


class UserNetworkStore:
    """Per-user allowed source networks (normalised CIDR text, e.g. `10.0.0.0/8`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def set(self, email: str, networks: Iterable[str]) -> builtins.list[str]:
        """Replace the user's networks in one transaction (none: anywhere again).

        `networks` are CIDR texts as `rules.access.parse_network` normalised them;
        UserNotFound for an unknown user. Returns them as stored.
        """
        email = normalise_email(email)
        cidrs = sorted(set(networks), key=_network_order)
        with self._db.session() as session:
            user_id = session.scalar(select(User.id).where(User.email == email))
            if user_id is None:
                raise UserNotFound(email)
            session.execute(delete(UserNetworkRow).where(UserNetworkRow.user_id == user_id))
            session.add_all(UserNetworkRow(user_id=user_id, cidr=cidr) for cidr in cidrs)
            next_generation(session, user_id)
        return cidrs

    def get(self, email: str) -> builtins.list[str]:
        """The user's networks; empty for a user without any, or no such user.

        One indexed query either way, so a login for an unknown user costs the
        same as one for a known user.
        """
        statement = (
            select(UserNetworkRow.cidr)
            .join(User, UserNetworkRow.user_id == User.id)
            .where(User.email == normalise_email(email))
        )
        with self._db.reading() as session:
            return sorted(session.scalars(statement), key=_network_order)

    def user_and_networks(self, email: str) -> tuple[UserRecord | None, builtins.list[str]]:
        """The account and its networks in one query: what every login reads.

        Same cost for a known and an unknown login: one indexed query either way.
        """
        with self._db.reader.connect() as connection:
            rows = connection.execute(_USER_AND_NETWORKS, {"email": normalise_email(email)}).all()
        if not rows:
            return None, []
        cidrs = [row.cidr for row in rows if row.cidr is not None]
        record = UserRecord(**{column.key: rows[0][i] for i, column in enumerate(_RECORD_COLUMNS)})
        return record, sorted(cidrs, key=_network_order)

    def by_user(self) -> dict[str, builtins.list[str]]:
        """Every user that has networks, for `user list`."""
        statement = select(User.email, UserNetworkRow.cidr).join(
            User, UserNetworkRow.user_id == User.id
        )
        found: dict[str, builtins.list[str]] = {}
        with self._db.session() as session:
            for email, cidr in session.execute(statement):
                found.setdefault(email, []).append(cidr)
        return {email: sorted(cidrs, key=_network_order) for email, cidrs in found.items()}


def _network_order(cidr: str) -> tuple[int, int, int]:
    """IPv4 before IPv6, then by address: the same order on every backend."""
    network = ipaddress.ip_network(cidr)
    return (network.version, int(network.network_address), network.prefixlen)
