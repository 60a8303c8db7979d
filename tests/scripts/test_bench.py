"""scripts/bench.py still runs end to end: a single run keeps its report, --certificate logs
in with AUTH EXTERNAL, and --compare runs two builds and prints the ratios (tiny sizes here;
this tree stands in for the other build)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "bench.py"
TINY = ["--messages", "4", "--batch-size", "2", "--repeats", "1", "--warmup", "1"]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, "--cheap-argon2", *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=REPO_ROOT,
    )


def test_single_run_prints_each_scenario_and_the_gateway() -> None:
    result = bench()
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"per-connection: median +[\d.]+ msgs/s", result.stdout), result.stdout
    assert re.search(r"batched: median +[\d.]+ msgs/s", result.stdout), result.stdout
    assert re.search(r"batched/per-conn: [\d.]+x", result.stdout), result.stdout
    assert re.search(r"gateway: peak RSS .* exit code 0", result.stdout), result.stdout
    assert "new/old" not in result.stdout


def test_compare_with_certificates_gives_both_builds_and_the_ratios() -> None:
    result = bench("--certificate", "--compare", str(REPO_ROOT))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "logins with the client certificate (AUTH EXTERNAL)" in result.stdout
    for build in ("new", "old"):
        assert re.search(rf"^ +{build}: +{re.escape(str(REPO_ROOT))} ", result.stdout, re.M)
        assert re.search(rf"gateway {build}: peak RSS .* exit code 0", result.stdout)
        assert (
            len(re.findall(rf"^ +{build} +(per-connection|batched) +1 +4/4 ", result.stdout, re.M))
            == 2
        )
    for scenario in ("per-connection", "batched"):
        ratio = rf"{scenario} new/old: throughput [\d.]+x, gateway CPU per message [\d.]+x"
        assert re.search(ratio, result.stdout), result.stdout


def test_refuses_a_source_tree_without_the_gateway(tmp_path: Path) -> None:
    result = bench("--compare", str(tmp_path))
    assert result.returncode == 2
    assert "no submitgw/__main__.py" in result.stderr
