"""Readiness: a real database and a real smarthost, or real ways for them to fail; one check
at a time, reused for a while, "no" as soon as the gateway stops."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from submitgw.config import SmarthostServer
from submitgw.services.readiness import Readiness, Verdict
from submitgw.store import Database
from tests.support.smarthost import CaptureSmarthost


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server(port: int) -> SmarthostServer:
    return SmarthostServer("127.0.0.1", port)


@pytest.fixture
def database(sqlite_template: Path, tmp_path: Path) -> Iterator[Database]:
    path = tmp_path / "submitgw.db"
    shutil.copyfile(sqlite_template, path)
    db = Database(f"sqlite:///{path}")
    yield db
    db.dispose()


class Counted:
    """A ping that counts its calls (and may be held until released)."""

    def __init__(self, ping: Callable[[], object], hold: bool = False) -> None:
        self.ping = ping
        self.calls = 0
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self) -> object:
        self.calls += 1
        self.release.wait(10)
        return self.ping()


@contextlib.asynccontextmanager
async def greeter(banner: bytes) -> AsyncIterator[int]:
    """A server that says `banner` (or nothing, if empty) and then waits."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if banner:
            writer.write(banner)
        with contextlib.suppress(Exception):
            await reader.read(100)
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(srv.sockets[0].getsockname()[1])
    finally:
        srv.close()


def check(readiness: Readiness) -> Verdict:
    return asyncio.run(readiness.verdict())


def test_ready_with_a_database_and_a_greeting_smarthost(
    database: Database, smarthost: CaptureSmarthost
) -> None:
    readiness = Readiness(
        database.ping,
        (server(closed_port()), server(smarthost.port)),
        cache_seconds=5,
        timeout=2,
    )

    verdict = check(readiness)

    assert verdict.ready, verdict.text()
    assert verdict.text().startswith("ready\ndatabase: ok (")
    assert verdict.text().endswith(f"smarthost: ok (127.0.0.1:{smarthost.port})\n")


def test_no_smarthost_greeting_is_not_ready(database: Database) -> None:
    async def main() -> Verdict:
        async with greeter(b"554 5.3.2 Not now\r\n") as refusing, greeter(b"") as silent:
            servers = (server(closed_port()), server(refusing), server(silent))
            return await Readiness(database.ping, servers, cache_seconds=5, timeout=0.3).verdict()

    verdict = asyncio.run(main())

    assert not verdict.ready
    text = verdict.text()
    assert "ConnectionRefusedError" in text
    assert "greeted with b'554 5.3.2 Not now" in text
    assert "no greeting within 0.3 s" in text


def test_a_multiline_greeting_is_read_to_its_end(database: Database) -> None:
    async def main() -> Verdict:
        async with greeter(b"220-mx.test ESMTP\r\n220-more\r\n220 ready\r\n") as port:
            return await Readiness(
                database.ping, (server(port),), cache_seconds=5, timeout=1
            ).verdict()

    assert asyncio.run(main()).ready


def test_unreachable_or_broken_databases_are_not_ready(
    smarthost: CaptureSmarthost, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not an SQLite file, whatever its name says" * 100)
    urls = {
        "postgresql": f"postgresql+psycopg://gw@127.0.0.1:{closed_port()}/submitgw",
        "sqlite": f"sqlite:///{garbage}",
    }
    for url in urls.values():
        db = Database(url)
        try:
            verdict = check(
                Readiness(db.ping, (server(smarthost.port),), cache_seconds=5, timeout=5)
            )
        finally:
            db.dispose()
        assert not verdict.ready
        (probe, _) = verdict.probes
        assert probe.detail in {"failed (OperationalError)", "failed (DatabaseError)"}, probe
        assert url.split("://")[0] not in probe.detail


def test_a_hanging_query_holds_one_thread_and_is_not_repeated(
    database: Database, smarthost: CaptureSmarthost
) -> None:
    ping = Counted(database.ping, hold=True)
    readiness = Readiness(ping, (server(smarthost.port),), cache_seconds=0, timeout=0.2)

    async def main() -> list[Verdict]:
        first = await readiness.verdict()
        second = await readiness.verdict()
        ping.release.set()
        await asyncio.sleep(0.1)
        return [first, second, await readiness.verdict()]

    first, second, third = asyncio.run(main())

    waited = [float(v.probes[0].detail.split()[3]) for v in (first, second)]
    assert [v.probes[0].detail for v in (first, second)] == [
        f"no answer for {w:.1f} s" for w in waited
    ]
    assert 0.2 <= waited[0] < waited[1]
    assert third.ready
    assert ping.calls == 2  # the hanging one, then a fresh one once it had answered


def test_a_verdict_is_reused_and_shared(database: Database, smarthost: CaptureSmarthost) -> None:
    now = [1000.0]
    ping = Counted(database.ping)
    readiness = Readiness(
        ping, (server(smarthost.port),), cache_seconds=5, timeout=2, clock=lambda: now[0]
    )

    async def main() -> None:
        together = await asyncio.gather(*(readiness.verdict() for _ in range(10)))
        assert all(v.ready for v in together) and ping.calls == 1
        now[0] += 4.9
        await readiness.verdict()
        assert ping.calls == 1
        now[0] += 0.2
        await readiness.verdict()
        assert ping.calls == 2

    asyncio.run(main())


def test_stopping_is_not_ready_at_once(database: Database) -> None:
    ping = Counted(database.ping)
    readiness = Readiness(ping, (server(closed_port()),), cache_seconds=5, timeout=2)
    readiness.stop()

    verdict = check(readiness)

    assert (verdict.ready, verdict.text()) == (False, "not ready: stopping\n")
    assert ping.calls == 0


def test_a_reload_is_probed_at_once_despite_a_cached_verdict(
    database: Database, smarthost: CaptureSmarthost
) -> None:
    """Without the reset, the cached "not ready" would stand for `cache_seconds` more."""
    readiness = Readiness(database.ping, (server(closed_port()),), cache_seconds=60, timeout=2)

    async def main() -> tuple[Verdict, Verdict]:
        before = await readiness.verdict()
        readiness.reconfigure((server(smarthost.port),), cache_seconds=60, timeout=2)
        return before, await readiness.verdict()

    before, after = asyncio.run(main())

    assert not before.ready
    assert after.ready, after.text()
