"""A bounded, seeded run of the parser fuzz target (tests/fuzz_parser.py).

libFuzzer runs a fixed number of inputs from a fixed seed, starting from the
fixtures, so CI sees the same inputs every time. Any exception or failed check
in the target makes it exit non-zero with the input that did it. `make fuzz`
runs the same target for minutes instead.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNS = 1500   # about 8 s on two idle cores


def require_atheris() -> None:
    """As tests.harness.require_tool: a missing atheris fails in CI and skips elsewhere."""
    if importlib.util.find_spec("atheris") is not None:
        return
    message = "atheris is not installed (pip install -e '.[test]' installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def test_fuzz_target_runs_clean(tmp_path):
    require_atheris()
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz_parser", f"-runs={RUNS}", "-seed=1", "-print_final_stats=1",
         "-timeout=30", f"-artifact_prefix={tmp_path}/"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"fuzz target failed (exit {proc.returncode}):\n{output[-6000:]}"
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("timeout-*"))
    executed = re.search(r"stat::number_of_executed_units:\s*(\d+)", output)
    assert executed, output[-3000:]
    assert int(executed.group(1)) >= RUNS
    seeds = re.search(r"seed corpus: files: (\d+)", output)
    assert seeds and int(seeds.group(1)) > 0, "the fixtures did not seed the run"
    print(f"fuzz: {executed.group(1)} executions, {seeds.group(1)} seed files")
