#!/usr/bin/env python3
"""Benchmark: the pyOpenSSL TLS layer against asyncio's stdlib TLS, on loopback.

Two echo servers run in this process with the same certificate and settings: (a) the
accepted socket's `Connection` carrying a `TlsLayer` carrying an echo protocol, as the
gateway will; (b) `loop.create_server(ssl=submitgw.tls.server_context(...))` with the
same echo protocol. A client process (this script with --client, asyncio + stdlib ssl)
drives one server at a time:

* bulk: one connection echoes --mib MiB (written and read at once, flow-controlled);
* handshakes: --handshakes connections one after another, each a full handshake, one
  byte echoed, and a close.

Runs alternate (a), (b), (a), (b), ... --rounds times; the report gives each run, the
medians, and the ratio layer/stdlib of wall time (client side) and of the server's CPU
time. Every echo is checked byte for byte. This is not a test: it prints figures.
Run it with the project's venv: `.venv/bin/python scripts/bench_tls.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pki  # noqa: E402
from submitgw.config import TlsConfig  # noqa: E402
from submitgw.services.audit import Recorder  # noqa: E402
from submitgw.smtp.connections import Connection, ConnectionTable  # noqa: E402
from submitgw.smtp.tlslayer import TlsLayer, server_context  # noqa: E402
from submitgw.tls import server_context as stdlib_server_context  # noqa: E402

SERVER_NAME = "bench.test"
MIB = 1024 * 1024
CHUNK = 64 * 1024


class Echo(asyncio.Protocol):
    """Echoes; stops reading while its writing is paused, as a session would."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


class Front(asyncio.Protocol):
    """The session's part: put a TLS layer under the echo at once (implicit TLS)."""

    identified = False

    def __init__(self, connection: Connection, context: Any) -> None:
        self.connection = connection
        self.context = context

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        layer = TlsLayer(self.context, Echo(), handshake_timeout=10)
        self.connection.layer(layer)
        layer.start(transport, discard_pending=False)

    def evict(self) -> None:
        pass


def make_tls(folder: Path) -> TlsConfig:
    ca = pki.CA.create("bench CA")
    server = ca.issue_server_cert([SERVER_NAME])
    pki.write_certificate(folder / "ca.crt", ca.cert)
    server.write_cert(folder / "server.crt")
    server.write_private_key(folder / "server.key")
    return TlsConfig(
        cert=folder / "server.crt", key=folder / "server.key", ca_cert=folder / "ca.crt"
    )


# --- the client process ----------------------------------------------------------------


async def client(port: int, cafile: str, mib: int, handshakes: int) -> dict[str, float]:
    ctx = ssl.create_default_context(cafile=cafile)
    payload = os.urandom(mib * MIB)

    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname=SERVER_NAME
    )

    async def send() -> None:
        for i in range(0, len(payload), CHUNK):
            writer.write(payload[i : i + CHUNK])
            await writer.drain()

    sending = asyncio.create_task(send())
    echoed = await reader.readexactly(len(payload))
    await sending
    bulk = time.perf_counter() - started
    if hashlib.sha256(echoed).digest() != hashlib.sha256(payload).digest():
        raise SystemExit("bulk echo differs")
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()

    started = time.perf_counter()
    for _ in range(handshakes):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname=SERVER_NAME
        )
        writer.write(b"x")
        if await reader.readexactly(1) != b"x":
            raise SystemExit("handshake echo differs")
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
    return {"bulk_s": bulk, "handshakes_s": time.perf_counter() - started}


# --- the server process ----------------------------------------------------------------


async def run_client(port: int, args: argparse.Namespace, cafile: Path) -> dict[str, float]:
    cpu = time.process_time()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--client",
        str(port),
        str(cafile),
        "--mib",
        str(args.mib),
        "--handshakes",
        str(args.handshakes),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"client failed ({proc.returncode})")
    result: dict[str, float] = json.loads(out)
    result["server_cpu_s"] = time.process_time() - cpu
    return result


async def serve_and_measure(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    tls = make_tls(folder)
    loop = asyncio.get_running_loop()
    table = ConnectionTable(max_total=1000, max_per_client=1000)
    context = server_context(tls)
    layer_server = await loop.create_server(
        lambda: Connection(
            table, "bench", lambda c: Front(c, context), greet_refusals=False, recorder=Recorder()
        ),
        "127.0.0.1",
        0,
    )
    stdlib_server = await loop.create_server(Echo, "127.0.0.1", 0, ssl=stdlib_server_context(tls))
    ports = {
        "layer": layer_server.sockets[0].getsockname()[1],
        "stdlib": stdlib_server.sockets[0].getsockname()[1],
    }
    runs: dict[str, list[dict[str, float]]] = {"layer": [], "stdlib": []}
    try:
        for round_ in range(args.rounds):
            for kind in ("layer", "stdlib"):
                result = await run_client(ports[kind], args, tls.ca_cert)
                runs[kind].append(result)
                print(f"round {round_ + 1} {kind:6} {json.dumps(result)}", flush=True)
    finally:
        for server in (layer_server, stdlib_server):
            server.close()
            await server.wait_closed()
    if table.total:
        raise SystemExit(f"{table.total} connections still counted after the runs")
    medians = {
        kind: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for kind, results in runs.items()
    }
    return {"runs": runs, "medians": medians}


def report(args: argparse.Namespace, result: dict[str, Any]) -> None:
    layer, stdlib = result["medians"]["layer"], result["medians"]["stdlib"]
    print(f"\nmedians of {args.rounds} ({args.mib} MiB echoed, {args.handshakes} handshakes):")
    for kind, m in (("layer", layer), ("stdlib", stdlib)):
        print(
            f"  {kind:6} bulk {args.mib / m['bulk_s']:7.1f} MiB/s"
            f"  handshakes {args.handshakes / m['handshakes_s']:7.1f}/s"
            f"  server CPU {m['server_cpu_s']:6.2f} s"
        )
    print("ratio layer/stdlib (time; above 1 = the layer is slower):")
    for key in ("bulk_s", "handshakes_s", "server_cpu_s"):
        print(f"  {key:13} {layer[key] / stdlib[key]:.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--mib", type=int, default=64, help="MiB echoed on one connection")
    p.add_argument("--handshakes", type=int, default=300, help="connections one after another")
    p.add_argument("--rounds", type=int, default=3, help="runs of each server, interleaved")
    p.add_argument("--client", nargs=2, metavar=("PORT", "CAFILE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.client:
        port, cafile = args.client
        print(json.dumps(asyncio.run(client(int(port), cafile, args.mib, args.handshakes))))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as folder:
        result = asyncio.run(serve_and_measure(args, Path(folder)))
    report(args, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
