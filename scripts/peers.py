#!/usr/bin/env python3
"""Reference servers on loopback, for scripts/bench.py, scripts/hostile.py and the tests: a
private Postfix, Dovecot's auth service on its own, Postfix's smtp-sink, and a bare aiosmtpd.

Each runs in a folder of its own under the system temp dir, on free 127.0.0.1 ports, touches
no system service and no file under /etc, and goes with its whole process tree at stop().
Nothing here knows pytest: tests/support/postfix.py wraps the Postfix instance for the tests
and decides there whether a missing tool skips or fails.

Facts found while building the Postfix instance (Postfix 3.7 on Debian 12, run as root):

* ``postfix -c DIR`` accepts any configuration directory when run by root:
  ``alternate_config_directories`` in /etc/postfix/main.cf is only consulted by non-root or
  set-gid programs (postdrop, postqueue, i.e. ``sendmail``), which this instance does not use.
  Nothing under /etc/postfix is edited, and the system instance may be running or not: the
  private one has its own queue, data directory, pid/lock files, sockets and port.
* ``postfix`` writes its errors to stderr only when stderr is a terminal, otherwise only to
  syslog or ``maillog_file``; hence ``maillog_file`` (Postfix >= 3.4, with the ``postlog``
  service in master.cf) and ``maillog_file_prefixes`` naming our directory, without which
  Postfix refuses the log path.
* ``postfix start`` chdirs to ``queue_directory`` first, so that directory must exist (root,
  0755); ``postfix-script check-fatal`` (run by start) then creates the queue subdirectories
  and ``data_directory`` from ``$meta_directory/postfix-files``, touching only this instance's
  directories because its config directory is not one of the system's instances.
* ``master`` opens ``data_directory/master.lock`` as ``mail_owner`` by absolute path, so every
  ancestor of the instance directory must be searchable by the postfix user; pytest's tmp dirs
  (0700) are not, hence a 0755 directory made here under the system temp dir.
* Debian's stock master.cf chroots most services (``chroot = y``), which would need copies of
  /etc files in the queue directory; the master.cf written here runs nothing chrooted.
* ``postfix start`` detaches the master, whose zombie then belongs to PID 1; in a sandbox whose
  PID 1 does not reap, every stopped instance would leave zombies. ``postfix start-fg`` keeps the
  master (``master -s``, its own session) a child of our process, so stop() reaps it.
* With the default ``local_header_rewrite_clients`` a client on ``inet_interfaces`` gets missing
  Message-ID/Date/From headers added; it is emptied so that Postfix passes messages through as
  the gateway sent them (it still prepends its Received: header).

Dovecot 2.3 (Debian 12), as Postfix's SASL server:

* ``dovecot -F -c FILE`` runs a private master with its own ``base_dir``, ``state_dir`` and
  log; with ``protocols =`` empty it starts only auth and its helpers (anvil, log, config,
  stats). ``service auth`` takes an ``inet_listener``, which Postfix reaches with
  ``smtpd_sasl_path = inet:HOST:PORT``.
* It verifies argon2-cffi's ``$argon2id$v=19$m=65536,t=3,p=4$...`` strings stored with the
  ``{ARGON2ID}`` prefix (through libsodium, one thread per verification), and refuses a wrong
  password; bench.py checks both with DovecotAuth.authenticate() before any run.
* A ``passwd-file`` passdb verifies every password inside the one auth process, and it has no
  cache key, so ``auth_cache_verify_password_with_worker`` never applies: argon2 would use one
  core. An SQL passdb (SQLite, package dovecot-sqlite) looks up and verifies in auth-worker
  processes; ``auth_worker_max_count`` and the service's ``process_limit`` are both set to the
  number of cores (with only the latter raised, the auth process queues requests for seconds).
* ``auth_failure_delay`` (2 s by default) is set to 0: only such checks fail, and they need
  not wait. Failures still raise Dovecot's auth penalty (seconds of delay, growing) for
  requests without a remote IP, as authenticate() sends them; Postfix sends one.

Postfix's smtp-sink: run by root it needs ``-u USER``; with ``-d TEMPLATE`` it writes each
message to a file of its own named by strftime(TEMPLATE) plus a random 32-bit hex number, as
that user, so the folder belongs to that user (``nobody``).

The bare server (``python scripts/peers.py bare ...``) is aiosmtpd with STARTTLS that accepts
any AUTH EXTERNAL and every message and keeps nothing: the ceiling for certificate logins.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Self

HOST = "127.0.0.1"
SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
POLL_INTERVAL = 0.1
BIND_ATTEMPTS = 3
POSTFIX_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")
SINK_USER = "nobody"
CLK_TCK = os.sysconf("SC_CLK_TCK")
FREE_PORT_RANGE = (12000, 32000)

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PeerError(RuntimeError):
    """A reference server could not be started."""


class MissingTool(PeerError):
    """A program is not installed, or the server needs root and we are not."""


# --- helpers ----------------------------------------------------------------------------------


def free_port(host: str = HOST) -> int:
    """A port that was free a moment ago, for servers that cannot report the port they bound
    themselves (Postfix, Dovecot, smtp-sink); their start retries on a clash."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # Below the kernel's ephemeral range (32768-60999 here): a port the kernel hands out
    # for port 0 can be taken by any outgoing connection before the server binds it.
    for _ in range(200):
        port = random.randint(*FREE_PORT_RANGE)
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise PeerError(f"no free port in {FREE_PORT_RANGE} on {host}")


