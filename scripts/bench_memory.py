#!/usr/bin/env python3
"""Memory: what a big message in flight and many idle connections cost a real gateway.

Starts the capture smarthost and `submitgw serve` the way scripts/bench.py does (its
setup helpers), then reads the gateway's VmRSS and VmHWM (peak RSS) from /proc:

* idle: after start, nothing connected;
* message: one --size-mib message over STARTTLS + AUTH PLAIN, once with CRLF line ends
  (nothing to rewrite) and once with bare LF line ends and lines that start with a dot
  (every line rewritten and stuffed); the peak is read from VmHWM, reset before each
  message (`/proc/PID/clear_refs`), and given over idle and as a ratio to the size;
* idle connections: --connections plain connections greeted on the submission port,
  then as many after STARTTLS, each from its own 127.x.y.z address; RSS over idle.

The goals (README "What memory costs"): a message costs at most 2x its size over idle,
1,000 idle connections at most 100 MiB. This is not a test: it prints figures; the exit
status is 1 when a message was not relayed byte-exact or a connection failed.
Run it with the project's venv: `.venv/bin/python scripts/bench_memory.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import ssl
import sys
import tempfile
import time
from pathlib import Path

import bench  # scripts/bench.py: this folder is on sys.path when a script here runs

MIB = 1024 * 1024
# Seconds for the gateway to finish with what just happened, and trim its heap
# ([server] memory_trim_interval is a quarter of it): RSS after a message is what it keeps.
SETTLE = 2.0


def rss(pid: int) -> tuple[int, int]:
    """VmRSS and VmHWM in KiB."""
    return bench.status_kib(pid, "VmRSS"), bench.status_kib(pid, "VmHWM")


def reset_peak(pid: int) -> bool:
    """Set VmHWM back to VmRSS (Linux 4.0+, own processes); False where refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def message(size: int, bare_lf: bool) -> tuple[bytes, bytes]:
    """What the client sends (dot-stuffed, with the end) and the body the smarthost must
    get (CRLF line ends). A dot after a bare LF does not start a line for the gateway, so
    the client does not stuff it."""
    body = bench.make_body(size)
    if bare_lf:
        body = body.replace(b"\r\nThe", b"\n.The")
    head = f"From: <{bench.USER}>\r\nTo: <{bench.RECIPIENT}>\r\nSubject: memory\r\n\r\n"
    content = head.encode() + body
    sent = content.replace(b"\r\n.", b"\r\n..") + b".\r\n"
    relayed = content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return sent, relayed.partition(b"\r\n\r\n")[2]


async def send(port: int, tls: ssl.SSLContext, password: str, payload: bytes) -> None:
    client = await bench.Client.connect(port, 120)
    try:
        await client.login(tls, password)
        await client.send(payload)
    finally:
        await client.quit()


def measure_message(
    gateway: bench.Gateway,
    sink: bench.Sink,
    tls: ssl.SSLContext,
    password: str,
    size: int,
    settle: float,
) -> list[str]:
    pid = gateway.proc.pid if gateway.proc else 0
    problems = []
    # A first login and message load what every later one uses (argon2, TLS, imports).
    asyncio.run(send(gateway.port, tls, password, message(1024, False)[0]))
    sink.take_messages()
    for bare_lf in (False, True):
        sent, relayed = message(size, bare_lf)
        time.sleep(settle)
        before, _ = rss(pid)
        exact = reset_peak(pid)
        started, cpu = time.monotonic(), bench.cpu_seconds(pid)
        asyncio.run(send(gateway.port, tls, password, sent))
        seconds, cpu = time.monotonic() - started, bench.cpu_seconds(pid) - cpu
        _, peak = rss(pid)
        time.sleep(settle)
        after, _ = rss(pid)
        stored = sink.take_messages()
        ok = len(stored) == 1 and stored[0].partition(b"\r\n\r\n")[2] == relayed
        if not ok:
            problems.append(f"message ({'bare LF' if bare_lf else 'CRLF'}) not relayed exactly")
        kind = "bare LF, dots" if bare_lf else "CRLF        "
        growth = (peak - before) / 1024
        print(
            f"message {size / MIB:.1f} MiB {kind}: peak {growth:7.1f} MiB over idle"
            f" = {growth * MIB / size:.2f}x size"
            f"{'' if exact else ' (VmHWM not reset: peak since start)'}"
            f", after {(after - before) / 1024:+.1f} MiB, {seconds:.2f} s"
            f" ({cpu:.2f} s gateway CPU)"
            f"{'' if ok else ', NOT RELAYED EXACTLY'}"
        )
    return problems


