"""The counter store on each backend: upserts that add up under concurrency, windows, locks."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from submitgw.rules.limits import Override
from submitgw.store import Database, UserNotFound, UserStore
from submitgw.store.counters import CounterStore

ALICE = "alice@example.org"


@pytest.fixture
def db(db: Database) -> Database:
    """The shared migrated database, with the one user the counters belong to."""
    UserStore(db).add(ALICE, "argon2-hash")
    return db


@pytest.fixture
def store(db: Database) -> CounterStore:
    return CounterStore(db)


# --- sending counters -----------------------------------------------------------------------


def test_counts_add_up_per_key_over_the_buckets_of_the_window(store: CounterStore) -> None:
    store.add(["user:a", "ip:1"], 1000, 1, 3)
    store.add(["user:a", "ip:1"], 1000, 1, 2)
    store.add(["user:a"], 1060, 1, 1)
    store.add(["user:a"], 900, 1, 50)  # before the window asked for below

    used, override = store.usage(["user:a", "ip:1", "ip:2"], 1000)

    assert used == {"user:a": (3, 6), "ip:1": (2, 5)}
    assert override is None


def test_one_write_adds_message_counts_and_successful_logins(store: CounterStore) -> None:
    store.record_success(["ok:acct:a"], 100)
    store.add_counts(
        {("user:a", 1000): (2, 7), ("ip:1", 1000): (2, 7)},
        {("ok:acct:a", 100): 3, ("ok:ip:1", 100): 3},
    )
    store.add_counts({}, {("ok:acct:a", 115): 1})
    store.add_counts({("user:a", 1060): (1, 1)})

    assert store.usage(["user:a", "ip:1"], 1000)[0] == {"user:a": (3, 8), "ip:1": (2, 7)}
    assert store.login_state(["ok:acct:a", "ok:ip:1"], 0).failures == {
        "ok:acct:a": 5,
        "ok:ip:1": 3,
    }


def test_buckets_list_one_key_for_the_reset_time(store: CounterStore) -> None:
    store.add(["user:a", "ip:1"], 1000, 1, 3)
    store.add(["user:a"], 1060, 1, 1)
    store.add(["user:a"], 940, 1, 7)

    assert sorted(store.buckets("user:a", 1000, "messages")) == [(1000, 1), (1060, 1)]
    assert sorted(store.buckets("user:a", 900, "recipients")) == [(940, 7), (1000, 3), (1060, 1)]


def test_concurrent_increments_from_many_threads_lose_nothing(store: CounterStore) -> None:
    """Two gateways (here: threads) counting the same keys at once: the UPSERT must add up."""
    threads, per_thread = 8, 15
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(per_thread):
                # Both orders of the same keys: sorted upserts must not deadlock.
                store.add(["user:a", "ip:1"], 1000, 1, 2)
                store.add(["ip:1", "user:a"], 1000, 1, 2)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)

    assert errors == []
    total = threads * per_thread * 2
    used, _ = store.usage(["user:a", "ip:1"], 0)
    assert used == {"user:a": (total, 2 * total), "ip:1": (total, 2 * total)}


def test_prune_drops_old_buckets_and_expired_lockouts_only(store: CounterStore) -> None:
    store.add(["user:a"], 100, 1, 1)
    store.add(["user:a"], 200, 1, 1)
    store.record_failure(["acct:x"], 100, 0)
    store.record_failure(["acct:x"], 300, 0)
    now = datetime.now(UTC)
    store.lock("acct:old", now - timedelta(seconds=1), 5)
    store.lock("acct:new", now + timedelta(minutes=5), 5)

    store.prune(counters_before=200, failures_before=300)

    assert store.usage(["user:a"], 0)[0] == {"user:a": (1, 1)}
    state = store.login_state(["acct:x", "acct:old", "acct:new"], 0)
    assert state.failures == {"acct:x": 1}
    assert [lock.key for lock in state.locks] == ["acct:new"]


# --- per-user limits ------------------------------------------------------------------------


def test_override_is_read_with_the_usage(store: CounterStore) -> None:
    store.set_override(ALICE, messages=7)

    _, override = store.usage(["user:" + ALICE], 0, ALICE)

    assert override == Override(messages=7, recipients=None)


def test_override_changes_one_limit_at_a_time_and_back_to_default(store: CounterStore) -> None:
    assert store.set_override(ALICE, messages=7) == Override(7, None)
    assert store.set_override(ALICE, recipients=0) == Override(7, 0)
    assert store.set_override(ALICE, messages=None) == Override(None, 0)
    assert store.override(ALICE) == Override(None, 0)
    assert store.set_override(ALICE, recipients=None) == Override()
    assert store.override(ALICE) is None


def test_override_needs_an_existing_user(store: CounterStore) -> None:
    with pytest.raises(UserNotFound):
        store.set_override("nobody@example.org", messages=1)
    with pytest.raises(UserNotFound):
        store.override("nobody@example.org")


def test_override_goes_with_its_user(db: Database, store: CounterStore) -> None:
    store.set_override(ALICE, messages=7)
    UserStore(db).delete(ALICE)
    UserStore(db).add(ALICE, "argon2-hash")

    assert store.override(ALICE) is None


# --- failed logins and lockouts -------------------------------------------------------------


def test_failures_are_counted_per_key_within_the_window(store: CounterStore) -> None:
    assert store.record_failure(["acct:x", "ip:1"], 100, 0) == {"acct:x": 1, "ip:1": 1}
    assert store.record_failure(["acct:y", "ip:1"], 115, 0) == {"acct:y": 1, "ip:1": 2}
    assert store.record_failure(["acct:x", "ip:1"], 130, 115) == {"acct:x": 1, "ip:1": 2}

    assert store.login_state(["acct:x", "ip:1"], 0).failures == {"acct:x": 2, "ip:1": 3}


def test_lock_is_an_upsert_so_two_gateways_may_set_it_at_once(store: CounterStore) -> None:
    until = datetime.now(UTC) + timedelta(minutes=15)
    store.lock("acct:x", until - timedelta(minutes=1), 5)
    store.lock("acct:x", until, 6)

    (lock,) = store.login_state(["acct:x"], 0).locks
    assert (lock.locked_until, lock.failures) == (until, 6)


def test_unlock_lifts_the_lock_and_forgets_the_failures_of_that_name_only(
    store: CounterStore,
) -> None:
    store.record_failure(["acct:x", "ip:1"], 100, 0)
    store.lock("acct:x", datetime.now(UTC) + timedelta(minutes=15), 5)
    store.lock("ip:1", datetime.now(UTC) + timedelta(minutes=15), 20)

    lifted = store.unlock("acct:x")

    assert lifted is not None and lifted.key == "acct:x"
    state = store.login_state(["acct:x", "ip:1"], 0)
    assert state.failures == {"ip:1": 1}
    assert [lock.key for lock in state.locks] == ["ip:1"]
    assert store.unlock("acct:x") is None


def test_forget_failures_after_a_good_login_leaves_the_client_count(store: CounterStore) -> None:
    store.record_failure(["acct:x", "ip:1"], 100, 0)

    store.forget_failures("acct:x")

    assert store.login_state(["acct:x", "ip:1"], 0).failures == {"ip:1": 1}
