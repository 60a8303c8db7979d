"""Server-side TLS as a protocol layer, over pyOpenSSL memory BIOs.

asyncio's own TLS layer can be put under a live connection (STARTTLS) only
through private names, never tells the protocol above when a handshake fails,
and, with stdlib `ssl`, cannot ask for a client certificate without letting
OpenSSL judge it: a certificate from another CA fails the whole handshake. Here
the handshake accepts whatever certificate is offered and hands it up; the
session judges it.

The layer sits between the socket's protocol (`connections.Connection`, which
forwards raw bytes to it) and an application protocol, to which it offers an
`asyncio.Transport` once the handshake is done. The application is told nothing
of a handshake that fails or times out: `TlsLayer.handshake` says why, and the
socket is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography import x509
from OpenSSL import SSL, crypto

from submitgw.config import TlsConfig
from submitgw.tls import TLS12_CIPHERS

# OpenSSL hands out at most one record (16 KiB of plaintext) per read.
RECORD = 16384
# Plaintext gathered from the records of one socket read before the application gets it.
DELIVER = 256 * 1024
CLOSED_DURING_HANDSHAKE = "closed during the handshake"
TIMED_OUT = "TimeoutError"


def _accept_any(
    connection: SSL.Connection, certificate: crypto.X509, error: int, depth: int, ok: int
) -> bool:
    """OpenSSL's verdict is not ours to act on: the session checks the certificate."""
    return True


def server_context(cfg: TlsConfig, client_certificates: str = "off") -> SSL.Context:
    """The settings of `submitgw.tls.server_context`, for this layer.

    TLS 1.2+ (or 1.3+), AEAD suites only, server preference, no compression, no
    renegotiation. With client certificates on, the certificate request names our
    CA(s), so that clients offer the right certificate. "required" asks the same
    way: a client without a usable certificate is refused by the session (530 with
    the reason), not by a handshake failure it could not read.
    """
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(
        SSL.TLS1_3_VERSION if cfg.min_version == "1.3" else SSL.TLS1_2_VERSION
    )
    ctx.set_options(
        SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE
    )
    # An idle connection gives back its record buffers: 1,000 idle TLS connections
    # cost 33 MiB instead of 49.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.set_cipher_list(TLS12_CIPHERS.encode("ascii"))
    ctx.use_certificate_chain_file(str(cfg.cert))
    ctx.use_privatekey_file(str(cfg.key))
    ctx.check_privatekey()
    # Without it OpenSSL fails the resumption of a session that had a client certificate.
    ctx.set_session_id(b"submitgw")
    if client_certificates == "off":
        ctx.set_verify(SSL.VERIFY_NONE)
        return ctx
    for ca in x509.load_pem_x509_certificates(Path(cfg.ca_cert).read_bytes()):
        ctx.add_client_ca(ca)
    ctx.set_verify(SSL.VERIFY_PEER, _accept_any)
    return ctx


def reason_of(error: BaseException) -> str:
    """OpenSSL's words for a failure (`unsupported protocol`), for the `tls` log event."""
    if isinstance(error, SSL.SysCallError):
        return str(error.args[1]) if len(error.args) > 1 else "SysCallError"
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        for entry in error.args[0]:
            if isinstance(entry, tuple) and entry and entry[-1]:
                return str(entry[-1])
    return str(error) or type(error).__name__


