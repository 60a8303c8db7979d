"""The certificate inventory and auth policies against real SQLite and PostgreSQL databases.

Rules proven here: a certificate belongs to an existing user and to that user's
own mailbox; the gateway's lookup is one query that sees revocation, disabled
users and policy changes at once; deleting a user deletes their certificates.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from sqlalchemy import event

import pki
from submitgw.store import (
    AUTH_POLICIES,
    AlreadyRevoked,
    CertificateExists,
    CertificateNotFound,
    CertificateRecord,
    CertificateStore,
    Database,
    UserNetworkStore,
    UserNotFound,
    UserStore,
)


@pytest.fixture(scope="module")
def ca() -> pki.CA:
    return pki.CA.create("inventory test CA")


@pytest.fixture
def users(db: Database) -> UserStore:
    store = UserStore(db)
    for email in ("alice@example.org", "bob@example.org"):
        store.add(email, "hash")
    return store


@pytest.fixture
def certs(db: Database, users: UserStore) -> CertificateStore:
    return CertificateStore(db)


def issue(ca: pki.CA, email: str) -> pki.IssuedCertificate:
    return ca.issue_client_cert(email)


def colon_lower(serial: str) -> str:
    """A serial as `openssl x509 -serial` users might paste it: lower case, colon pairs."""
    padded = serial if len(serial) % 2 == 0 else "0" + serial
    return ":".join(padded[i : i + 2] for i in range(0, len(padded), 2)).lower()


# --- auth policies ---------------------------------------------------------------------------


def test_users_default_to_password_or_certificate_logins(users: UserStore) -> None:
    record = users.get("alice@example.org")

    assert record is not None
    assert record.auth_policy == "password-or-certificate"
    assert AUTH_POLICIES == (
        "password",
        "certificate",
        "password-or-certificate",
        "password+certificate",
    )


@pytest.mark.parametrize("policy", AUTH_POLICIES)
def test_every_policy_can_be_stored(users: UserStore, policy: str) -> None:
    assert users.add("carol@example.org", "hash", auth_policy=policy).auth_policy == policy


def test_add_with_a_policy_and_change_it(users: UserStore) -> None:
    added = users.add("carol@example.org", "hash", auth_policy="certificate")
    assert added.auth_policy == "certificate"

    users.set_auth_policy("Carol@example.org", "password+certificate")

    after = users.get("carol@example.org")
    assert after is not None
    assert after.auth_policy == "password+certificate"
    assert after.updated_at > added.updated_at


def test_unknown_policies_are_refused(users: UserStore) -> None:
    with pytest.raises(ValueError, match=r"unknown authentication policy 'cert' \(one of: "):
        users.add("carol@example.org", "hash", auth_policy="cert")
    with pytest.raises(ValueError, match="unknown authentication policy"):
        users.set_auth_policy("alice@example.org", "Password")

    assert users.get("carol@example.org") is None
    alice = users.get("alice@example.org")
    assert alice is not None and alice.auth_policy == "password-or-certificate"


def test_policy_of_a_missing_user(users: UserStore) -> None:
    with pytest.raises(UserNotFound, match=r"^no user ghost@example\.org$"):
        users.set_auth_policy("ghost@example.org", "certificate")


# --- adding and reading ----------------------------------------------------------------------


def test_add_records_every_field(ca: pki.CA, certs: CertificateStore) -> None:
    issued = issue(ca, "alice@example.org")
    cert = issued.cert
    before = datetime.now(UTC)

    record = certs.add("Alice@Example.org", issued)

    assert record.serial == pki.format_serial(cert.serial_number)
    assert record.email == "alice@example.org"
    assert record.fingerprint_sha256 == pki.fingerprint_sha256(cert)
    assert record.subject == "CN=alice@example.org"
    assert record.not_before == cert.not_valid_before_utc
    assert record.not_after == cert.not_valid_after_utc
    assert before - timedelta(seconds=1) <= record.issued_at <= datetime.now(UTC)
    assert record.revoked_at is None and record.revocation_reason is None
    assert record.revoked is False
    assert x509.load_pem_x509_certificate(record.pem.encode()) == cert
    assert certs.get(record.serial) == record
    for stamp in (record.not_before, record.not_after, record.issued_at):
        assert stamp.tzinfo is UTC


def test_add_refuses_unknown_users_other_mailboxes_and_duplicates(
    ca: pki.CA, certs: CertificateStore
) -> None:
    ghost = issue(ca, "ghost@example.org")
    with pytest.raises(UserNotFound, match=r"^no user ghost@example\.org$"):
        certs.add("ghost@example.org", ghost)

    bobs = issue(ca, "bob@example.org")
    with pytest.raises(ValueError, match=r"is for bob@example\.org, not alice@example\.org"):
        certs.add("alice@example.org", bobs)

    certs.add("bob@example.org", bobs)
    with pytest.raises(CertificateExists, match="already in the inventory"):
        certs.add("bob@example.org", bobs)

    assert [r.email for r in certs.list()] == ["bob@example.org"]


def test_get_finds_a_serial_as_pki_spells_it(ca: pki.CA, certs: CertificateStore) -> None:
    """Callers turn what people type into that spelling with `pki.canonical_serial`."""
    record = certs.add("alice@example.org", issue(ca, "alice@example.org"))

    assert certs.get(pki.canonical_serial(colon_lower(record.serial))) == record
    assert certs.get(pki.canonical_serial("00:" + record.serial)) == record
    assert certs.get("ABCDEF") is None


def test_list_all_or_one_user_in_a_stable_order(ca: pki.CA, certs: CertificateStore) -> None:
    assert certs.list() == []
    bob1 = certs.add("bob@example.org", issue(ca, "bob@example.org"))
    alice1 = certs.add("alice@example.org", issue(ca, "alice@example.org"))
    bob2 = certs.add("bob@example.org", issue(ca, "bob@example.org"))

    assert certs.list() == [alice1, bob1, bob2]
    assert certs.list("BOB@example.org") == [bob1, bob2]
    with pytest.raises(UserNotFound):
        certs.list("ghost@example.org")


# --- revocation ------------------------------------------------------------------------------


def test_revoke_one_certificate(ca: pki.CA, certs: CertificateStore) -> None:
    kept = certs.add("alice@example.org", issue(ca, "alice@example.org"))
    gone = certs.add("alice@example.org", issue(ca, "alice@example.org"))

    revoked = certs.revoke(gone.serial, "keyCompromise")

    assert revoked.serial == gone.serial
    assert revoked.revoked is True
    assert revoked.revocation_reason == "keyCompromise"
    assert revoked.revoked_at is not None and revoked.revoked_at.tzinfo is UTC
    assert certs.get(gone.serial) == revoked
    assert certs.get(kept.serial) == kept
    assert certs.revoked() == [revoked]


def test_revoke_errors_are_one_clear_line(ca: pki.CA, certs: CertificateStore) -> None:
    record = certs.add("alice@example.org", issue(ca, "alice@example.org"))
    first = certs.revoke(record.serial)
    assert first.revocation_reason == "unspecified"

    with pytest.raises(AlreadyRevoked) as again:
        certs.revoke(record.serial, "superseded")
    with pytest.raises(CertificateNotFound) as missing:
        certs.revoke("ABCDEF")

    assert str(again.value).startswith(f"certificate {record.serial} was already revoked at ")
    assert str(missing.value) == "no certificate with serial ABCDEF"
    for error in (again.value, missing.value):
        assert "\n" not in str(error)
    assert certs.get(record.serial) == first, "a second revocation changes nothing"


def test_revoke_user_revokes_only_that_users_live_certificates(
    ca: pki.CA, certs: CertificateStore
) -> None:
    earlier = certs.add("alice@example.org", issue(ca, "alice@example.org"))
    earlier = certs.revoke(earlier.serial, "superseded")
    live = [certs.add("alice@example.org", issue(ca, "alice@example.org")) for _ in range(2)]
    bobs = certs.add("bob@example.org", issue(ca, "bob@example.org"))

    revoked = certs.revoke_user("Alice@example.org", "affiliationChanged")

    assert sorted(r.serial for r in revoked) == sorted(r.serial for r in live)
    assert all(r.revocation_reason == "affiliationChanged" and r.revoked for r in revoked)
    assert certs.get(earlier.serial) == earlier, "an earlier revocation keeps its reason"
    assert certs.get(bobs.serial) == bobs
    assert certs.revoke_user("alice@example.org", "affiliationChanged") == []
    assert len(certs.revoked()) == 3
    with pytest.raises(UserNotFound):
        certs.revoke_user("ghost@example.org", "unspecified")


def test_concurrent_revocations_of_one_certificate_succeed_once(
    ca: pki.CA, certs: CertificateStore
) -> None:
    record = certs.add("alice@example.org", issue(ca, "alice@example.org"))

    def attempt(reason: str) -> str:
        try:
            return certs.revoke(record.serial, reason).revocation_reason or ""
        except AlreadyRevoked:
            return "refused"

    reasons = ["keyCompromise", "superseded", "cessationOfOperation", "privilegeWithdrawn"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(attempt, reasons))

    assert outcomes.count("refused") == 3
    (winner,) = [o for o in outcomes if o != "refused"]
    stored = certs.get(record.serial)
    assert stored is not None and stored.revocation_reason == winner


# --- the gateway's lookup --------------------------------------------------------------------


def test_lookup_returns_the_identity_and_none_for_strangers(
    ca: pki.CA, certs: CertificateStore
) -> None:
    issued = issue(ca, "alice@example.org")
    record = certs.add("alice@example.org", issued)

    found = certs.lookup(pki.fingerprint_sha256(issued.cert))

    assert found is not None
    assert found.serial == record.serial
    assert found.fingerprint_sha256 == record.fingerprint_sha256
    assert found.email == "alice@example.org"
    assert found.user_enabled is True
    assert found.auth_policy == "password-or-certificate"
    assert found.revoked is False
    assert found.not_after == issued.cert.not_valid_after_utc
    assert certs.lookup(issue(ca, "alice@example.org").fingerprint_sha256) is None
    assert certs.lookup(record.fingerprint_sha256.upper()) == found


def test_lookup_sees_revocation_disabling_and_policy_at_once(
    ca: pki.CA, users: UserStore, certs: CertificateStore
) -> None:
    record = certs.add("alice@example.org", issue(ca, "alice@example.org"))

    def lookup() -> Any:
        found = certs.lookup(record.fingerprint_sha256)
        assert found is not None
        return found

    users.set_auth_policy("alice@example.org", "certificate")
    assert lookup().auth_policy == "certificate"
    users.set_enabled("alice@example.org", False)
    assert lookup().user_enabled is False
    users.set_enabled("alice@example.org", True)
    assert lookup().revoked_at is None
    revoked = certs.revoke(record.serial, "keyCompromise")
    assert (lookup().revoked, lookup().user_enabled) == (True, True)
    # The date a refused client is told its certificate was revoked on.
    assert lookup().revoked_at == revoked.revoked_at


def test_lookup_is_one_query_joining_users(
    ca: pki.CA, db: Database, certs: CertificateStore
) -> None:
    record = certs.add("alice@example.org", issue(ca, "alice@example.org"))
    statements: list[str] = []

    def collect(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", collect)
    try:
        assert certs.lookup(record.fingerprint_sha256) is not None
    finally:
        event.remove(db.engine, "before_cursor_execute", collect)

    queries = [s for s in statements if s.strip().upper() not in {"BEGIN", "COMMIT", "ROLLBACK"}]
    assert len(queries) == 1, queries
    assert "JOIN users" in queries[0]
    assert "JOIN user_networks" in queries[0]


def test_lookup_carries_the_users_networks(
    ca: pki.CA, db: Database, certs: CertificateStore
) -> None:
    record = certs.add("alice@example.org", issue(ca, "alice@example.org"))
    networks = UserNetworkStore(db)
    assert certs.lookup(record.fingerprint_sha256).networks == ()  # type: ignore[union-attr]

    networks.set("alice@example.org", ["198.51.100.0/24", "192.0.2.0/24"])
    found = certs.lookup(record.fingerprint_sha256)

    assert found is not None and found.serial == record.serial
    assert sorted(found.networks) == ["192.0.2.0/24", "198.51.100.0/24"]


# --- deleting users --------------------------------------------------------------------------


def test_deleting_a_user_deletes_their_certificates(
    ca: pki.CA, users: UserStore, certs: CertificateStore
) -> None:
    alices: list[CertificateRecord] = [
        certs.add("alice@example.org", issue(ca, "alice@example.org")) for _ in range(2)
    ]
    certs.revoke(alices[0].serial)
    bobs = certs.add("bob@example.org", issue(ca, "bob@example.org"))

    users.delete("alice@example.org")

    assert certs.list() == [bobs]
    assert certs.revoked() == []
    for record in alices:
        assert certs.get(record.serial) is None
        assert certs.lookup(record.fingerprint_sha256) is None
    users.add("alice@example.org", "hash")
    assert certs.list("alice@example.org") == [], "a new account inherits nothing"
