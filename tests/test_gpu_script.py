"""The prepared GPU script runs end to end on the CPU (``--dry-run``: Triton interpreter, tiny
shapes), so that a lent GPU's few minutes are never lost to a script broken by a later change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.long_running
def test_gpu_script_dry_run_passes_every_section(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), TRITON_INTERPRET="1")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--dry-run", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600, cwd=ROOT,
    )  # fmt: skip
    tail = (done.stdout + done.stderr)[-3000:]
    assert done.returncode == 0, tail
    results = json.loads((tmp_path / "gpu_results.json").read_text())
    checks = results["checks"]
    assert len(checks) >= 20 and all(check["ok"] for check in checks), tail
    assert "0 failure(s)" in done.stdout and "ERROR" not in done.stdout, tail
    timed = {row["provider"] for row in results["timings"]}
    assert any("cross_entropy(impl='triton')" in name for name in timed), sorted(timed)
