"""The packages' layers hold: a lower layer never imports a higher one (import-linter's "layers"
contract over agentd: cli > daemon > run > netplane > trace > kernel), and the policy engine
``agent_os`` imports nothing of ``agentd``. The contracts live in pyproject.toml
([tool.importlinter]); docs/architecture.md draws the map."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_no_layer_imports_a_higher_one():
    done = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout, done.stdout[-2000:]


def test_a_violation_is_caught(tmp_path):
    """The contract is not vacuous: a kernel module importing the tracer breaks it."""
    package = tmp_path / "agentd"
    import shutil

    shutil.copytree(ROOT / "supervisor" / "agentd", package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "supervisor" / "agent_os", tmp_path / "agent_os",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(package / "kernel" / "statx.py", "a") as handle:
        handle.write("\nfrom agentd.trace import tracer  # noqa: E402,F401\n")
    config = tmp_path / "pyproject.toml"
    config.write_text((ROOT / "pyproject.toml").read_text())
    done = subprocess.run([str(LINT_IMPORTS), "--no-cache", str(config)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode != 0
    assert "agentd.kernel.statx -> agentd.trace.tracer" in done.stdout, done.stdout[-2000:]
