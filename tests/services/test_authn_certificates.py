"""The certificate verdict against a real inventory, on SQLite and PostgreSQL.

What must hold: a certificate's own flaws come first and the database is not
asked about them; then unknown, revoked, disabled-user and outside-networks
certificates each get their own reason; the fingerprint is always in the
verdict, the serial and user whenever they are known; only a clean verdict
carries a holder.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

import pki
from submitgw.rules.policy import certificate_identity
from submitgw.services import authn
from submitgw.services.authn import CertificateAuthenticator
from submitgw.store import CertificateStore, Database, SenderStore, UserNetworkStore, UserStore
from submitgw.types import CERTIFICATE, CertificateFlaw, CertificateUser, CertificateVerdict

ALICE = "alice@example.org"
CLIENT = "192.0.2.10"


@pytest.fixture(scope="module")
def ca() -> pki.CA:
    return pki.CA.create("verdict test CA")


@pytest.fixture
def users(db: Database) -> UserStore:
    store = UserStore(db)
    store.add(ALICE, "hash", CERTIFICATE)
    return store


@pytest.fixture
def inventory(db: Database, users: UserStore) -> CertificateStore:
    return CertificateStore(db)


@pytest.fixture
def networks(db: Database, users: UserStore) -> UserNetworkStore:
    return UserNetworkStore(db)


@pytest.fixture
def judge(ca: pki.CA, inventory: CertificateStore) -> CertificateAuthenticator:
    return CertificateAuthenticator(inventory, ca.cert)


def verdict_of(
    judge: CertificateAuthenticator, issued: pki.IssuedCertificate, client: str = CLIENT
) -> CertificateVerdict:
    return asyncio.run(judge.judge(issued.cert.public_bytes(Encoding.DER), client))


def test_a_recorded_certificate_names_its_holder(
    ca: pki.CA, inventory: CertificateStore, judge: CertificateAuthenticator
) -> None:
    issued = ca.issue_client_cert(ALICE)
    inventory.add(ALICE, issued)
    verdict = verdict_of(judge, issued)
    assert verdict.ok and verdict.flaw is None
    assert verdict == CertificateVerdict(
        issued.fingerprint_sha256,
        issued.serial,
        ALICE,
        holder=CertificateUser(ALICE, issued.serial, issued.fingerprint_sha256, CERTIFICATE),
    )
    # The TLS layer hands over an x509 object rather than DER: the same verdict.
    assert asyncio.run(judge.judge(issued.cert, CLIENT)) == verdict


def test_the_holder_carries_what_the_user_may_send_as(
    ca: pki.CA, db: Database, inventory: CertificateStore
) -> None:
    """Read in the certificate's trip to the database, so MAIL needs none of its own."""
    senders = SenderStore(db)
    senders.add(ALICE, "@example.net")
    issued = ca.issue_client_cert(ALICE)
    inventory.add(ALICE, issued)
    with_senders = CertificateAuthenticator(inventory, ca.cert, senders=senders)

    holder = verdict_of(with_senders, issued).holder

    assert holder is not None and holder.senders == (ALICE, "@example.net")
    assert holder.senders == tuple(senders.allowed(ALICE))
    assert certificate_identity(holder, "EXTERNAL").senders == holder.senders


def test_not_in_the_inventory(ca: pki.CA, judge: CertificateAuthenticator) -> None:
    issued = ca.issue_client_cert(ALICE)
    assert verdict_of(judge, issued) == CertificateVerdict(
        issued.fingerprint_sha256, issued.serial, flaw=CertificateFlaw.NOT_IN_INVENTORY
    )


def test_revoked_with_its_date(
    ca: pki.CA, inventory: CertificateStore, judge: CertificateAuthenticator
) -> None:
    issued = ca.issue_client_cert(ALICE)
    inventory.add(ALICE, issued)
    record = inventory.revoke(issued.serial, "keyCompromise")
    verdict = verdict_of(judge, issued)
    assert verdict.flaw is CertificateFlaw.REVOKED and verdict.holder is None
    assert verdict.date == record.revoked_at and verdict.date is not None
    assert (verdict.fingerprint, verdict.serial, verdict.user) == (
        issued.fingerprint_sha256,
        issued.serial,
        ALICE,
    )


def test_disabled_user(
    ca: pki.CA, inventory: CertificateStore, users: UserStore, judge: CertificateAuthenticator
) -> None:
    issued = ca.issue_client_cert(ALICE)
    inventory.add(ALICE, issued)
    users.set_enabled(ALICE, False)
    verdict = verdict_of(judge, issued)
    assert verdict.flaw is CertificateFlaw.USER_DISABLED and verdict.holder is None
    assert verdict.user == ALICE
    users.set_enabled(ALICE, True)
    assert verdict_of(judge, issued).ok


def test_deleted_user_is_not_in_the_inventory(
    ca: pki.CA, inventory: CertificateStore, users: UserStore, judge: CertificateAuthenticator
) -> None:
    issued = ca.issue_client_cert(ALICE)
    inventory.add(ALICE, issued)
    users.delete(ALICE)
    assert verdict_of(judge, issued).flaw is CertificateFlaw.NOT_IN_INVENTORY


