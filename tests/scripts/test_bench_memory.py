"""scripts/bench_memory.py still runs end to end (tiny sizes here): it prints the idle RSS,
both messages with their peak over idle, and the idle connections, plain and after STARTTLS;
both messages must reach the smarthost byte-exact, or it exits 1."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "bench_memory.py"
TINY = ["--size-mib", "0.2", "--connections", "5", "--settle", "0.1"]


def test_prints_each_figure_for_a_small_message_and_a_few_connections() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"idle RSS [\d.]+ MiB", result.stdout), result.stdout
    for kind in ("CRLF", "bare LF, dots"):
        line = rf"message 0\.2 MiB {kind} *: peak +-?[\d.]+ MiB over idle = -?[\d.]+x size"
        assert re.search(line, result.stdout), result.stdout
    for kind in ("plain, greeted", "after STARTTLS"):
        assert re.search(rf"5 idle connections {kind}: +-?[\d.]+ MiB", result.stdout)
