"""Driving third-party command-line mail clients (swaks, msmtp, curl, openssl) from tests.

Every run is bounded by a timeout, and an interactive client is driven reply by reply: the test
waits for the server's answer on the client's stdout before typing the next command, instead of
sleeping and hoping the client and server have caught up.
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Sequence

CLIENT_TIMEOUT = 30.0


def run_client(
    args: Sequence[str], *, input: str | bytes | None = None, timeout: float = CLIENT_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run a client to completion; stdout and stderr are captured as text."""
    data = input.encode() if isinstance(input, str) else input
    result = subprocess.run(
        list(args), input=data, capture_output=True, timeout=timeout, check=False
    )
    return subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode("utf-8", "replace"),
        result.stderr.decode("utf-8", "replace"),
    )


class LineClient:
    """A client process fed on stdin, whose stdout is read line by line with deadlines."""

    def __init__(self, args: Sequence[str]) -> None:
        self.args = list(args)
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: list[str] = []
        self._stdout: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[bytes] = []
        self._threads = [
            threading.Thread(target=self._pump_stdout, daemon=True),
            threading.Thread(target=self._pump_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._stdout.put(raw.decode("utf-8", "replace").rstrip("\r\n"))
        self._stdout.put(None)

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        self._stderr.append(self.proc.stderr.read())

    @property
    def stderr(self) -> str:
        return b"".join(self._stderr).decode("utf-8", "replace")

    def transcript(self) -> str:
        return "\n".join(self.lines)

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def expect(self, prefix: str, timeout: float = 10.0) -> str:
        """Read up to the final line of an SMTP reply (``NNN `` not ``NNN-``); it must start
        with ``prefix``. Fails on a different final reply, on EOF and after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._stdout.get(timeout=max(remaining, 0))
            except queue.Empty:
                raise AssertionError(
                    f"no {prefix!r} reply within {timeout}s; transcript:\n{self.transcript()}"
                    f"\nstderr:\n{self.stderr}"
                ) from None
            if line is None:
                self._stdout.put(None)
                raise AssertionError(
                    f"client output ended before a {prefix!r} reply; transcript:\n"
                    f"{self.transcript()}\nstderr:\n{self.stderr}"
                )
            self.lines.append(line)
            if len(line) >= 4 and line[:3].isdigit() and line[3] == "-":
                continue
            if line[:3].isdigit():
                assert line.startswith(prefix), f"expected {prefix!r}, got {line!r}"
                return line

    def finish(self, timeout: float = 10.0) -> int:
        """Close stdin and wait for the client to exit (killing it after ``timeout``)."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise

    def __enter__(self) -> LineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for thread in self._threads:  # they stop at EOF, which the exit has caused
            thread.join(5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