def test_outside_the_users_networks(
    ca: pki.CA,
    inventory: CertificateStore,
    networks: UserNetworkStore,
    judge: CertificateAuthenticator,
) -> None:
    issued = ca.issue_client_cert(ALICE)
    inventory.add(ALICE, issued)
    networks.set(ALICE, ["198.51.100.0/24"])
    outside = verdict_of(judge, issued)
    assert outside.flaw is CertificateFlaw.OUTSIDE_NETWORKS and outside.holder is None
    assert verdict_of(judge, issued, "198.51.100.7").ok


def test_the_certificates_own_flaws_come_first(
    ca: pki.CA, inventory: CertificateStore, judge: CertificateAuthenticator
) -> None:
    """A revoked certificate from another CA is `not ours`: only ours are looked up."""
    stranger = pki.CA.create("Some other CA").issue_client_cert(ALICE)
    assert verdict_of(judge, stranger) == CertificateVerdict(
        stranger.fingerprint_sha256, stranger.serial, flaw=CertificateFlaw.NOT_OURS
    )


def test_expired_in_the_inventory(ca: pki.CA, inventory: CertificateStore) -> None:
    issued = ca.issue_client_cert(ALICE, days=1)
    inventory.add(ALICE, issued)
    end = issued.cert.not_valid_after_utc
    later = CertificateAuthenticator(inventory, ca.cert, clock=lambda: end + timedelta(seconds=1))
    verdict = verdict_of(later, issued)
    assert (verdict.flaw, verdict.date, verdict.holder) == (CertificateFlaw.EXPIRED, end, None)
    assert verdict.serial == issued.serial and verdict.user is None


def test_unreadable_bytes_are_not_ours(judge: CertificateAuthenticator) -> None:
    garbage = b"\x30\x03\x02\x01\x00"
    verdict = asyncio.run(judge.judge(garbage, CLIENT))
    assert verdict.flaw is CertificateFlaw.NOT_OURS
    assert verdict.fingerprint == pki.fingerprint_sha256(garbage)


def test_an_unreadable_inventory_is_unchecked(ca: pki.CA) -> None:
    """Not a verdict on the certificate: the session answers 454 and the client retries."""
    broken = Database("sqlite:////nonexistent/dir/t.db")
    judge = CertificateAuthenticator(CertificateStore(broken), ca.cert)
    issued = ca.issue_client_cert(ALICE)
    verdict = verdict_of(judge, issued)
    assert verdict.flaw is CertificateFlaw.UNCHECKED
    assert verdict.fingerprint == issued.fingerprint_sha256
    broken.dispose()


def test_identify_keeps_its_short_answer(
    ca: pki.CA, inventory: CertificateStore, judge: CertificateAuthenticator
) -> None:
    issued = ca.issue_client_cert(ALICE)
    der = issued.cert.public_bytes(Encoding.DER)
    assert asyncio.run(judge.identify(der, CLIENT)) == (None, "not-in-inventory")
    inventory.add(ALICE, issued)
    found, why = asyncio.run(judge.identify(der, CLIENT))
    assert why == "ok" and found is not None and found.user == ALICE


def test_kept_facts_are_judged_at_every_connection_against_the_clock(
    ca: pki.CA, inventory: CertificateStore
) -> None:
    """The signature and extensions are worked out once; the validity dates and the
    inventory are looked at every time."""
    issued = ca.issue_client_cert(ALICE, days=1)
    inventory.add(ALICE, issued)
    now = [issued.cert.not_valid_after_utc - timedelta(seconds=1)]
    judge = CertificateAuthenticator(inventory, ca.cert, clock=lambda: now[0])
    assert verdict_of(judge, issued).ok
    now[0] += timedelta(seconds=2)
    assert verdict_of(judge, issued).flaw is CertificateFlaw.EXPIRED
    now[0] = issued.cert.not_valid_before_utc - timedelta(seconds=1)
    assert verdict_of(judge, issued).flaw is CertificateFlaw.NOT_YET_VALID
    now[0] = issued.cert.not_valid_before_utc + timedelta(seconds=1)
    inventory.revoke(issued.serial, "keyCompromise")
    assert verdict_of(judge, issued).flaw is CertificateFlaw.REVOKED


def test_a_new_ca_forgets_what_was_known_under_the_old_one(
    ca: pki.CA, inventory: CertificateStore, judge: CertificateAuthenticator
) -> None:
    issued = ca.issue_client_cert(ALICE)
    inventory.add(ALICE, issued)
    assert verdict_of(judge, issued).ok
    judge.reconfigure(pki.CA.create("the next CA").cert)
    assert verdict_of(judge, issued).flaw is CertificateFlaw.NOT_OURS
    judge.reconfigure(ca.cert)
    assert verdict_of(judge, issued).ok


def test_the_facts_kept_are_bounded(ca: pki.CA, judge: CertificateAuthenticator) -> None:
    """A client offering ever new certificates makes the gateway start over, not grow."""
    stranger = pki.CA.create("Some other CA")
    sizes = set()
    for _ in range(authn.MAX_FACTS + 5):
        assert verdict_of(judge, stranger.issue_client_cert(ALICE)).flaw is CertificateFlaw.NOT_OURS
        sizes.add(len(judge._trust[1]))
    assert max(sizes) == authn.MAX_FACTS and min(sizes) == 1
    issued = ca.issue_client_cert(ALICE)
    assert verdict_of(judge, issued).flaw is CertificateFlaw.NOT_IN_INVENTORY
