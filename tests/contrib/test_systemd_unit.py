"""contrib/systemd/submitgw.service: the directives the README promises, and systemd's word.

The parse checks run everywhere; `systemd-analyze verify` runs where systemd is installed
(scripts/test.sh installs the Debian package `systemd` for it, so CI never skips it).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from submitgw.config import Config
from tests.support.smarthost import require_tool

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "systemd" / "submitgw.service"


def directives(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> every value, in order: systemd lets most keys repeat."""
    found: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        found.setdefault((section, key), []).append(value)
    return found


@pytest.fixture(scope="module")
def unit() -> dict[tuple[str, str], list[str]]:
    return directives(UNIT.read_text(encoding="utf-8"))


def one(unit: dict[tuple[str, str], list[str]], key: str) -> str:
    values = unit.get(("Service", key), [])
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


def test_serves_as_an_unprivileged_user_with_only_the_port_capability(
    unit: dict[tuple[str, str], list[str]],
) -> None:
    assert one(unit, "User") == "submitgw"
    assert one(unit, "AmbientCapabilities") == "CAP_NET_BIND_SERVICE"
    assert one(unit, "CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE"
    assert one(unit, "NoNewPrivileges") == "yes"


def test_runs_serve_with_the_setup_folder_writable_and_the_rest_read_only(
    unit: dict[tuple[str, str], list[str]],
) -> None:
    argv = shlex.split(one(unit, "ExecStart"))
    assert PurePosixPath(argv[0]).is_absolute() and argv[0].endswith("/submitgw")
    assert argv[-1] == "serve"
    config = PurePosixPath(argv[argv.index("--config") + 1])
    assert one(unit, "ProtectSystem") == "strict"
    assert str(config.parent) in one(unit, "ReadWritePaths").split()
    assert one(unit, "WorkingDirectory") == str(config.parent)


def test_hardening(unit: dict[tuple[str, str], list[str]]) -> None:
    for key in ("PrivateTmp", "ProtectHome", "PrivateDevices", "RestrictSUIDSGID"):
        assert one(unit, key) == "yes", key
    assert set(one(unit, "RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert unit[("Service", "SystemCallFilter")][0] == "@system-service"
    # pyOpenSSL's certificate callbacks are cffi closures: they need writable code pages.
    assert ("Service", "MemoryDenyWriteExecute") not in unit


def test_ready_when_listening_reload_is_sighup_and_stop_outlasts_the_grace(
    unit: dict[tuple[str, str], list[str]],
) -> None:
    assert one(unit, "Type") == "notify"
    assert one(unit, "ExecReload") == "/bin/kill -HUP $MAINPID"
    # Longer than the default grace plus the 5 s for clients that ignore the TLS close,
    # plus the time the last audit records may take to be written.
    grace = Config().server.shutdown_grace + Config().audit.shutdown_timeout
    assert float(one(unit, "TimeoutStopSec")) > grace + 5
    assert unit[("Install", "WantedBy")] == ["multi-user.target"]


def test_systemd_analyze_verify_accepts_it(tmp_path: Path) -> None:
    """Verified as written but for ExecStart's program, which must exist to be verified."""
    analyze = require_tool("systemd-analyze")
    text = UNIT.read_text(encoding="utf-8")
    program = shlex.split(one(directives(text), "ExecStart"))[0]
    copy = tmp_path / "submitgw.service"
    copy.write_text(text.replace(program, sys.executable + " -m submitgw"), encoding="utf-8")

    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == 0, result.stderr
    assert "submitgw.service" not in result.stderr, result.stderr
