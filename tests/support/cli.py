"""The `submitgw` command, run in the test process by click's test runner.

A command run this way goes through the same click group, options and error handling
as the installed console script, and answers like `subprocess.run` would (exit status,
stdout, stderr), without costing a Python start-up each time. A few tests still run the
console script as a process to prove it is installed and wired (`run_process`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path

from click.testing import CliRunner

from submitgw.cli import commands

SUBMITGW = [sys.executable, "-m", "submitgw"]


def run(
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """No inherited SUBMITGW_CONFIG and no terminal, like a process with a clean environment."""
    environment: dict[str, str | None] = {"SUBMITGW_CONFIG": None, **(env or {})}
    with contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext():
        result = CliRunner().invoke(
            commands(), list(args), input=input, env=environment, catch_exceptions=True
        )
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess([*SUBMITGW, *args], result.exit_code, result.stdout, stderr)


def run_process(
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """The console script as its own process, with the same clean environment."""
    full_env = {k: v for k, v in os.environ.items() if k != "SUBMITGW_CONFIG"}
    full_env.update(env or {})
    return subprocess.run(
        [*SUBMITGW, *args],
        cwd=cwd,
        env=full_env,
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
