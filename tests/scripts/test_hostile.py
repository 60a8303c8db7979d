"""scripts/hostile.py still runs: its setup (users, certificates, a gateway per phase), its
legitimate clients of both kinds and its report work against today's gateway.

Only the baseline phase runs here, with cheap argon2, so the test stays short; the attacks
themselves are for the full run, not for the suite.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "hostile.py"
# One client of each kind: two password clients on the one password user would sometimes
# log in at the same moment, and the account's share of pending logins may refuse one. One
# gateway process: a supervisor starting a worker per core costs seconds and tests nothing here.
BASE_ARGS = [
    "--seconds",
    "1",
    "--attacks",
    "baseline",
    "--argon2",
    "test",
    "--settle",
    "0.2",
    "--users",
    "1",
    "--clients",
    "2",
    "--workers",
    "1",
]


def test_baseline_prints_a_markdown_row_with_every_message_delivered(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *BASE_ARGS, "--json", str(report_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| attack | attack ops | legit ok | success |" in result.stdout
    row = re.search(
        r"^\| baseline \| – \| (\d+)/(\d+) \| ([\d.]+) % \|.*\| (\d+) \|$",
        result.stdout,
        re.MULTILINE,
    )
    assert row, result.stdout
    ok, started, percent, lost = int(row[1]), int(row[2]), float(row[3]), int(row[4])
    assert ok == started > 0
    assert percent == 100.0
    assert lost == 0
    # `stored` is read back from the capture smarthost's files: the loss check looks at real
    # messages, not at the clients' own count.
    (phase,) = json.loads(report_path.read_text())["phases"]
    assert phase["name"] == "baseline"
    assert phase["legit_ok"] == phase["legit_attempts"] == phase["stored"] == ok
    assert not phase["legit_failures"] and not phase["problems"]
    before, peak, after = phase["fds"]
    assert 0 < before <= peak and after > 0
