"""Tell a service manager (systemd's `Type=notify`) how the process is doing.

The protocol is one datagram of `KEY=VALUE` lines to the unix socket named in
$NOTIFY_SOCKET, so a few lines of `socket` do it without a dependency. Without the
variable (not started by systemd) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"


def socket_address(env: Mapping[str, str]) -> str | bytes | None:
    """The manager's socket: a path, or `@name` for Linux's abstract namespace."""
    name = env.get(NOTIFY_SOCKET_ENV, "")
    if name.startswith("@"):
        return b"\0" + name[1:].encode("utf-8")
    if name.startswith("/"):
        return name
    # Empty, or a vsock address (`vsock:…`) that only VMs booted by systemd see.
    return None


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1"); True when a manager was there to be told.

    A failure is logged, never raised: the gateway serves whether or not its manager
    heard, and systemd itself times the start out if READY never arrives. The socket
    does not block, so a manager that stopped reading never holds up the event loop.
    """
    address = socket_address(os.environ if env is None else env)
    if address is None:
        return False
    try:
        with socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        ) as sock:
            sock.sendto(state.encode("utf-8"), address)
    except OSError as exc:
        log.warning("cannot notify the service manager (%s): %s", state.split("\n")[0], exc)
        return False
    return True
