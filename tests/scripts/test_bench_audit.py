"""scripts/bench_audit.py still runs end to end on both backends (a tiny database here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from sqlalchemy import Engine

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "bench_audit.py"
KINDS = ["message-id", "queue-id", "user", "ip", "cidr /16", "recipient", "since/until (1 hour)"]


def test_loads_searches_and_cleans_up_on_both_backends(pg_admin: Engine) -> None:
    admin_url = pg_admin.url.render_as_string(hide_password=False)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--rows", "600", "--repeat", "2", "--pg-admin", admin_url],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        cwd=REPO_ROOT,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    for backend in ("sqlite", "postgresql"):
        assert re.search(rf"{backend}: 600 messages, [\d,]+ recipients loaded", result.stdout), (
            result.stdout
        )
        assert f"{backend}: slowest search" in result.stdout
    for kind in KINDS:
        assert (
            len(re.findall(rf"^{re.escape(kind)}\s+[\d.]+ms\s+[\d.]+ms", result.stdout, re.M)) == 2
        )
    with pg_admin.connect() as connection:
        names = connection.exec_driver_sql("SELECT datname FROM pg_database").scalars().all()
    assert not [n for n in names if n.startswith("sgw_bench_audit_")], "a bench database was left"
