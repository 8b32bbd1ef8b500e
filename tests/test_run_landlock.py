"""``agentd run`` applies the policy's Landlock ruleset in the agent before exec (defence in
depth: the kernel enforces the file rules even if the tracer were bypassed), and
``--explain-sandbox`` says which layer enforces what.

The kernel offers no query for "is this process in a Landlock domain", so the proof is the
layer limit: a process may stack at most 16 Landlock layers; one already applied by agentd
leaves room for 15. The same script run without the sandbox, and under ``--mode audit`` (which
blocks nothing and so uses no Landlock), adds 16.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from agentd.kernel import landlock
from helpers.agentd_run import AGENTD, PYTHON, needs_tracing, run_agentd

LAYERS = str(Path(__file__).parent / "data" / "landlock_layers.py")
needs_landlock = pytest.mark.skipif(not landlock.probe().available,
                                    reason="this kernel has no Landlock")
pytestmark = [needs_tracing, needs_landlock]


def layers_added(output: str) -> int:
    match = re.search(r"layers added (\d+)", output)
    assert match, output
    return int(match.group(1))


def test_without_the_sandbox_sixteen_layers_fit(tmp_path):
    result = subprocess.run([PYTHON, LAYERS], capture_output=True, text=True, check=True)
    assert layers_added(result.stdout) == 16


@pytest.mark.parametrize("policy", ["strict", "permissive", "read_only"])
def test_agent_runs_inside_a_landlock_domain(tmp_path, policy):
    ws = tmp_path / "ws"
    ws.mkdir()
    result = run_agentd(policy, [PYTHON, LAYERS], cwd=ws)
    assert result.returncode == 0, result.stderr
    assert layers_added(result.stdout) == 15
    assert "warning" not in result.stderr, result.stderr


def test_audit_mode_uses_no_landlock(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    result = run_agentd("strict", [PYTHON, LAYERS], cwd=ws, options=("--mode", "audit"))
    assert result.returncode == 0, result.stderr
    assert layers_added(result.stdout) == 16


def test_explain_sandbox_names_the_layers():
    # a workspace outside /tmp (which strict already allows as a whole)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as workspace:
        result = subprocess.run([AGENTD, "run", "--policy", "strict", "--workspace", workspace,
                                 "--explain-sandbox"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert re.search(r"file_write\s+tracer \+ landlock", text)
    assert re.search(r"file_read\s+tracer\n", text)
    assert re.search(r"kernel side doors\s+seccomp baseline", text)
    assert re.search(r"other processes, IPC, core dumps\s+tracer \+ seccomp baseline", text)
    assert f"allow {workspace}: write_file" in text   # the workspace is a writable hierarchy
    assert "Network (--network off): network_connect is judged at connect()" in text


def test_explain_sandbox_in_audit_mode_has_no_ruleset(tmp_path):
    result = subprocess.run([AGENTD, "run", "--policy", "strict", "--mode", "audit",
                             "--explain-sandbox"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Landlock ruleset: none" in result.stdout


def test_run_without_command_is_a_usage_error():
    result = subprocess.run([AGENTD, "run", "--policy", "strict"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "missing the command" in result.stderr
