"""The Senders service: what a user may send as; a dead database is a kind, not a crash."""

from __future__ import annotations

import asyncio

import pytest

from submitgw.errors import Need, Unavailable
from submitgw.services.senders import Senders
from submitgw.store import Database, SenderStore, UserStore

ALICE = "alice@example.org"


def test_without_a_store_a_user_may_send_as_themselves_only() -> None:
    assert asyncio.run(Senders(None).allowed(ALICE)) == [ALICE]


def test_the_bindings_come_from_the_store(db: Database) -> None:
    """Own address first, then the bindings (read in a worker: see test_offload)."""
    UserStore(db).add(ALICE, "hash")
    store = SenderStore(db)
    store.add(ALICE, "@example.net")

    assert asyncio.run(Senders(store).allowed(ALICE)) == [ALICE, "@example.net"]


def test_a_database_that_is_gone_is_unavailable_not_a_crash() -> None:
    gone = Database("sqlite:////nonexistent/dir/submitgw.db")
    try:
        with pytest.raises(Unavailable) as info:
            asyncio.run(Senders(SenderStore(gone)).allowed(ALICE))
    finally:
        gone.dispose()
    assert info.value.what == Need.SENDERS
