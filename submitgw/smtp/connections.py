"""Connection accounting at the socket: counted at accept, released exactly once.

The session layers TLS and SMTP over the accepted socket, and a TLS layer does
not report a failed or abandoned handshake to the protocol above it. So the
count of live connections cannot live in the session: it lives in `Connection`,
which stays the socket's protocol for the socket's whole life (it forwards to
whatever protocol is layered above) and releases its slot when the socket
itself is gone, whatever ended it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from submitgw.errors import Kind, Refusal
from submitgw.rules.limits import client_key
from submitgw.services import audit
from submitgw.smtp import replies

log = logging.getLogger(__name__)

# After the session has ended, how long a closing socket may take to flush its
# last reply before it is cut: a client that stops reading must not keep it.
CLOSE_GRACE = 5.0


class Upper(Protocol):
    """What `Connection` needs of the protocol it carries (a session)."""

    @property
    def identified(self) -> bool: ...
    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
    def evict(self) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...


class ConnectionTable:
    """Live connections, in all and per client address (IPv6 grouped by /64).

    When every slot is taken, a connection whose client has not yet identified
    itself gives its slot to the newcomer: otherwise idle or slow strangers
    could hold every slot, and identified users would be refused. The stranger
    chosen is the oldest of the address holding the most connections, so a
    flood from a few addresses cannot push out a mail client still logging in.
    """

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.live: dict[Connection, None] = {}  # oldest first
        self.per_client: Counter[str] = Counter()
        self.closed = False
        self.evicted = 0
        self.released = 0

    @property
    def total(self) -> int:
        return len(self.live)

    def admit(self, connection: Connection) -> str | None:
        """Count a new connection; or say why it is refused (and count nothing)."""
        if self.closed:
            return "shutting-down"
        key = client_key(connection.client_ip)
        if self.per_client[key] >= self.max_per_client:
            return "too-many-connections-from-client"
        if self.total >= self.max_total and not self._evict_one():
            return "too-many-connections"
        self.live[connection] = None
        self.per_client[key] += 1
        return None

    def release(self, connection: Connection) -> None:
        del self.live[connection]
        self.released += 1
        key = client_key(connection.client_ip)
        self.per_client[key] -= 1
        if self.per_client[key] <= 0:
            del self.per_client[key]

    def _evict_one(self) -> bool:
        victim: Connection | None = None
        heaviest = 0
        for connection in self.live:  # oldest first: ties go to the oldest
            held = self.per_client[client_key(connection.client_ip)]
            if held > heaviest and not connection.identified:
                victim, heaviest = connection, held
        if victim is None:
            return False
        victim.evict()
        self.evicted += 1
        return True


REFUSALS = {
    "shutting-down": Kind.SHUTDOWN_REFUSED,
    "too-many-connections": Kind.TOO_MANY_CONNECTIONS,
    "too-many-connections-from-client": Kind.TOO_MANY_FROM_CLIENT,
}


class Connection(asyncio.Protocol):
    """The accepted socket's protocol from accept to close.

    Incoming bytes go to `upper`, which is the session, or the TLS layer the
    session put in between (`layer`); a buffered layer gets them copied into its
    own buffer.
    """

    def __init__(
        self,
        table: ConnectionTable,
        listener: str,
        make_session: Callable[[Connection], Upper],
        *,
        greet_refusals: bool,
    ) -> None:
        self.table = table
        self.listener = listener
        self.make_session = make_session
        # On a plain-text listener a refused client can be told why; under
        # implicit TLS nothing can be said before a handshake we will not do.
        self.greet_refusals = greet_refusals
        self.transport: asyncio.Transport | None = None
        self.session: Upper | None = None
        self.upper: asyncio.BaseProtocol | Upper | None = None
        self.client_ip = "?"
        self.counted = False
        self.session_lost = False
        self._cut: asyncio.TimerHandle | None = None

    # --- the socket's side --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else "?"
        refusal = self.table.admit(self)
        if refusal is not None:
            audit.connection_refused(listener=self.listener, client=self.client_ip, reason=refusal)
            if self.greet_refusals:
                transport.write(replies.line(Refusal(REFUSALS[refusal])).encode("ascii") + b"\r\n")
                transport.close()
            else:
                transport.abort()
            return
        self.counted = True
        session = self.make_session(self)
        self.session = session
        self.upper = session
        session.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._cut is not None:
            self._cut.cancel()
            self._cut = None
        self._release()
        upper, self.upper = self.upper, None
        if upper is not None and upper is not self.session:
            # The layer may or may not tell the session (a TLS layer does not
            # when the handshake never completed): tell it ourselves after it.
            upper.connection_lost(exc)
            asyncio.get_running_loop().call_soon(self._session_lost, exc)
        else:
            self._session_lost(exc)

    def _release(self) -> None:
        if self.counted:
            self.counted = False
            self.table.release(self)

    @property
    def identified(self) -> bool:
        return self.session is not None and self.session.identified

    def evict(self) -> None:
        """Give the slot up now; the session says goodbye, the socket follows."""
        self._release()
        if self.session is not None:
            self.session.evict()
        self._cut_later()

    def _session_lost(self, exc: Exception | None) -> None:
        if self.session is not None and not self.session_lost:
            self.session_lost = True
            self.session.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        upper = self.upper
        if isinstance(upper, asyncio.BufferedProtocol):
            view = memoryview(data)
            while view:
                buffer = memoryview(upper.get_buffer(len(view)))
                n = min(len(buffer), len(view))
                buffer[:n] = view[:n]
                upper.buffer_updated(n)
                view = view[n:]
        elif isinstance(upper, asyncio.Protocol):
            upper.data_received(data)

    def eof_received(self) -> bool | None:
        upper = self.upper
        if isinstance(upper, asyncio.Protocol | asyncio.BufferedProtocol):
            return upper.eof_received()
        return None

    def pause_writing(self) -> None:
        if self.upper is not None:
            self.upper.pause_writing()

    def resume_writing(self) -> None:
        if self.upper is not None:
            self.upper.resume_writing()

    # --- the session's side -------------------------------------------------------

    def layer(self, protocol: asyncio.BaseProtocol) -> None:
        """Send the socket's bytes to `protocol` (a TLS layer) from now on."""
        self.upper = protocol

    def finished(self) -> None:
        """The session is over: the socket gets a moment to flush, then is cut."""
        self._cut_later()

    def _cut_later(self) -> None:
        if self.transport is None or self._cut is not None:
            return
        self._cut = asyncio.get_running_loop().call_later(CLOSE_GRACE, self.transport.abort)
