"""scripts/bench.py still runs end to end: a single run keeps its report, --certificate logs
in with AUTH EXTERNAL, --compare runs two builds and prints the ratios (this tree stands in
for the other build), and --peer compares with the reference servers (tiny sizes here)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support.smarthost import require_root, require_tool

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
    """One scenario: the single run above covers both."""
    result = bench("--certificate", "--compare", str(REPO_ROOT), "--scenario", "per-connection")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "logins with the client certificate (AUTH EXTERNAL)" in result.stdout
    for build in ("new", "old"):
        assert re.search(rf"^ +{build}: +{re.escape(str(REPO_ROOT))} ", result.stdout, re.M)
        assert re.search(rf"gateway {build}: peak RSS .* exit code 0", result.stdout)
        assert re.search(rf"^ +{build} +per-connection +1 +4/4 ", result.stdout, re.M)
    ratio = r"per-connection new/old: throughput [\d.]+x, gateway CPU per message [\d.]+x"
    assert re.search(ratio, result.stdout), result.stdout


def test_refuses_a_source_tree_without_the_gateway(tmp_path: Path) -> None:
    result = bench("--compare", str(tmp_path))
    assert result.returncode == 2
    assert "no submitgw/__main__.py" in result.stderr


def test_peer_compares_with_postfix_dovecot_and_a_bare_server() -> None:
    """Two of the three kinds keep it short; they cover both reference servers."""
    for tool in ("postfix", "dovecot", "smtp-sink"):
        require_tool(tool)
    require_root("the reference servers (Postfix, Dovecot)")
    result = bench("--peer", "--kinds", "mail-client,certificate")
    assert result.returncode == 0, result.stdout + result.stderr
    for kind, reference in (("mail-client", "postfix+dovecot"), ("certificate", "bare aiosmtpd")):
        assert re.search(
            rf"^\| {kind} \| [\d.]+ \| {re.escape(reference)} \| [\d.]+ \| [\d.]+ \|"
            r" \d+ / \d+ \| \d+ / \d+ \| [\d.]+ / [\d.]+ \| 2/2 \|$",
            result.stdout,
            re.M,
        ), result.stdout
        for server in ("submitgw", reference):
            assert re.search(rf"^ *{re.escape(server)} +{kind} +1 +4/4 ", result.stdout, re.M)
    # Every message Postfix and the gateway accepted was found at their smtp-sinks.
    assert len(re.findall(r" 4/4 .* ok +[\d.]+$", result.stdout, re.M)) == 3, result.stdout
    assert "postfix+dovecot (Postfix 3." in result.stdout
    assert "{ARGON2ID} t=1 m=8192 p=1" in result.stdout  # --cheap-argon2: the gateway's