def find_tool(name: str) -> str:
    """Path of a program, looking in the sbin folders too (not on a normal user's PATH)."""
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN_DIRS))
    if not path:
        raise MissingTool(f"{name} is not installed (scripts/test.sh installs it)")
    return path


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise MissingTool(f"{what} must be started by root")


def _searchable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])


def instance_dir(prefix: str) -> Path:
    """A new 0755 folder under the system temp dir, every ancestor searchable by others, so
    that processes which drop to another user (postfix, dovecot, nobody) reach it."""
    parent = Path(tempfile.gettempdir())
    if not _searchable_by_others(parent):
        parent = Path("/tmp")
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o755)
    return path


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of a process tree: user + system time of `root` and each live descendant,
    plus what their exited and reaped children used (cutime, cstime), so that short-lived
    workers (Postfix's smtpd, Dovecot's auth workers) count too."""
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        # fields[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14 to 17.
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        times[pid] = sum(int(x) for x in fields[11:15])
    if root not in times:
        return 0.0
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total / CLK_TCK


def _stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM a server we started in its own session, then SIGKILL whatever of its process
    group is left; reaps it."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)


def _banner(host: str, port: int) -> bytes:
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.settimeout(2)
            banner = s.recv(512)
            s.sendall(b"QUIT\r\n")
            return banner
    except OSError:
        return b""


def _version_output(args: list[str]) -> str:
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return ""
    return result.stdout.strip()


def postfix_version() -> str:
    """As `postconf mail_version` says, "?" if it cannot be asked."""
    text = _version_output([find_tool("postconf"), "-d", "-h", "mail_version"])
    return text or "?"


def dovecot_version() -> str:
    return _version_output([find_tool("dovecot"), "--version"]).split(" ")[0] or "?"


# --- Postfix ----------------------------------------------------------------------------------


class PostfixInstance:
    """A private Postfix whose smtpd listens on 127.0.0.1 and relays everything to
    ``relay_host:relay_port``; ``start(extra_config)`` adds or overrides main.cf settings."""

    def __init__(
        self,
        relay_host: str,
        relay_port: int,
        keep_log_in: Path | None = None,
        myhostname: str = "postfix-smarthost.test",
    ) -> None:
        self.relay_host = relay_host
        self.relay_port = relay_port
        self.keep_log_in = keep_log_in
        self.host = HOST
        self.port = 0
        self.myhostname = myhostname
        self.base: Path | None = None
        self._token = uuid.uuid4().hex[:12]
        self._proc: subprocess.Popen[bytes] | None = None
        self._postfix = ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def config_dir(self) -> Path:
        assert self.base is not None
        return self.base / "etc"

    @property
    def queue_dir(self) -> Path:
        assert self.base is not None
        return self.base / "spool"

    @property
    def maillog(self) -> Path:
        assert self.base is not None
        return self.base / "maillog"

    @property
    def pid(self) -> int | None:
        """Our child, `postfix start-fg`, above the master and every service process."""
        return self._proc.pid if self._proc is not None else None

    def log_text(self) -> str:
        if self.base is None or not self.maillog.exists():
            return ""
        return self.maillog.read_text(encoding="utf-8", errors="replace")

    def main_cf(self, extra: Mapping[str, str]) -> str:
        assert self.base is not None
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.base / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": self.myhostname,
            "myorigin": "$myhostname",
            "mydestination": "",
            "relay_domains": "",
            "inet_interfaces": self.host,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_banner": f"$myhostname ESMTP submitgw-peer-{self._token}",
            "relayhost": f"[{self.relay_host}]:{self.relay_port}",
            "smtp_tls_security_level": "none",
            "local_header_rewrite_clients": "",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "append_dot_mydomain": "no",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.base),
            # Mail deferred by a tempfailing sink is retried within seconds, not minutes.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "smtp_connect_timeout": "5s",
            **extra,
        }
        return "".join(f"{k} = {v}\n" for k, v in settings.items())

    def start(self, extra_config: Mapping[str, str] | None = None) -> Self:
        self._postfix = find_tool("postfix")
        require_root("a private Postfix instance")
        self.base = instance_dir("submitgw-postfix-")
        self.config_dir.mkdir(mode=0o755)
        self.queue_dir.mkdir(mode=0o755)
        self.config_dir.joinpath("main.cf").write_text(self.main_cf(extra_config or {}))
        for attempt in range(1, BIND_ATTEMPTS + 1):
            self.port = free_port(self.host)
            self.config_dir.joinpath("master.cf").write_text(
                MASTER_CF.format(listen=f"{self.host}:{self.port}")
            )
            seen = len(self.log_text())
            if self._launch():
                return self
            # free_port() can race with another process; only that is worth another try.
            if "Address already in use" not in self.log_text()[seen:] or attempt == BIND_ATTEMPTS:
                break
        log = self.log_text()
        self.stop()
        raise PeerError(f"private Postfix did not start; its log:\n{log}")

    def _launch(self) -> bool:
        """Start the master in the foreground and wait until our smtpd greets us."""
        assert self.base is not None
        with (self.base / "postfix.out").open("ab") as out:
            self._proc = subprocess.Popen(
                [self._postfix, "-c", str(self.config_dir), "start-fg"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            # The banner, not just the port: another process may have taken it.
            banner = _banner(self.host, self.port)
            if banner.startswith(b"220 ") and self._token.encode() in banner:
                return True
            time.sleep(POLL_INTERVAL)
        return False

    def master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def queued(self) -> int:
        """Messages Postfix still holds (accepted, not yet handed to the relay)."""
        return sum(
            1
            for name in POSTFIX_QUEUES
            if (self.queue_dir / name).is_dir()
            for p in (self.queue_dir / name).rglob("*")
            if p.is_file()
        )

    def wait_until_delivered(self, timeout: float) -> int:
        """Wait (at most `timeout` s) until the queue is empty; what it still holds."""
        deadline = time.monotonic() + timeout
        queued = self.queued()
        while queued and time.monotonic() < deadline:
            time.sleep(0.2)
            queued = self.queued()
        return queued

    def stop(self) -> None:
        if self.base is None:
            return
        master = self.master_pid()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            subprocess.run(
                [self._postfix, "-c", str(self.config_dir), "stop"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=STOP_TIMEOUT,
                check=False,
            )
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(STOP_TIMEOUT)
        # The master leads its own process group; whatever is left of it goes now.
        if master is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(master, signal.SIGKILL)
        if self.keep_log_in is not None and self.maillog.exists():
            self.keep_log_in.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.maillog, self.keep_log_in / "maillog")
        shutil.rmtree(self.base, ignore_errors=True)
        self.base = None
        self._proc = None


def submission_settings(
    cert: Path, key: Path, sasl_port: int, sasl_host: str = HOST
) -> dict[str, str]:
    """main.cf settings that make the instance a submission server: STARTTLS with `cert`,
    AUTH only inside TLS through Dovecot's auth service, relaying only for those who logged in."""
    return {
        "smtpd_tls_chain_files": f"{key}, {cert}",
        "smtpd_tls_security_level": "may",
        "smtpd_tls_auth_only": "yes",
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_sasl_type": "dovecot",
        "smtpd_sasl_path": f"inet:{sasl_host}:{sasl_port}",
        "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
        "mynetworks": "127.0.0.1/32",
    }


