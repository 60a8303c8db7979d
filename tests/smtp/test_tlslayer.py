"""The TLS layer over real loopback sockets, with certificates from our CA.

Each accepted socket is carried by the real `Connection` (which counts it), a
front protocol puts the layer under it (at once, or after a plaintext STARTTLS
line), and an application protocol sits on the layer. Clients are stdlib `ssl`,
pyOpenSSL (for what stdlib cannot do: TLS 1.1, renegotiation) and `openssl s_client`.

Rules proven here: any client certificate passes the handshake and is handed up,
and our CA is named in the request; a failed, abandoned or slow handshake never
reaches the application and frees the socket; the application hears of the end
once; pipelined plaintext after STARTTLS is dropped; renegotiation is refused;
back-pressure goes through the layer both ways; the socket is released on
every path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import socket
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from OpenSSL import SSL

import pki
from submitgw.config import TlsConfig
from submitgw.services.audit import Recorder
from submitgw.smtp.connections import Connection, ConnectionTable
from submitgw.smtp.tlslayer import TlsError, TlsLayer, server_context
from submitgw.tls import server_context as stdlib_server_context

SERVER_NAME = "gw.test"
MIB = 1024 * 1024


# --- certificates: the one place that knows pki's API --------------------------------


@dataclass(frozen=True)
class Certs:
    tls: TlsConfig
    ca_name: str
    client: tuple[Path, Path]  # certificate, key, from our CA
    foreign: tuple[Path, Path]  # from a CA we do not know

    @property
    def ca_file(self) -> Path:
        return self.tls.ca_cert

    def certificate(self, which: tuple[Path, Path]) -> x509.Certificate:
        return x509.load_pem_x509_certificate(which[0].read_bytes())


def make_certs(folder: Path) -> Certs:
    ca = pki.CA.create("tls layer test CA")
    other_ca = pki.CA.create("someone else's CA")
    issued = {
        "server": ca.issue_server_cert([SERVER_NAME]),
        "client": ca.issue_client_cert("alice@example.org"),
        "foreign": other_ca.issue_client_cert("mallory@example.org"),
    }
    pki.write_certificate(folder / "ca.crt", ca.cert)
    for name, certificate in issued.items():
        certificate.write_cert(folder / f"{name}.crt")
        certificate.write_private_key(folder / f"{name}.key")
    return Certs(
        tls=TlsConfig(
            cert=folder / "server.crt", key=folder / "server.key", ca_cert=folder / "ca.crt"
        ),
        ca_name="tls layer test CA",
        client=(folder / "client.crt", folder / "client.key"),
        foreign=(folder / "foreign.crt", folder / "foreign.key"),
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tlslayer"))


def client_context(certs: Certs, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca_file))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


# --- the server side -------------------------------------------------------------------


class App(asyncio.Protocol):
    """Records what the layer tells it; echoes, with the usual flow control, if asked."""

    def __init__(self, *, echo: bool = True) -> None:
        self.echo = echo
        self.events: list[str] = []
        self.received = 0
        self.data = bytearray()
        self.keep = False
        self.transport: Any = None
        self.layer: TlsLayer | None = None
        self.exc: Exception | None = None
        self.write_pauses = 0
        self.raw_reading_when_paused: list[bool] = []
        self.on_made: Callable[[App], None] | None = None
        self.on_data: Callable[[App, bytes], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append("made")
        self.transport = transport
        if self.on_made is not None:
            self.on_made(self)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.keep:
            self.data += data
        if self.echo:
            self.transport.write(data)
        if self.on_data is not None:
            self.on_data(self, data)

    def eof_received(self) -> bool:
        self.events.append("eof")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.exc = exc

    def pause_writing(self) -> None:
        self.write_pauses += 1
        self.transport.pause_reading()
        assert self.layer is not None and self.layer.raw is not None
        self.raw_reading_when_paused.append(self.layer.raw.is_reading())

    def resume_writing(self) -> None:
        self.transport.resume_reading()


class Front(asyncio.Protocol):
    """Stands in for the session: layers TLS at once, or after a STARTTLS line."""

    identified = False

    def __init__(self, server: Server, connection: Connection) -> None:
        self.server = server
        self.connection = connection
        self.raw: asyncio.Transport | None = None
        self.buffer = b""
        self.lost = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.raw = transport
        if not self.server.starttls:
            self.begin(b"", discard=False)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        line, newline, rest = self.buffer.partition(b"\n")
        if newline:
            assert line == b"STARTTLS\r"
            assert self.raw is not None
            self.raw.write(b"220 ready\r\n")
            self.begin(rest, discard=True)

    def begin(self, pending: bytes, *, discard: bool) -> None:
        app = self.server.make_app()
        layer = TlsLayer(
            self.server.context,
            app,
            handshake_timeout=self.server.handshake_timeout,
            close_timeout=self.server.close_timeout,
        )
        app.layer = layer
        self.server.apps.append(app)
        self.server.layers.append(layer)
        self.connection.layer(layer)
        assert self.raw is not None
        layer.start(self.raw, pending, discard_pending=discard)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost += 1

    def evict(self) -> None:
        raise AssertionError("no eviction in these tests")


class Server:
    def __init__(
        self,
        context: SSL.Context,
        make_app: Callable[[], App] = App,
        *,
        starttls: bool = False,
        handshake_timeout: float = 5.0,
        close_timeout: float = 5.0,
    ) -> None:
        self.context = context
        self.make_app = make_app
        self.starttls = starttls
        self.handshake_timeout = handshake_timeout
        self.close_timeout = close_timeout
        self.table = ConnectionTable(max_total=50, max_per_client=50)
        self.fronts: list[Front] = []
        self.apps: list[App] = []
        self.layers: list[TlsLayer] = []
        self.port = 0

    def _front(self, connection: Connection) -> Front:
        front = Front(self, connection)
        self.fronts.append(front)
        return front

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Server]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: Connection(
                self.table, "test", self._front, greet_refusals=False, recorder=Recorder()
            ),
            "127.0.0.1",
            0,
        )
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            await server.wait_closed()

    async def handshake(self, index: int = 0, within: float = 10) -> str | None:
        for _ in range(int(within / 0.01)):
            if len(self.layers) > index:
                break
            await asyncio.sleep(0.01)
        return await asyncio.wait_for(self.layers[index].handshake, within)

    async def settled(self, within: float = 10) -> None:
        """Every socket released once, every application told of the end once."""
        for _ in range(int(within / 0.01)):
            if self.table.total == 0 and all(f.lost for f in self.fronts):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # room for a second, wrong, call
        assert self.table.total == 0
        assert self.table.released == len(self.fronts)
        assert [f.lost for f in self.fronts] == [1] * len(self.fronts)
        for app in self.apps:
            if app.events:
                assert app.events[0] == "made"
                assert app.events.count("lost") == 1, app.events
                assert app.events[-1] == "lost", app.events


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def tls_client(
    port: int, ctx: ssl.SSLContext, *, suppress_ragged_eofs: bool = True
) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(
        sock, server_hostname=SERVER_NAME, suppress_ragged_eofs=suppress_ragged_eofs
    )


def recv_exactly(sock: ssl.SSLSocket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


# --- the context ---------------------------------------------------------------------


@pytest.mark.parametrize("client_certificates", ["off", "optional", "required"])
def test_context_has_the_settings_of_the_stdlib_one(certs: Certs, client_certificates: str) -> None:
    """Same suites as `submitgw.tls`; no renegotiation and no compression, whatever
    OpenSSL's defaults (OpenSSL 3 already refuses a client's renegotiation)."""
    ctx = server_context(certs.tls, client_certificates)
    options = ctx.set_options(0)  # before first use: a used Context is frozen
    for option in (
        SSL.OP_NO_RENEGOTIATION,
        SSL.OP_NO_COMPRESSION,
        SSL.OP_CIPHER_SERVER_PREFERENCE,
    ):
        assert options & option
    ours = SSL.Connection(ctx, None).get_cipher_list()
    stdlib = stdlib_server_context(certs.tls, client_certificates).get_ciphers()
    assert sorted(ours) == sorted(c["name"] for c in stdlib)


# --- handshake and data ----------------------------------------------------------------


def test_large_echo_both_ways_with_back_pressure(certs: Certs) -> None:
    """8 MiB up and back; the client reads late, so the socket's buffer fills: the
    application is paused, pauses its reading, and the layer stops reading the socket."""
    payload = os.urandom(8 * MIB)

    async def main() -> None:
        server = Server(server_context(certs.tls))
        async with server.running():
            reader, writer = await asyncio.open_connection(
                "127.0.0.1",
                server.port,
                ssl=client_context(certs),
                server_hostname=SERVER_NAME,
            )

            async def send() -> None:
                for i in range(0, len(payload), 64 * 1024):
                    writer.write(payload[i : i + 64 * 1024])
                    await writer.drain()

            sending = asyncio.create_task(send())
            await asyncio.sleep(0.5)  # the client does not read yet
            echoed = await reader.readexactly(len(payload))
            await sending
            assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()

            app, layer = server.apps[0], server.layers[0]
            assert app.write_pauses > 0
            assert app.raw_reading_when_paused and not any(app.raw_reading_when_paused)
            assert app.transport.get_extra_info("version") in {"TLSv1.2", "TLSv1.3"}
            assert app.transport.get_extra_info("cipher")
            assert app.transport.get_extra_info("peer_certificate") is None
            assert app.transport.get_extra_info("peername") == writer.get_extra_info("sockname")
            assert layer.handshake.result() is None
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
            await server.settled()
            assert app.events == ["made", "eof", "lost"]

    run(main())


def test_application_pausing_its_reading_pauses_the_socket(certs: Certs) -> None:
    def sink() -> App:
        app = App(echo=False)
        app.on_made = lambda a: a.transport.pause_reading()
        return app

    async def main() -> None:
        server = Server(server_context(certs.tls), sink)
        async with server.running():
            _, writer = await asyncio.open_connection(
                "127.0.0.1", server.port, ssl=client_context(certs), server_hostname=SERVER_NAME
            )
            writer.write(b"x" * (32 * MIB))
            await asyncio.sleep(1.0)
            app, layer = server.apps[0], server.layers[0]
            assert app.received == 0
            assert layer.raw is not None and not layer.raw.is_reading()

            app.transport.resume_reading()
            await asyncio.wait_for(writer.drain(), 20)
            for _ in range(500):
                if app.received == 32 * MIB:
                    break
                await asyncio.sleep(0.02)
            assert app.received == 32 * MIB
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
            await server.settled()

    run(main())


@pytest.mark.parametrize("offered", ["ours", "foreign", "none"])
def test_any_client_certificate_passes_and_is_handed_up(certs: Certs, offered: str) -> None:
    cert = {"ours": certs.client, "foreign": certs.foreign, "none": None}[offered]

    async def main() -> None:
        server = Server(server_context(certs.tls, "optional"))
        async with server.running():

            def client() -> bytes:
                with tls_client(server.port, client_context(certs, cert)) as sock:
                    sock.sendall(b"hello")
                    return recv_exactly(sock, 5)

            assert await asyncio.to_thread(client) == b"hello"
            assert await server.handshake() is None
            transport = server.apps[0].transport
            got = transport.get_extra_info("peer_certificate")
            chain = transport.get_extra_info("peer_cert_chain")
            if cert is None:
                assert got is None
                assert chain == []
            else:
                assert got == certs.certificate(cert)
                assert chain[0] == got
            await server.settled()

    run(main())


def test_required_client_certificate_missing_still_completes_the_handshake(
    certs: Certs,
) -> None:
    """The session, not the handshake, refuses: it can tell the client why."""

    async def main() -> None:
        server = Server(server_context(certs.tls, "required"))
        async with server.running():

            def client() -> bytes:
                with tls_client(server.port, client_context(certs)) as sock:
                    sock.sendall(b"hello")
                    return recv_exactly(sock, 5)

            assert await asyncio.to_thread(client) == b"hello"
            assert await server.handshake() is None
            assert server.apps[0].transport.get_extra_info("peer_certificate") is None
            await server.settled()

    run(main())


def test_required_client_certificate_from_a_foreign_ca_passes(certs: Certs) -> None:
    async def main() -> None:
        server = Server(server_context(certs.tls, "required"))
        async with server.running():

            def client() -> bytes:
                with tls_client(server.port, client_context(certs, certs.foreign)) as sock:
                    sock.sendall(b"hi")
                    return recv_exactly(sock, 2)

            assert await asyncio.to_thread(client) == b"hi"
            transport = server.apps[0].transport
            assert transport.get_extra_info("peer_certificate") == certs.certificate(certs.foreign)
            await server.settled()

    run(main())


def test_certificate_request_names_our_ca(certs: Certs) -> None:
    async def main() -> None:
        server = Server(server_context(certs.tls, "optional"))
        async with server.running():
            proc = await asyncio.create_subprocess_exec(
                "openssl",
                "s_client",
                "-connect",
                f"127.0.0.1:{server.port}",
                "-CAfile",
                str(certs.ca_file),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
            text = out.decode()
            names = text.split("Acceptable client certificate CA names", 1)[1].splitlines()[1]
            assert f"CN = {certs.ca_name}" in names
            await server.settled()

    run(main())


@pytest.mark.parametrize("min_version", ["1.2", "1.3"])
def test_older_client_is_refused(certs: Certs, min_version: str) -> None:
    """TLS 1.1 always; TLS 1.2 when the minimum is 1.3."""
    tls = dataclasses.replace(certs.tls, min_version=min_version)

    async def main() -> None:
        server = Server(server_context(tls))
        async with server.running():

            def client() -> None:
                ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
                ctx.set_min_proto_version(SSL.TLS1_VERSION)
                ctx.set_max_proto_version(
                    SSL.TLS1_1_VERSION if min_version == "1.2" else SSL.TLS1_2_VERSION
                )
                ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                    sock.setblocking(True)  # pyOpenSSL reads the descriptor itself
                    conn = SSL.Connection(ctx, sock)
                    conn.set_connect_state()
                    with pytest.raises(SSL.Error):
                        conn.do_handshake()

            await asyncio.to_thread(client)
            assert await server.handshake() == "unsupported protocol"
            assert server.apps[0].events == []
            await server.settled()

    run(main())


# --- handshakes that never finish ------------------------------------------------------


def test_silent_client_is_cut_at_the_handshake_timeout(certs: Certs) -> None:
    async def main() -> None:
        server = Server(server_context(certs.tls), handshake_timeout=0.3)
        async with server.running():

            def client() -> bytes:
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                    try:
                        return sock.recv(100)
                    except ConnectionResetError:
                        return b""

            started = asyncio.get_running_loop().time()
            assert await asyncio.to_thread(client) == b""
            assert asyncio.get_running_loop().time() - started < 3
            assert await server.handshake() == "TimeoutError"
            assert server.apps[0].events == []
            await server.settled()

    run(main())


def test_client_leaving_mid_handshake_frees_the_socket(certs: Certs) -> None:
    async def main() -> None:
        server = Server(server_context(certs.tls))
        async with server.running():

            def client() -> None:
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                    sock.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello

            await asyncio.to_thread(client)
            assert await server.handshake() == "closed during the handshake"
            assert server.apps[0].events == []
            await server.settled()

    run(main())


def test_plaintext_instead_of_a_client_hello_fails_the_handshake(certs: Certs) -> None:
    async def main() -> None:
        server = Server(server_context(certs.tls))
        async with server.running():

            def client() -> bytes:
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                    sock.sendall(b"EHLO client.example\r\n")
                    return sock.recv(100)

            assert await asyncio.to_thread(client) == b""
            assert await server.handshake() == "wrong version number"
            assert server.apps[0].events == []
            await server.settled()

    run(main())


# --- closing ---------------------------------------------------------------------------


def test_client_close_notify_is_eof_then_lost_once(certs: Certs) -> None:
    async def main() -> None:
        server = Server(server_context(certs.tls))
        async with server.running():

            def client() -> None:
                sock = tls_client(server.port, client_context(certs))
                sock.sendall(b"ping")
                assert recv_exactly(sock, 4) == b"ping"
                plain = sock.unwrap()  # sends close_notify, returns on the server's
                plain.close()

            await asyncio.to_thread(client)
            await server.settled()
            assert server.apps[0].events == ["made", "eof", "lost"]
            assert server.apps[0].exc is None

    run(main())


def test_application_may_answer_after_the_client_close_notify(certs: Certs) -> None:
    """An application whose eof_received returns True keeps writing until it closes."""

    class Lingering(App):
        def eof_received(self) -> bool:
            self.events.append("eof")
            self.transport.write(b"late")
            asyncio.get_running_loop().call_soon(self.transport.close)
            return True

    async def main() -> None:
        server = Server(server_context(certs.tls), lambda: Lingering(echo=False))
        async with server.running():

            def client() -> bytes:
                ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                    sock.setblocking(True)
                    conn = SSL.Connection(ctx, sock)
                    conn.set_connect_state()
                    conn.do_handshake()
                    conn.shutdown()  # our close_notify; we keep reading
                    data = b""
                    with contextlib.suppress(SSL.ZeroReturnError):
                        while True:
                            data += conn.recv(100)
                    return data

            assert await asyncio.to_thread(client) == b"late"
            await server.settled()
            assert server.apps[0].events == ["made", "eof", "lost"]

    run(main())


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_server_close_sends_close_notify(certs: Certs, version: ssl.TLSVersion) -> None:
    def closing() -> App:
        app = App(echo=False)

        def bye(a: App, data: bytes) -> None:
            a.transport.write(b"bye")
            a.transport.close()
            a.transport.write(b"ignored after close")

        app.on_data = bye
        return app

    async def main() -> None:
        server = Server(server_context(certs.tls), closing)
        async with server.running():

            def client() -> bytes:
                ctx = client_context(certs)
                ctx.maximum_version = version
                sock = tls_client(server.port, ctx, suppress_ragged_eofs=False)
                sock.sendall(b"quit")
                data = recv_exactly(sock, 100)  # b"" at close_notify; a bare EOF would raise
                sock.unwrap().close()
                return data

            assert await asyncio.to_thread(client) == b"bye"
            await server.settled()
            assert server.apps[0].events == ["made", "lost"]
            assert server.layers[0].version == version.name.replace("v1_", "v1.")

    run(main())


def test_close_does_not_wait_for_a_silent_client_forever(certs: Certs) -> None:
    def closing() -> App:
        app = App(echo=False)
        app.on_made = lambda a: a.transport.close()
        return app

    async def main() -> None:
        server = Server(server_context(certs.tls), closing, close_timeout=0.3)
        async with server.running():
            done = threading.Event()

            def client() -> None:
                sock = tls_client(server.port, client_context(certs))
                sock.sendall(b"x")
                done.wait(10)  # neither reads nor answers the close_notify meanwhile
                sock.close()

            loop = asyncio.get_running_loop()
            client_task = asyncio.create_task(asyncio.to_thread(client))
            started = loop.time()
            await server.handshake()
            for _ in range(300):
                if server.table.total == 0 and server.fronts[0].lost:
                    break
                await asyncio.sleep(0.01)
            assert server.table.total == 0
            assert loop.time() - started < 2
            done.set()
            await client_task
            await server.settled()
            assert server.apps[0].events == ["made", "lost"]

    run(main())


def test_abort_drops_the_connection_at_once(certs: Certs) -> None:
    def aborting() -> App:
        app = App(echo=False)
        app.on_data = lambda a, data: a.transport.abort()
        return app

    async def main() -> None:
        server = Server(server_context(certs.tls), aborting)
        async with server.running():

            def client() -> bytes:
                sock = tls_client(server.port, client_context(certs), suppress_ragged_eofs=False)
                sock.sendall(b"x")
                try:
                    return sock.recv(10)
                except (ssl.SSLError, ConnectionError):
                    return b"cut"
                finally:
                    sock.close()

            assert await asyncio.to_thread(client) == b"cut"
            await server.settled()
            assert server.apps[0].events == ["made", "lost"]

    run(main())


# --- what must not get through ---------------------------------------------------------


def test_starttls_drops_plaintext_pipelined_behind_the_command(certs: Certs) -> None:
    def keeping() -> App:
        app = App()
        app.keep = True
        return app

    injected = b"MAIL FROM:<mallory@example.org>\r\n"

    async def main() -> None:
        server = Server(server_context(certs.tls), keeping, starttls=True)
        async with server.running():

            def client() -> bytes:
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
                    raw.sendall(b"STARTTLS\r\n" + injected)
                    assert raw.recv(100) == b"220 ready\r\n"
                    ctx = client_context(certs)
                    with ctx.wrap_socket(raw, server_hostname=SERVER_NAME) as sock:
                        sock.sendall(b"EHLO client\r\n")
                        return recv_exactly(sock, 13)

            assert await asyncio.to_thread(client) == b"EHLO client\r\n"
            assert server.layers[0].discarded == len(injected)
            assert bytes(server.apps[0].data) == b"EHLO client\r\n"
            await server.settled()

    run(main())


def test_renegotiation_is_refused(certs: Certs) -> None:
    async def main() -> None:
        server = Server(server_context(certs.tls))
        async with server.running():

            def client() -> str:
                ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
                ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                    sock.setblocking(True)  # pyOpenSSL reads the descriptor itself
                    conn = SSL.Connection(ctx, sock)
                    conn.set_connect_state()
                    conn.do_handshake()
                    conn.sendall(b"ping")
                    assert conn.recv(4) == b"ping"
                    assert conn.renegotiate()
                    try:
                        conn.do_handshake()
                        conn.sendall(b"pong")
                        conn.recv(4)
                    except SSL.Error as exc:
                        return repr(exc)
                    return "renegotiated"

            assert "no renegotiation" in await asyncio.to_thread(client)
            await server.settled()
            tls = server.layers[0].transport.get_extra_info("tls_connection")
            assert tls.total_renegotiations() == 0
            assert server.apps[0].received == 4
            assert isinstance(server.apps[0].exc, TlsError)

    run(main())
