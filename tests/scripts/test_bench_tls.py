"""scripts/bench_tls.py still runs end to end and prints its ratios (tiny sizes here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "bench_tls.py"


def test_prints_both_servers_and_their_ratios() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--mib", "2", "--handshakes", "10", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"layer\s+bulk\s+[\d.]+ MiB/s", result.stdout), result.stdout
    assert re.search(r"stdlib bulk\s+[\d.]+ MiB/s", result.stdout), result.stdout
    assert re.search(r"bulk_s\s+\d+\.\d+", result.stdout), result.stdout
