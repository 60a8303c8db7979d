"""The client-certificate inventory: the only place that reads or writes `certificates`.

The CA signs; this records what it signed and for whom. The gateway trusts a
client certificate only if its fingerprint is here, unrevoked, and its user
enabled, so revocation needs no CRL distribution to take effect.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from submitgw.store.db import Database
from submitgw.store.errors import Exists, NotFound, StoreError
from submitgw.store.models import Certificate, User, UserNetworkRow, utcnow
from submitgw.store.users import UserNotFound, _rowcount, normalise_email
from submitgw.types import CertificateFacts


class CertificateNotFound(NotFound):
    def __init__(self, serial: str) -> None:
        super().__init__(f"no certificate with serial {serial}")
        self.serial = serial


class CertificateExists(Exists):
    def __init__(self, serial: str) -> None:
        super().__init__(f"certificate {serial} is already in the inventory")
        self.serial = serial


class AlreadyRevoked(StoreError):
    def __init__(self, serial: str, revoked_at: datetime) -> None:
        when = revoked_at.isoformat(timespec="seconds")
        super().__init__(f"certificate {serial} was already revoked at {when}")
        self.serial = serial
        self.revoked_at = revoked_at


@dataclass(frozen=True)
class CertificateRecord:
    """A detached snapshot of an inventory entry, safe to hand across threads."""

    serial: str
    email: str
    fingerprint_sha256: str
    subject: str
    not_before: datetime
    not_after: datetime
    issued_at: datetime
    revoked_at: datetime | None
    revocation_reason: str | None
    pem: str

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True)
class CertificateIdentity:
    """What the gateway needs to decide on a client certificate, from one query."""

    serial: str
    fingerprint_sha256: str
    email: str
    user_enabled: bool
    auth_policy: str
    revoked_at: datetime | None
    not_after: datetime
    # The user's networks (`user set-networks`), read in the same query.
    networks: tuple[str, ...] = ()

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def _records() -> Select[Certificate, str]:
    return select(Certificate, User.email).join(User, Certificate.user_id == User.id)


def _record(cert: Certificate, email: str) -> CertificateRecord:
    return CertificateRecord(
        serial=cert.serial,
        email=email,
        fingerprint_sha256=cert.fingerprint_sha256,
        subject=cert.subject,
        not_before=cert.not_before,
        not_after=cert.not_after,
        issued_at=cert.issued_at,
        revoked_at=cert.revoked_at,
        revocation_reason=cert.revocation_reason,
        pem=cert.pem,
    )


def _sorted(records: builtins.list[CertificateRecord]) -> builtins.list[CertificateRecord]:
    """Sorted in Python so that the order is the same on every backend."""
    return sorted(records, key=lambda r: (r.email, r.issued_at, r.serial))


# The gateway's per-session read, built once: a statement object made per call costs more
# CPU than running it.
_LOOKUP = (
    select(
        Certificate.serial,
        Certificate.fingerprint_sha256,
        User.email,
        User.enabled,
        User.auth_policy,
        Certificate.revoked_at,
        Certificate.not_after,
        UserNetworkRow.cidr,
    )
    .join(User, Certificate.user_id == User.id)
    .outerjoin(UserNetworkRow, UserNetworkRow.user_id == User.id)
    .where(Certificate.fingerprint_sha256 == bindparam("fingerprint"))
)


class CertificateStore:
    """Synchronous access to the inventory; the gateway calls `lookup` from worker threads."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, email: str, issued: CertificateFacts) -> CertificateRecord:
        """Record a certificate the CA just issued for `email`'s own mailbox."""
        email = normalise_email(email)
        if issued.email != email:
            raise ValueError(f"the certificate is for {issued.email or 'no mailbox'}, not {email}")
        serial = issued.serial
        row = Certificate(
            serial=serial,
            fingerprint_sha256=issued.fingerprint_sha256,
            subject=issued.subject,
            not_before=issued.not_before,
            not_after=issued.not_after,
            issued_at=utcnow(),
            pem=issued.cert_pem().decode("ascii"),
        )
        try:
            with self._db.session() as session:
                user_id = session.scalar(select(User.id).where(User.email == email))
                if user_id is None:
                    raise UserNotFound(email)
                row.user_id = user_id
                session.add(row)
                session.flush()
                return _record(row, email)
        except IntegrityError as exc:
            raise CertificateExists(serial) from exc

    def get(self, serial: str) -> CertificateRecord | None:
        """The certificate with `serial` as `pki.canonical_serial` spells it, if any."""
        with self._db.session() as session:
            row = session.execute(_records().where(Certificate.serial == serial)).first()
            return _record(*row) if row is not None else None

    def list(self, email: str | None = None) -> builtins.list[CertificateRecord]:
        """Every certificate, or one user's (UserNotFound if there is no such user)."""
        with self._db.session() as session:
            statement = _records()
            if email is not None:
                email = normalise_email(email)
                self._user_id(session, email)
                statement = statement.where(User.email == email)
            return _sorted([_record(*row) for row in session.execute(statement)])

    def revoked(self) -> builtins.list[CertificateRecord]:
        """Revoked certificates, of users deleted since excepted (their rows are gone)."""
        with self._db.session() as session:
            statement = _records().where(Certificate.revoked_at.is_not(None))
            records = [_record(*row) for row in session.execute(statement)]
        return sorted(records, key=lambda r: (r.revoked_at, r.serial))

    def revoke(self, serial: str, reason: str = "unspecified") -> CertificateRecord:
        """Mark one certificate revoked; the gateway refuses it from its next TLS session.

        `serial` as `pki.canonical_serial` spells it, `reason` one of `pki.REVOCATION_REASONS`.
        """
        with self._db.session() as session:
            # Conditional UPDATE: of two concurrent revocations exactly one succeeds.
            statement = (
                update(Certificate)
                .where(Certificate.serial == serial, Certificate.revoked_at.is_(None))
                .values(revoked_at=utcnow(), revocation_reason=reason)
            )
            changed = _rowcount(session, statement)
            row = session.execute(_records().where(Certificate.serial == serial)).first()
            if row is None:
                raise CertificateNotFound(serial)
            record = _record(*row)
            if changed == 0 and record.revoked_at is not None:
                raise AlreadyRevoked(serial, record.revoked_at)
            return record

    def revoke_user(
        self, email: str, reason: str = "unspecified"
    ) -> builtins.list[CertificateRecord]:
        """Revoke every unrevoked certificate of a user; returns the ones revoked now."""
        email = normalise_email(email)
        with self._db.session() as session:
            user_id = self._user_id(session, email)
            live = (Certificate.user_id == user_id, Certificate.revoked_at.is_(None))
            serials = builtins.list(
                session.scalars(select(Certificate.serial).where(*live).with_for_update())
            )
            if serials:
                session.execute(
                    update(Certificate)
                    .where(*live, Certificate.serial.in_(serials))
                    .values(revoked_at=utcnow(), revocation_reason=reason)
                )
            rows = session.execute(_records().where(Certificate.serial.in_(serials)))
            return _sorted([_record(*row) for row in rows])

    def lookup(self, fingerprint_sha256: str) -> CertificateIdentity | None:
        """The gateway's per-session check: one indexed query, the user and their networks
        joined in.

        Nothing is cached, so a revocation, a disabled user, a policy or a network
        change is seen by every gateway sharing the database at its next session.
        """
        fingerprint = fingerprint_sha256.lower().replace(":", "")
        with self._db.reader.connect() as connection:
            rows = connection.execute(_LOOKUP, {"fingerprint": fingerprint}).all()
        if not rows:
            return None
        row = rows[0]
        return CertificateIdentity(
            serial=row.serial,
            fingerprint_sha256=row.fingerprint_sha256,
            email=row.email,
            user_enabled=row.enabled,
            auth_policy=row.auth_policy,
            revoked_at=row.revoked_at,
            not_after=row.not_after,
            networks=tuple(sorted(r.cidr for r in rows if r.cidr is not None)),
        )

    @staticmethod
    def _user_id(session: Session, email: str) -> int:
        user_id = session.scalar(select(User.id).where(User.email == email))
        if user_id is None:
            raise UserNotFound(email)
        return user_id