class TlsError(ConnectionError):
    """The TLS connection failed after its handshake (a bad record, a refused renegotiation)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class State(enum.Enum):
    NEW = "new"  # layered, not started
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSING = "closing"  # our close_notify sent, waiting for the peer's
    CLOSED = "closed"


class TlsLayer(asyncio.Protocol):
    """One server-side TLS connection between a raw transport and `app`.

    Lifecycle: `start()` begins the handshake. On success `handshake` resolves
    to None and `app.connection_made(self.transport)` follows; then plaintext
    goes up to `app.data_received`, the peer's close_notify to `app.eof_received`,
    and the end of the socket to `app.connection_lost`, once. On failure or
    after `handshake_timeout`, `handshake` resolves to the reason, the raw
    transport is closed and `app` is never called. Closing sends close_notify
    and waits up to `close_timeout` for the peer's before the socket is cut.

    Back-pressure runs both ways: the application pausing its reading pauses the
    raw transport's (ciphertext waits in the kernel, not here), and the raw
    transport's full write buffer pauses the application's writing (what the
    application writes is encrypted and handed down at once, so the raw buffer
    is the only buffer).
    """

    def __init__(
        self,
        context: SSL.Context,
        app: asyncio.Protocol,
        *,
        handshake_timeout: float,
        close_timeout: float = 5.0,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.app = app
        self.handshake_timeout = handshake_timeout
        self.close_timeout = close_timeout
        self.handshake: asyncio.Future[str | None] = self.loop.create_future()
        self.transport = TlsTransport(self)
        self.raw: asyncio.Transport | None = None
        self.state = State.NEW
        self.discarded = 0
        self._tls = SSL.Connection(context, None)
        self._tls.set_accept_state()
        self._early: list[bytes] = []
        self._early_eof = False
        self._timer: asyncio.TimerHandle | None = None
        self.reading_paused = False
        self._raw_writing_paused = False
        self._app_writing_paused = False
        self._peer_closed = False
        self._app_open = False
        self._error: TlsError | None = None
        self.peer_certificate: x509.Certificate | None = None
        self.peer_cert_chain: list[x509.Certificate] = []
        self.cipher: str | None = None
        self.version: str | None = None

    def start(self, raw: asyncio.Transport, pending: bytes = b"", *, discard_pending: bool) -> None:
        """Begin the server handshake over `raw`.

        The caller puts this layer under the socket (`Connection.layer`) and calls
        `start` in the same step, with no await in between. `pending` is what the
        caller had already read from the socket and not consumed. Under implicit
        TLS that is the start of the ClientHello: `discard_pending=False` feeds it
        to the handshake. After STARTTLS, it is what the client sent behind the
        command before it could have seen our 220: plaintext that must never be
        read as TLS nor as commands inside TLS (RFC 3207 5, CVE-2011-0411), so
        `discard_pending=True` drops it; `discarded` says how many bytes. Bytes the
        layer itself receives from the socket are always TLS.
        """
        if self.state is State.CLOSED:
            return  # the socket went before the start: `handshake` says so
        if self.state is not State.NEW:
            raise RuntimeError("a TLS layer is started once")
        self.raw = raw
        self.state = State.HANDSHAKE
        self._timer = self.loop.call_later(self.handshake_timeout, self._handshake_timed_out)
        if discard_pending:
            self.discarded = len(pending)
        elif pending:
            self._early.insert(0, pending)
        early, self._early = b"".join(self._early), []
        if early:
            self.data_received(early)
        if self._early_eof and self.state is State.HANDSHAKE:
            self._fail(CLOSED_DURING_HANDSHAKE)

    # --- from the socket ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Not used: the layer is put under a live socket and begins with `start`."""

    def data_received(self, data: bytes) -> None:
        if self.state is State.NEW:
            self._early.append(data)
            return
        if self.state is State.CLOSED:
            return
        self._tls.bio_write(data)
        if self.state is State.HANDSHAKE:
            self._continue_handshake()
        if self.state in (State.OPEN, State.CLOSING):
            self._read()

    def eof_received(self) -> bool:
        """TCP end without close_notify: the end of the input all the same."""
        if self.state is State.NEW:
            self._early_eof = True
        elif self.state is State.HANDSHAKE:
            self._fail(CLOSED_DURING_HANDSHAKE)
        elif self.state in (State.OPEN, State.CLOSING):
            self._peer_ended()
        return True  # the layer has closed the socket, or keeps it open for the app

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.state = State.CLOSED
        if not self.handshake.done():
            self.handshake.set_result(CLOSED_DURING_HANDSHAKE if exc is None else reason_of(exc))
        if self._app_open:
            self._app_open = False
            self.app.connection_lost(self._error or exc)

    def pause_writing(self) -> None:
        self._raw_writing_paused = True
        self._tell_app_writing()

    def resume_writing(self) -> None:
        self._raw_writing_paused = False
        self._tell_app_writing()

    # --- handshake ------------------------------------------------------------------

    def _continue_handshake(self) -> None:
        try:
            self._tls.do_handshake()
        except SSL.WantReadError:
            self._flush()
            return
        except SSL.Error as exc:
            self._fail(reason_of(exc))
            return
        self._flush()
        self._cancel_timer()
        self.state = State.OPEN
        self.peer_certificate = self._tls.get_peer_certificate(as_cryptography=True)
        chain = self._tls.get_peer_cert_chain(as_cryptography=True) or []
        if self.peer_certificate is not None:
            # A server's view of the chain leaves the client's own certificate out.
            chain = [self.peer_certificate, *(c for c in chain if c != self.peer_certificate)]
        self.peer_cert_chain = chain
        self.cipher = self._tls.get_cipher_name()
        self.version = self._tls.get_protocol_version_name()
        self.handshake.set_result(None)
        self._app_open = True
        self.app.connection_made(self.transport)
        self._tell_app_writing()

    def _handshake_timed_out(self) -> None:
        self._timer = None
        self._fail(TIMED_OUT, abort=True)

    def _fail(self, reason: str, *, abort: bool = False) -> None:
        """The handshake is over without a connection: say why, and let the socket go."""
        if not self.handshake.done():
            self.handshake.set_result(reason)
        if not abort:
            self._flush()  # OpenSSL's alert, so the client learns why
        self._shut_raw(abort=abort)

    # --- reading --------------------------------------------------------------------

    def _read(self) -> None:
        """Decrypt what the socket brought, unless the application paused its reading."""
        chunks: list[bytes] = []
        size = 0
        while self.state in (State.OPEN, State.CLOSING) and not self._peer_closed:
            if self.reading_paused and self.state is State.OPEN:
                break
            try:
                chunk = self._tls.recv(RECORD)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self._deliver(chunks)
                chunks = []
                self._peer_ended()
                break
            except SSL.Error as exc:
                self._deliver(chunks)
                chunks = []
                self._broken(exc)
                break
            if self.state is State.CLOSING:
                continue  # the application has closed: nothing more goes up
            chunks.append(chunk)
            size += len(chunk)
            if size >= DELIVER:
                self._deliver(chunks)
                chunks, size = [], 0
        self._deliver(chunks)
        self._flush()  # a reply OpenSSL owes the peer (key update, alert)

    def _deliver(self, chunks: list[bytes]) -> None:
        if chunks and self.state is State.OPEN:
            self.app.data_received(b"".join(chunks))

    def _peer_ended(self) -> None:
        """The peer will send nothing more: close_notify, or the TCP end."""
        if self._peer_closed:
            return
        self._peer_closed = True
        if self.state is State.CLOSING:
            self._shut_raw()
            return
        keep_open = self.app.eof_received()
        if not keep_open:
            self.close()

    def _broken(self, exc: SSL.Error) -> None:
        self._error = TlsError(reason_of(exc))
        self._flush()
        self._shut_raw()

    def pause_app_reading(self) -> None:
        if self.reading_paused:
            return
        self.reading_paused = True
        if self.raw is not None and self.state is State.OPEN:
            self.raw.pause_reading()

    def resume_app_reading(self) -> None:
        if not self.reading_paused:
            return
        self.reading_paused = False
        if self.raw is not None and self.state is State.OPEN:
            self.raw.resume_reading()
            # Records read before the pause may wait in OpenSSL's buffer.
            self.loop.call_soon(self._read)

    # --- writing --------------------------------------------------------------------

    def send(self, data: bytes | bytearray | memoryview) -> None:
        if self.state is not State.OPEN:
            return
        view = memoryview(data).cast("B")
        try:
            while view:
                sent = self._tls.send(view)
                view = view[sent:]
        except SSL.Error as exc:
            self._broken(exc)
            return
        self._flush()

    def _flush(self) -> None:
        """Hand what OpenSSL has encrypted to the socket."""
        chunks: list[bytes] = []
        while True:
            try:
                chunks.append(self._tls.bio_read(DELIVER))
            except SSL.WantReadError:
                break
        if chunks and self.raw is not None and not self.raw.is_closing():
            self.raw.write(b"".join(chunks))

    def _tell_app_writing(self) -> None:
        if not self._app_open or self._app_writing_paused == self._raw_writing_paused:
            return
        self._app_writing_paused = self._raw_writing_paused
        if self._app_writing_paused:
            self.app.pause_writing()
        else:
            self.app.resume_writing()

    # --- closing --------------------------------------------------------------------

    def close(self) -> None:
        """Send close_notify; the socket closes on the peer's, or after `close_timeout`."""
        if self.state is not State.OPEN:
            return
        self.state = State.CLOSING
        with contextlib.suppress(SSL.Error):  # then nothing can be sent: the socket goes below
            self._tls.shutdown()
        self._flush()
        if self._peer_closed:
            self._shut_raw()
            return
        self._arm_cut()
        if self.reading_paused and self.raw is not None:
            self.raw.resume_reading()
            self.loop.call_soon(self._read)

    def abort(self) -> None:
        if self.state is State.CLOSED or self.raw is None:
            return
        self._shut_raw(abort=True)

    def _shut_raw(self, *, abort: bool = False) -> None:
        """Close the socket (its buffer flushed unless aborting), within `close_timeout`."""
        self.state = State.CLOSED
        if self.raw is None:
            return
        if abort:
            self._cancel_timer()
            self.raw.abort()
            return
        self.raw.close()
        self._arm_cut()

    def _arm_cut(self) -> None:
        """A peer that neither reads nor answers must not keep the socket: cut it."""
        self._cancel_timer()
        raw = self.raw
        if raw is not None:
            self._timer = self.loop.call_later(self.close_timeout, raw.abort)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- for the transport ----------------------------------------------------------

    def extra(self, name: str, default: Any) -> Any:
        if name == "peer_certificate":
            return self.peer_certificate
        if name == "peer_cert_chain":
            return list(self.peer_cert_chain)
        if name == "cipher":
            return self.cipher
        if name == "version":
            return self.version
        if name == "tls_connection":
            return self._tls
        if self.raw is None:
            return default
        return self.raw.get_extra_info(name, default)


