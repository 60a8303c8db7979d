"""The one hand-off to worker threads: the loop keeps running, a failing database is one kind."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from submitgw.errors import Kind, Need, Refusal, Unavailable
from submitgw.services.offload import offload
from submitgw.store import Database, UserNotFound, UserStore
from submitgw.store.errors import NotFound


@pytest.fixture
def unmigrated(tmp_path: Path) -> Iterator[Database]:
    """A database without its tables: every query fails as a lost database would."""
    database = Database(f"sqlite:///{tmp_path}/empty.db")
    yield database
    database.dispose()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/t.db")
    database.upgrade()
    yield database
    database.dispose()


def test_a_database_failure_becomes_unavailable_naming_what_was_needed(
    unmigrated: Database,
) -> None:
    users = UserStore(unmigrated)
    with pytest.raises(Unavailable) as info:
        asyncio.run(offload(lambda: users.get("alice@example.org"), Need.SENDERS))
    assert info.value.kind is Kind.UNAVAILABLE and info.value.what is Need.SENDERS
    assert isinstance(info.value.__cause__, OperationalError)


def test_a_database_failure_in_a_pool_becomes_unavailable_too(unmigrated: Database) -> None:
    users = UserStore(unmigrated)
    with ThreadPoolExecutor(1) as pool, pytest.raises(Unavailable) as info:
        asyncio.run(offload(lambda: users.get("alice@example.org"), Need.LOGIN, pool=pool))
    assert info.value.what is Need.LOGIN


def test_answers_pass_through_unchanged(db: Database) -> None:
    """A store's refusal, a rule's refusal or a ValueError is an answer, not a failure."""
    users = UserStore(db)
    with pytest.raises(UserNotFound):
        asyncio.run(offload(lambda: users.set_enabled("nobody@example.org", False), Need.ACCOUNT))

    def refuse() -> None:
        raise Refusal(Kind.AUTH_FAILED)

    def invalid() -> None:
        raise ValueError("bad label")

    with pytest.raises(Refusal) as refused:
        asyncio.run(offload(refuse, Need.LOGIN))
    assert refused.value.kind is Kind.AUTH_FAILED
    with pytest.raises(ValueError, match="bad label"):
        asyncio.run(offload(invalid, Need.ACCOUNT))
    assert issubclass(UserNotFound, NotFound)


def test_the_loop_keeps_running_while_the_work_blocks() -> None:
    async def go() -> tuple[str, int]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.ensure_future(ticker())

        def blocking() -> str:
            time.sleep(0.5)
            return "done"

        result = await offload(blocking, Need.ACCOUNT)
        stop.set()
        await task
        return result, ticks

    result, ticks = asyncio.run(go())
    assert result == "done"
    # A blocked loop would have ticked once or twice at most.
    assert ticks >= 20


def test_on_done_runs_when_the_work_ends_not_when_the_caller_gives_up() -> None:
    """What a caller holds for the work (a place in the argon2 pool) stays held while it runs."""
    release = threading.Event()
    done: list[Future[str]] = []

    def work() -> str:
        release.wait(5)
        return "finished"

    async def go(pool: ThreadPoolExecutor) -> None:
        task = asyncio.ensure_future(offload(work, Need.LOGIN, pool=pool, on_done=done.append))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert done == []  # the caller is gone, the work is not
        release.set()
        for _ in range(100):
            if done:
                break
            await asyncio.sleep(0.01)

    with ThreadPoolExecutor(1) as pool:
        asyncio.run(go(pool))
    assert len(done) == 1 and done[0].result() == "finished"


def test_a_shut_down_pool_is_unavailable_and_takes_nothing() -> None:
    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    done: list[object] = []
    with pytest.raises(Unavailable):
        asyncio.run(offload(lambda: "never", Need.LOGIN, pool=pool, on_done=done.append))
    assert done == []