async def hold_connections(
    port: int, count: int, tls: ssl.SSLContext | None, pid: int, idle_kib: int, settle: float
) -> str | None:
    writers: list[asyncio.StreamWriter] = []
    try:
        for i in range(count):
            source = f"127.{1 + i // 65024}.{i // 254 % 256}.{1 + i % 254}"
            reader, writer = await asyncio.open_connection(bench.HOST, port, local_addr=(source, 0))
            writers.append(writer)
            client = bench.Client(reader, writer, 30)
            await client.expect(220, "greeting")
            if tls is not None:
                await client.command(b"EHLO " + bench.CLIENT_NAME.encode(), 250)
                await client.command(b"STARTTLS", 220)
                await writer.start_tls(tls, server_hostname=bench.TLS_NAME)
                await client.command(b"EHLO " + bench.CLIENT_NAME.encode(), 250)
        await asyncio.sleep(settle)
        held, _ = rss(pid)
        growth = (held - idle_kib) / 1024
        kind = "after STARTTLS" if tls else "plain, greeted"
        print(
            f"{count} idle connections {kind}: {growth:6.1f} MiB over idle"
            f" = {growth * 1024 / max(count, 1):.1f} KiB each"
        )
        return None
    except (OSError, bench.SmtpFailure, TimeoutError) as exc:
        return f"connection {len(writers)} failed: {type(exc).__name__}: {exc}"
    finally:
        for writer in writers:
            writer.transport.abort()


def configure(setup: Path, connections: int, size: int, settle: float) -> None:
    config = setup / "submitgw.toml"
    text = config.read_text()
    wanted = connections + 10
    text = bench.set_toml_keys(
        text,
        "limits",
        {
            "max_connections": wanted,
            "max_connections_per_ip": wanted,
            "max_message_size": max(size * 2, 1 * MIB),
        },
    )
    text = bench.set_toml_keys(text, "server", {"memory_trim_interval": settle / 4})
    config.write_text(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=float, default=25.0, help="message size")
    parser.add_argument("--connections", type=int, default=1000, help="idle connections")
    parser.add_argument("--no-tls-idle", action="store_true", help="skip the STARTTLS ones")
    parser.add_argument(
        "--settle", type=float, default=SETTLE, help="seconds to wait before each reading"
    )
    parser.add_argument("--gateway-src", type=Path, default=bench.REPO_ROOT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size = int(args.size_mib * MIB)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Both ends of each connection live on this machine; the gateway inherits the limit.
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * args.connections)), hard))
    src = args.gateway_src.resolve()
    bench.check_source(src)
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        base = Path(tmp)
        options = argparse.Namespace(
            sending_limit=1000,
            concurrency=8,
            cheap_argon2=True,
            certificate=False,
            app_password=False,
            workers=1,
        )
        setup = bench.prepare_setup(src, base, options)
        configure(setup.directory, args.connections, size, args.settle)
        sink = bench.Sink(base / "sink", base / "sink.log")
        sink.start()
        gateway = bench.Gateway(
            setup.directory, f"{bench.HOST}:{sink.port}", base / "gateway.log", src
        )
        try:
            gateway.start()
            assert gateway.proc is not None and setup.password is not None
            pid = gateway.proc.pid
            tls = bench.client_tls(gateway.ca_file, setup)
            time.sleep(args.settle)
            idle, idle_peak = rss(pid)
            print(f"gateway {bench.revision(src)}: idle RSS {idle / 1024:.1f} MiB", end="")
            print(f" (peak since start {idle_peak / 1024:.1f} MiB)")
            problems += measure_message(gateway, sink, tls, setup.password, size, args.settle)
            time.sleep(args.settle)
            idle, _ = rss(pid)
            print(f"idle RSS after the messages: {idle / 1024:.1f} MiB")
            kinds = [None] if args.no_tls_idle else [None, tls]
            for context in kinds:
                failed = asyncio.run(
                    hold_connections(
                        gateway.port, args.connections, context, pid, idle, args.settle
                    )
                )
                if failed:
                    problems.append(failed)
                time.sleep(args.settle)
        finally:
            code = gateway.stop()
            sink.stop()
        if code != 0:
            problems.append(f"gateway exit code {code}:\n{gateway.log_text()[-2000:]}")
    for problem in problems:
        print("PROBLEM:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