class TlsTransport(asyncio.Transport):
    """What the application protocol writes to: plaintext in, records out.

    Extra info: `peer_certificate` (a cryptography certificate or None),
    `peer_cert_chain` (as the client sent it, its own certificate first),
    `cipher`, `version`, `tls_connection` (pyOpenSSL's), and the socket's own
    (`peername`, `sockname`, ...).
    """

    def __init__(self, layer: TlsLayer) -> None:
        super().__init__()
        self._layer = layer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._layer.extra(name, default)

    def is_closing(self) -> bool:
        return self._layer.state is not State.OPEN

    def close(self) -> None:
        self._layer.close()

    def abort(self) -> None:
        self._layer.abort()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        if not isinstance(protocol, asyncio.Protocol):
            raise TypeError("the TLS layer carries an asyncio.Protocol")
        self._layer.app = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._layer.app

    def is_reading(self) -> bool:
        return self._layer.state is State.OPEN and not self._layer.reading_paused

    def pause_reading(self) -> None:
        self._layer.pause_app_reading()

    def resume_reading(self) -> None:
        self._layer.resume_app_reading()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
        if data:
            self._layer.send(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close: close() sends close_notify")

    def can_write_eof(self) -> bool:
        return False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._layer.raw is not None:
            self._layer.raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        raw = self._layer.raw
        return 0 if raw is None else raw.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        raw = self._layer.raw
        return (0, 0) if raw is None else raw.get_write_buffer_limits()
