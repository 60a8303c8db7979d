"""Debian's Postfix as a real smarthost: a private instance started by the test on loopback.

The capture sink speaks SMTP the way we wrote it; Postfix is what the gateway will really relay
to, so end-to-end tests send gateway -> Postfix -> capture sink and read the result at the sink.
The instance itself, and what was learnt building it, is in scripts/peers.py (the benchmarks
run it too); this wraps it for pytest: a missing Postfix or a non-root run skips the test
locally and fails it in CI.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Self

import pytest

from scripts.peers import PostfixInstance
from tests.support.smarthost import CaptureSmarthost, require_root, require_tool


class PostfixSmarthost(PostfixInstance):
    """A private Postfix whose smtpd listens on 127.0.0.1 and relays everything to ``relay``."""

    def __init__(self, relay: CaptureSmarthost, keep_log_in: Path | None = None) -> None:
        super().__init__(relay.host, relay.port, keep_log_in=keep_log_in)
        self.relay = relay

    def start(self, extra_config: Mapping[str, str] | None = None) -> Self:
        require_tool("postfix")
        require_root("a private Postfix instance")
        self.relay_host, self.relay_port = self.relay.host, self.relay.port  # known once started
        return super().start(extra_config)


@pytest.fixture
def postfix_smarthost(
    smarthost: CaptureSmarthost, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PostfixSmarthost]:
    """A private Postfix relaying to the test's ``smarthost`` capture sink."""
    instance = PostfixSmarthost(smarthost, keep_log_in=tmp_path_factory.mktemp("postfix"))
    try:
        yield instance.start()
    finally:
        instance.stop()
