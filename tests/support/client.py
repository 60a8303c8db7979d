"""A raw SMTP client for protocol tests: sends exact bytes, reads whole replies.

smtplib hides what these tests are about (pipelining, bad bytes, TLS edges), so
this speaks the wire protocol directly over a real socket.
"""

from __future__ import annotations

import base64
import socket
import ssl


class Reply:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.code = int(lines[-1][:3]) if lines and lines[-1][:3].isdigit() else 0

    @property
    def text(self) -> str:
        return "\n".join(line[4:] for line in self.lines)

    @property
    def status(self) -> str:
        """The enhanced status code (RFC 3463) of the last line."""
        return self.lines[-1][4:].split(" ", 1)[0] if self.lines else ""

    def __str__(self) -> str:
        return " | ".join(self.lines)

    def __repr__(self) -> str:
        return f"Reply({self})"


class Dialog:
    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        tls_context: ssl.SSLContext | None = None,
        timeout: float = 10,
        source: str | None = None,
    ) -> None:
        self.sock: socket.socket = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        if tls_context is not None:
            self.sock = tls_context.wrap_socket(self.sock, server_hostname="localhost")
        self.buffer = b""
        self.greeting = self.read()

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def _line(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; unread {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.rstrip(b"\r")

    def read(self) -> Reply:
        lines = []
        while True:
            line = self._line().decode("utf-8", "replace")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return Reply(lines)

    def cmd(self, line: str | bytes) -> Reply:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.read()

    def starttls(self, context: ssl.SSLContext) -> Reply:
        reply = self.cmd("STARTTLS")
        if reply.code == 220:
            self.sock = context.wrap_socket(self.sock, server_hostname="localhost")
        return reply

    def login(self, user: str, password: str) -> Reply:
        blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return self.cmd(f"AUTH PLAIN {blob}")

    def closed(self, timeout: float = 5) -> bool:
        """True once the server has closed the connection (reads nothing more)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buffer += chunk
        except (ConnectionError, ssl.SSLError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()
