"""Debian's Postfix as a real smarthost: a private instance started by the test on loopback.

The capture sink speaks SMTP the way we wrote it; Postfix is what the gateway will really relay
to, so end-to-end tests send gateway -> Postfix -> capture sink and read the result at the sink.

Facts found while building this (Postfix 3.7 on Debian 12, tests running as root):

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
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.smarthost import CaptureSmarthost, free_port, require_tool

START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
POLL_INTERVAL = 0.1
BIND_ATTEMPTS = 3

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


def _searchable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])


class PostfixSmarthost:
    """A private Postfix whose smtpd listens on 127.0.0.1 and relays everything to ``relay``."""

    def __init__(self, relay: CaptureSmarthost, keep_log_in: Path | None = None) -> None:
        self.relay = relay
        self.keep_log_in = keep_log_in
        self.host = "127.0.0.1"
        self.port = 0
        self.myhostname = "postfix-smarthost.test"
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

    def log_text(self) -> str:
        if self.base is None or not self.maillog.exists():
            return ""
        return self.maillog.read_text(encoding="utf-8", errors="replace")

    def main_cf(self, extra: dict[str, str]) -> str:
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
            "smtpd_banner": f"$myhostname ESMTP submitgw-test-{self._token}",
            "relayhost": f"[{self.relay.host}]:{self.relay.port}",
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

    def start(self, extra_config: dict[str, str] | None = None) -> PostfixSmarthost:
        self._postfix = require_tool("postfix")
        if os.geteuid() != 0:
            message = "a private Postfix instance must be started by root"
            if os.environ.get("CI") == "true":
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
        parent = Path(tempfile.gettempdir())
        if not _searchable_by_others(parent):
            parent = Path("/tmp")
        self.base = Path(tempfile.mkdtemp(prefix="submitgw-postfix-", dir=parent))
        self.base.chmod(0o755)
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
        raise RuntimeError(f"private Postfix did not start; its log:\n{log}")

    def _launch(self) -> bool:
        """Start the master in the foreground and wait until our smtpd greets us."""
        assert self.base is not None
        with (self.base / "postfix.out").open("ab") as sink:
            self._proc = subprocess.Popen(
                [self._postfix, "-c", str(self.config_dir), "start-fg"],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            if self._banner_is_ours():
                return True
            time.sleep(POLL_INTERVAL)
        return False

    def _banner_is_ours(self) -> bool:
        """Checks the banner, not just the port, since another process may have taken it."""
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as s:
                s.settimeout(2)
                banner = s.recv(512)
                s.sendall(b"QUIT\r\n")
        except OSError:
            return False
        return banner.startswith(b"220 ") and self._token.encode() in banner

    def master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

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


@pytest.fixture
def postfix_smarthost(
    smarthost: CaptureSmarthost, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PostfixSmarthost]:
    """A private Postfix relaying to the test's ``smarthost`` capture sink."""
    instance = PostfixSmarthost(smarthost, keep_log_in=tmp_path_factory.mktemp("postfix"))
    try:
        yield instance.start()
    finally:
        instance.stop()
