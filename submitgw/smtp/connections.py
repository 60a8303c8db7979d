"""Connection accounting at the socket: counted at accept, released exactly once.

The session layers TLS and SMTP over the accepted socket, and a TLS layer does
not report a failed or abandoned handshake to the protocol above it. So the
count of live connections cannot live in the session: it lives in `Connection`,
which stays the socket's protocol for the socket's whole life (it forwards to
whatever protocol is layered above) and releases its slot when the socket
itself is gone, whatever ended it.

Behind a load balancer (`Intake`), the socket's peer is the balancer and the
client is named by the PROXY header it sends first. Such a connection is
counted at accept against the total only, and against its client's address
once the header has named it; the session is made after that, so it and
everything it asks see the client's address in `client_ip` alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from submitgw.errors import Kind, Refusal
from submitgw.rules import proxy
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
        # Oldest first, each with the address key it is counted under; None: a
        # balancer's connection whose client is not known yet.
        self.live: dict[Connection, str | None] = {}
        self.per_client: Counter[str] = Counter()
        self.closed = False
        self.evicted = 0
        self.released = 0
        # Connections admitted so far (counted at accept, or once a balancer named the
        # client), per listener.
        self.admitted: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return len(self.live)

    def open_per_listener(self) -> Counter[str]:
        """Live connections per listener (read for metrics, a walk over the table)."""
        return Counter(connection.listener for connection in self.live)

    def admit(self, connection: Connection, *, client_known: bool = True) -> str | None:
        """Count a new connection; or say why it is refused (and count nothing).

        Without `client_known` (a balancer's connection before its header) only
        the total is counted; `settle` counts the client's address later.
        """
        if self.closed:
            return "shutting-down"
        key = client_key(connection.client_ip) if client_known else None
        if key is not None and self.per_client[key] >= self.max_per_client:
            return "too-many-connections-from-client"
        if self.total >= self.max_total and not self._evict_one():
            return "too-many-connections"
        self.live[connection] = key
        if key is not None:
            self.per_client[key] += 1
            self.admitted[connection.listener] += 1
        return None

    def settle(self, connection: Connection) -> str | None:
        """Count an admitted connection under the client address it now knows; or say
        why it is refused (it stays counted in the total until released)."""
        if self.closed:
            return "shutting-down"
        assert self.live[connection] is None
        key = client_key(connection.client_ip)
        if self.per_client[key] >= self.max_per_client:
            return "too-many-connections-from-client"
        self.live[connection] = key
        self.per_client[key] += 1
        self.admitted[connection.listener] += 1
        return None

    def release(self, connection: Connection) -> None:
        key = self.live.pop(connection)
        self.released += 1
        if key is None:
            return
        self.per_client[key] -= 1
        if self.per_client[key] <= 0:
            del self.per_client[key]

    def _evict_one(self) -> bool:
        """A balancer's connection before its header is no one's yet: not chosen."""
        victim: Connection | None = None
        heaviest = 0
        for connection, key in self.live.items():  # oldest first: ties go to the oldest
            held = 0 if key is None else self.per_client[key]
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


@dataclass(frozen=True)
class Intake:
    """A listener behind load balancers: who may send PROXY headers, and how long one
    may take to arrive."""

    trusted: proxy.TrustedProxies
    timeout: float


class Connection(asyncio.Protocol):
    """The accepted socket's protocol from accept to close.

    Incoming bytes go to `upper`, which is the session, or the TLS layer the
    session put in between (`layer`); a buffered layer gets them copied into its
    own buffer. Behind a balancer (`intake`), bytes go to the PROXY header first,
    and whatever follows the header to the session.
    """

    def __init__(
        self,
        table: ConnectionTable,
        listener: str,
        make_session: Callable[[Connection], Upper],
        *,
        greet_refusals: bool,
        intake: Intake | None = None,
        recorder: audit.Recorder,
    ) -> None:
        self.table = table
        self.recorder = recorder
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
        self.intake = intake
        # The PROXY header's bytes so far; None when none is awaited (any more).
        self._header: bytearray | None = None
        self._header_late: asyncio.TimerHandle | None = None

    # --- the socket's side --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else "?"
        if self.intake is not None:
            self._await_header(transport, self.intake)
            return
        refusal = self.table.admit(self)
        if refusal is not None:
            self._refuse(transport, refusal)
            return
        self.counted = True
        self._start_session(transport)

    def _refuse(self, transport: asyncio.Transport, refusal: str) -> None:
        self.recorder.connection_refused(
            listener=self.listener, client=self.client_ip, reason=refusal
        )
        if self.greet_refusals:
            transport.write(replies.line(Refusal(REFUSALS[refusal])).encode("ascii") + b"\r\n")
            transport.close()
        else:
            transport.abort()

    def _start_session(self, transport: asyncio.Transport) -> None:
        session = self.make_session(self)
        self.session = session
        self.upper = session
        session.connection_made(transport)

    # --- behind a load balancer ---------------------------------------------------

    def _await_header(self, transport: asyncio.Transport, intake: Intake) -> None:
        """Only a trusted balancer may connect; it has `timeout` seconds to name the client."""
        if self.client_ip not in intake.trusted:
            self._refuse_proxy(proxy.UNTRUSTED)
            return
        refusal = self.table.admit(self, client_known=False)
        if refusal is not None:
            self._refuse(transport, refusal)
            return
        self.counted = True
        self._header = bytearray()
        self._header_late = asyncio.get_running_loop().call_later(
            intake.timeout, self._refuse_proxy, proxy.LATE
        )

    def _header_received(self, data: bytes) -> None:
        assert self._header is not None and self.transport is not None
        self._header += data
        parsed = proxy.parse(bytes(self._header[: proxy.MAX_HEADER]))
        if parsed is None:
            return
        if isinstance(parsed, proxy.Refused):
            self._refuse_proxy(parsed.reason)
            return
        rest = bytes(self._header[parsed.consumed :])
        self._stop_awaiting()
        if parsed.client is not None:
            self.client_ip = parsed.client[0]
        transport = self.transport
        refusal = self.table.settle(self)
        if refusal is not None:
            self._release()
            self._refuse(transport, refusal)
            return
        self._start_session(transport)
        if rest and self.transport is not None:
            self.data_received(rest)

    def _refuse_proxy(self, reason: str) -> None:
        """A proxy speaks first and nothing else may: no reply, the socket is cut."""
        self._stop_awaiting()
        self.recorder.connection_refused(
            listener=self.listener, client=self.client_ip, reason=reason
        )
        if self.transport is not None:
            self.transport.abort()

    def _stop_awaiting(self) -> None:
        self._header = None
        if self._header_late is not None:
            self._header_late.cancel()
            self._header_late = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._cut is not None:
            self._cut.cancel()
            self._cut = None
        self._stop_awaiting()
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
        if self._header is not None:
            self._header_received(data)
            return
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
        if self._header is not None:
            self._refuse_proxy(proxy.TRUNCATED if self._header else proxy.MISSING)
            return None
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