# --- Dovecot's auth service -------------------------------------------------------------------

DOVECOT_CONF = """\
base_dir = {base}/run
state_dir = {base}/state
instance_name = submitgw-peer-{token}
protocols =
listen = {host}
log_path = {base}/dovecot.log
ssl = no
auth_mechanisms = plain login
disable_plaintext_auth = no
auth_failure_delay = 0
auth_cache_size = 0
auth_worker_max_count = {workers}
passdb {{
  driver = sql
  args = {base}/sql.conf
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service auth {{
  inet_listener {{
    address = {host}
    port = {port}
  }}
}}
service auth-worker {{
  process_limit = {workers}
}}
"""

DOVECOT_SQL = """\
driver = sqlite
connect = {db}
password_query = SELECT username AS user, password FROM users WHERE username = '%u'
"""


class DovecotAuth:
    """Dovecot's auth service alone on 127.0.0.1:`port`, with an SQL (SQLite) passdb of
    `users`: login name -> stored password with its scheme, e.g. ``{ARGON2ID}$argon2id$...``."""

    def __init__(self, users: Mapping[str, str], workers: int | None = None) -> None:
        self.users = dict(users)
        self.workers = workers or len(os.sched_getaffinity(0))
        self.host = HOST
        self.port = 0
        self.base: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._token = uuid.uuid4().hex[:12]

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def log_text(self) -> str:
        if self.base is None:
            return ""
        texts = []
        for name in ("dovecot.out", "dovecot.log"):
            with contextlib.suppress(OSError):
                texts.append((self.base / name).read_text(errors="replace"))
        return "".join(texts)

    def start(self) -> Self:
        dovecot = find_tool("dovecot")
        require_root("a private Dovecot instance")
        self.base = instance_dir("submitgw-dovecot-")
        db = self.base / "users.db"
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:
            conn.execute("CREATE TABLE users (username TEXT PRIMARY KEY, password TEXT)")
            conn.executemany("INSERT INTO users VALUES (?, ?)", self.users.items())
        db.chmod(0o644)  # auth workers read it (test hashes of throw-away passwords)
        self.base.joinpath("sql.conf").write_text(DOVECOT_SQL.format(db=db))
        for attempt in range(1, BIND_ATTEMPTS + 1):
            self.port = free_port(self.host)
            conf = self.base / "dovecot.conf"
            conf.write_text(
                DOVECOT_CONF.format(
                    base=self.base,
                    token=self._token,
                    host=self.host,
                    port=self.port,
                    workers=self.workers,
                )
            )
            with (self.base / "dovecot.out").open("ab") as out:
                self._proc = subprocess.Popen(
                    [dovecot, "-F", "-c", str(conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._wait_ready():
                return self
            _stop_process(self._proc)
            if "in use" not in self.log_text() or attempt == BIND_ATTEMPTS:
                break
        log = self.log_text()
        self.stop()
        raise PeerError(f"private Dovecot did not start; its log:\n{log}")

    def _wait_ready(self) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self._proc.poll() is None:
            with contextlib.suppress(OSError), self._session() as stream:
                if b"PLAIN" in stream.handshake:
                    return True
            time.sleep(POLL_INTERVAL)
        return False

    @contextlib.contextmanager
    def _session(self) -> Iterator[_AuthStream]:
        with socket.create_connection((self.host, self.port), timeout=30) as s:
            stream = _AuthStream(s)
            try:
                yield stream
            finally:
                stream.file.close()

    def authenticate(self, user: str, password: str) -> bool:
        """One PLAIN login over Dovecot's auth protocol, as Postfix makes it: True for OK."""
        with self._session() as stream:
            token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
            line = stream.request(b"AUTH\t1\tPLAIN\tservice=smtp\tsecured\tresp=" + token)
        if line.startswith(b"OK\t1"):
            return True
        if line.startswith(b"FAIL\t1"):
            return False
        raise PeerError(f"Dovecot answered {line[:200]!r}")

    def stop(self) -> None:
        if self.base is None:
            return
        _stop_process(self._proc)
        shutil.rmtree(self.base, ignore_errors=True)
        self.base = None
        self._proc = None


class _AuthStream:
    """The client side of Dovecot's auth protocol: handshake on connect, one request."""

    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rwb")
        self.file.write(b"VERSION\t1\t2\nCPID\t%d\n" % os.getpid())
        self.file.flush()
        lines: list[bytes] = []
        while not lines or not lines[-1].startswith(b"DONE"):
            line = self.file.readline()
            if not line:
                raise OSError("Dovecot closed the auth connection")
            lines.append(line)
        self.handshake = b"".join(lines)

    def request(self, line: bytes) -> bytes:
        self.file.write(line + b"\n")
        self.file.flush()
        return bytes(self.file.readline())


# --- smtp-sink --------------------------------------------------------------------------------


class SmtpSink:
    """Postfix's smtp-sink on 127.0.0.1: every message accepted and written to a file of its
    own, which take_messages() reads and deletes."""

    def __init__(self, keep_in: Path | None = None) -> None:
        self.keep_in = keep_in
        self.host = HOST
        self.port = 0
        self.base: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._name = f"sink-{uuid.uuid4().hex[:12]}.test"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def directory(self) -> Path:
        assert self.base is not None
        return self.base / "mail"

    def start(self) -> Self:
        program = find_tool("smtp-sink")
        self.base = instance_dir("submitgw-smtp-sink-")
        self.directory.mkdir()
        user = []
        if os.geteuid() == 0:
            shutil.chown(self.directory, SINK_USER)
            user = ["-u", SINK_USER]
        # The time in the name keeps two messages apart should the random parts collide.
        template = f"{self.directory}/%H%M%S."
        for attempt in range(1, BIND_ATTEMPTS + 1):
            self.port = free_port(self.host)
            args = [program, "-4", "-h", self._name, "-d", template, *user]
            with (self.base / "smtp-sink.out").open("ab") as out:
                self._proc = subprocess.Popen(
                    [*args, f"{self.host}:{self.port}", "256"],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and self._proc.poll() is None:
                if self._name.encode() in _banner(self.host, self.port):
                    return self
                time.sleep(POLL_INTERVAL)
            _stop_process(self._proc)
            if attempt == BIND_ATTEMPTS:
                break
        out_text = (self.base / "smtp-sink.out").read_text(errors="replace")
        self.stop()
        raise PeerError(f"smtp-sink did not start:\n{out_text}")

    def take_messages(self) -> list[bytes]:
        """Every message stored so far (as written: LF line ends, smtp-sink's own headers on
        top); the files are deleted."""
        messages = []
        for path in self.directory.iterdir():
            messages.append(path.read_bytes())
            path.unlink()
        return messages

    def stop(self) -> None:
        if self.base is None:
            return
        _stop_process(self._proc)
        if self.keep_in is not None:
            self.keep_in.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.base / "smtp-sink.out", self.keep_in / "smtp-sink.out")
        shutil.rmtree(self.base, ignore_errors=True)
        self.base = None
        self._proc = None


# --- the bare aiosmtpd --------------------------------------------------------------------------


class BareSmtpd:
    """`python scripts/peers.py bare`: a subprocess, so that it has a core of its own to use
    and its CPU time can be read apart from the client's."""

    def __init__(self, cert: Path, key: Path, ca: Path | None, log_path: Path) -> None:
        self.cert, self.key, self.ca = cert, key, ca
        self.log_path = log_path
        self.host = HOST
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Self:
        args = [sys.executable, str(Path(__file__).resolve()), "bare", "--listen", f"{HOST}:0"]
        args += ["--cert", str(self.cert), "--key", str(self.key)]
        if self.ca is not None:
            args += ["--ca", str(self.ca)]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().decode(errors="replace")
        self._proc.stdout.close()
        match = re.search(r"listening on \S+:(\d+)", line)
        if not match:
            self.stop()
            raise PeerError(f"bare aiosmtpd did not start:\n{self.log_path.read_text()}")
        self.port = int(match.group(1))
        return self

    def stop(self) -> None:
        _stop_process(self._proc)
        self._proc = None


def bare_tls_context(cert: Path, key: Path, ca: Path | None) -> ssl.SSLContext:
    """Server TLS; with `ca`, a client certificate is asked for and verified in the handshake,
    as the gateway's certificate login does, and then not looked at."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if ca is not None:
        context.load_verify_locations(cafile=ca)
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


async def serve_bare(host: str, port: int, context: ssl.SSLContext) -> None:
    from aiosmtpd.smtp import SMTP, AuthResult

    class Handler:
        async def auth_EXTERNAL(self, server: SMTP, args: list[str]) -> AuthResult:
            return AuthResult(success=True)

        async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
            return "250 2.0.0 OK"

    handler = Handler()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            hostname="bare.test",
            ident="bare",
            tls_context=context,
            require_starttls=True,
            auth_require_tls=True,
        ),
        host,
        port,
    )
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    import logging

    p = argparse.ArgumentParser(description="Reference servers for scripts/bench.py.")
    sub = p.add_subparsers(dest="command", required=True)
    bare = sub.add_parser("bare", help="aiosmtpd with STARTTLS that accepts and discards all")
    bare.add_argument("--listen", default=f"{HOST}:0", help="HOST:PORT (port 0: any free one)")
    bare.add_argument("--cert", type=Path, required=True, help="server certificate, PEM")
    bare.add_argument("--key", type=Path, required=True, help="its private key, PEM")
    bare.add_argument("--ca", type=Path, help="ask for client certificates of this CA")
    args = p.parse_args(argv)
    # aiosmtpd logs every command, and a deprecation warning at each AUTH.
    logging.basicConfig(level=logging.ERROR)
    host, _, port = args.listen.rpartition(":")
    context = bare_tls_context(args.cert, args.key, args.ca)
    asyncio.run(serve_bare(host, int(port), context))
    return 0


if __name__ == "__main__":
    sys.exit(main())
