"""One valid credential must not starve other logins: real gateway processes, real sockets.

Clients bind different 127.0.0.x source addresses to be different hosts. The
argon2 pool is made small (one worker, five waiting) so that a handful of
looping clients fill it within milliseconds, as 19 loops filled the default
pool in the report that led to these rules.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.client import Dialog, Reply
from tests.support.gateway import PASSWORD, USER, GatewayProcess

BOB = "bob@example.org"
CAROL = "carol@example.org"
SMALL_POOL = {
    "workers": 1,
    "max_pending": 5,
    "argon2_time_cost": 2,
    "argon2_memory_kib": 16384,
    "argon2_parallelism": 1,
}
# Out of the way, so that only the pool's shares decide.
UNLIMITED_LOGINS = {"auth_successes_per_account": 1_000_000, "auth_successes_per_ip": 1_000_000}
FLOOD_SECONDS = 30.0
VICTIM_TRIES = 10


def connect(gw: GatewayProcess, source: str) -> Dialog:
    d = Dialog(gw.port, source=source)
    assert d.greeting.code == 220, d.greeting
    assert d.cmd("EHLO client.test").code == 250
    assert d.starttls(gw.ssl_context()).code == 220
    assert d.cmd("EHLO client.test").code == 250
    return d


def auth(gw: GatewayProcess, source: str, user: str, password: str = PASSWORD) -> Reply:
    d = connect(gw, source)
    try:
        reply = d.login(user, password)
        d.cmd("QUIT")
        return reply
    finally:
        d.close()


class Flood:
    """Clients that log in with the right password in a loop, until stopped (or 30 s)."""

    def __init__(self, gw: GatewayProcess, clients: list[tuple[str, str]]) -> None:
        self.codes: list[int] = []
        self._gw = gw
        self._stop = threading.Event()
        self._deadline = time.monotonic() + FLOOD_SECONDS
        self._threads = [
            threading.Thread(target=self._loop, args=client, daemon=True) for client in clients
        ]

    def _loop(self, source: str, user: str) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            try:
                self.codes.append(auth(self._gw, source, user).code)
            except (OSError, AssertionError):
                self.codes.append(0)

    def __enter__(self) -> Flood:
        for thread in self._threads:
            thread.start()
        # Until the pool is in use: some logins through, or some refused.
        while len(self.codes) < 2 * len(self._threads) and time.monotonic() < self._deadline:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(20)


def victim_logins(gw: GatewayProcess, source: str, user: str) -> list[tuple[int, float]]:
    """(reply code, seconds) of a few logins of a user who has nothing to do with the flood."""
    results = []
    for _ in range(VICTIM_TRIES):
        started = time.monotonic()
        reply = auth(gw, source, user)
        results.append((reply.code, time.monotonic() - started))
        time.sleep(0.05)
    return results


def small_pool_gateway(gateway_factory: Any, limits: dict[str, Any]) -> GatewayProcess:
    gw = gateway_factory({"auth": SMALL_POOL, "limits": limits})
    gw.add_user(BOB)
    gw.add_user(CAROL)
    return gw


@pytest.mark.parametrize(
    "flooders",
    [
        # One address, one account: the report's case (the account's share binds).
        [("127.0.0.2", USER)] * 8,
        # One address, two accounts: the address's share binds.
        [("127.0.0.2", USER)] * 4 + [("127.0.0.2", CAROL)] * 4,
        # One account from four addresses: the account's share binds.
        [(f"127.0.0.{n}", USER) for n in (2, 4, 5, 6)] * 2,
    ],
    ids=["one-address-one-account", "one-address-two-accounts", "one-account-four-addresses"],
)
def test_a_correct_password_in_a_loop_does_not_keep_others_out(
    gateway_factory: Any, flooders: list[tuple[str, str]]
) -> None:
    gw = small_pool_gateway(gateway_factory, UNLIMITED_LOGINS)

    with Flood(gw, flooders) as flood:
        victim = victim_logins(gw, "127.0.0.3", BOB)
        flooding = list(flood.codes)

    assert [code for code, _ in victim] == [235] * VICTIM_TRIES, victim
    assert max(seconds for _, seconds in victim) < 10, victim
    # The flood did run, and was held to its share: some got through, the excess 454.
    assert 235 in flooding and 454 in flooding, sorted(set(flooding))
    assert set(flooding) <= {235, 454}, sorted(set(flooding))


def test_successful_logins_are_limited_per_account_and_per_address(
    gateway_factory: Any,
) -> None:
    gw = gateway_factory({"limits": {"auth_successes_per_account": 3, "auth_successes_per_ip": 5}})
    gw.add_user(BOB)
    gw.add_user(CAROL)

    alice = [auth(gw, "127.0.0.2", USER).code for _ in range(4)]
    elsewhere = auth(gw, "127.0.0.4", USER)
    bob = [auth(gw, "127.0.0.2", BOB).code for _ in range(3)]
    carol_elsewhere = auth(gw, "127.0.0.3", CAROL)
    bob_elsewhere = auth(gw, "127.0.0.3", BOB)

    # The 4th login of the account is refused, from any address.
    assert alice == [235, 235, 235, 454]
    assert (elsewhere.code, elsewhere.status) == (454, "4.7.0")
    assert elsewhere.text.endswith("Too many logins, try again later")
    # The address has had 5 logins (3 of alice, 2 of bob): the 6th is refused.
    assert bob == [235, 235, 454]
    # Other addresses and accounts are untouched.
    assert carol_elsewhere.code == 235
    assert bob_elsewhere.code == 235
    limits = [e["limit"] for e in gw.log_events("limit")]
    assert limits == ["account logins", "account logins", "ip logins"]
    results = [e["result"] for e in gw.log_events("auth")]
    assert results.count("limited") == 3 and "failed" not in results


def test_logins_over_the_success_limit_cost_no_password_check(gateway_factory: Any) -> None:
    """Production argon2 settings: a checked password costs far more CPU than a refusal."""
    production = {"argon2_time_cost": 3, "argon2_memory_kib": 65536, "argon2_parallelism": 4}
    # Without the success cache, so that both allowed logins are checked with argon2.
    production["success_cache_entries"] = 0
    # The user is added after configuring, so its hash has the production settings too.
    gw = gateway_factory(
        {"auth": production, "limits": {"auth_successes_per_account": 2}}, process=True
    )
    assert gw.proc is not None
    stat = Path(f"/proc/{gw.proc.pid}/stat")

    def cpu() -> int:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    checked = []
    for _ in range(2):
        d = connect(gw, "127.0.0.7")
        before = cpu()
        assert d.login(USER, PASSWORD).code == 235
        checked.append(cpu() - before)
        d.close()
    d = connect(gw, "127.0.0.7")
    before = cpu()
    for _ in range(4):
        assert d.login(USER, PASSWORD).code == 454
    refused = cpu() - before
    d.close()

    assert min(checked) >= 3, "argon2 with production settings should cost several ticks"
    assert refused * 2 < min(checked)
