"""bench/run_bench.py --quick on one small workload: every runner produces a number (no timing)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to build bench/floor_tracer.c")
@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is one of the runners")
def test_run_bench_quick_produces_numbers(tmp_path):
    out = tmp_path / "run.json"
    readme_before = (REPO / "bench" / "README.md").read_bytes() \
        if (REPO / "bench" / "README.md").exists() else None
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run_bench.py"), "--quick", "--workloads", "fork_loop",
         "--startup-runs", "2", "--json", str(out), "--no-readme"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    medians = report["workloads"]["fork_loop"]["median_s"]
    # the plane and daemon runners need root (and cgroup v2): the bench skips them otherwise
    assert {"native", "floor", "strace", "agentd"} <= set(medians)
    assert set(medians) <= {"native", "floor", "strace", "agentd", "agentd-plane", "agentd-daemon"}
    assert all(value > 0 for value in medians.values())
    assert report["startup"]["agentd_true_ms"] > 0
    assert report["startup"]["agentd_off_true_ms"] > 0
    assert report["supervisor_peak_rss_kib"] > 0
    assert "execve" in report["traced_syscalls"]
    assert "| fork_loop (40) |" in proc.stdout
    # --no-readme leaves the committed table alone
    after = (REPO / "bench" / "README.md").read_bytes() if readme_before is not None else None
    assert after == readme_before
