"""examples/agent.py under the built-in strict policy: what strict refuses is refused (EACCES,
the agent goes on), what it kills for ends the run with 137 and a reason on stderr, and nothing
outside the workspace changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.agentd_run import PYTHON, needs_tracing, run_agentd

pytestmark = [needs_tracing, pytest.mark.needs_ptrace]

AGENT = str(Path(__file__).resolve().parent.parent / "examples" / "agent.py")


@pytest.fixture
def ws(tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "notes.txt").write_text("hello from the workspace\n")
    return workspace


@pytest.mark.parametrize("network", ["off", "auto"])
def test_the_whole_run_stops_at_the_first_critical_violation(ws, network):
    """Ordinary work goes through (the workspace, a loopback server of the agent's own, with
    or without the network plane), what strict refuses is refused and the agent goes on, and
    the first attack ends the run."""
    result = run_agentd("strict", [PYTHON, AGENT], cwd=ws, options=("--network", network))
    lines = result.stdout.splitlines()
    assert result.returncode == 137, result.stderr
    assert lines[0:2] == ["-> read_workspace: read a file in the workspace",
                          "   read 25 bytes of ./notes.txt (allowed)"]
    assert lines[2] == "-> connect_loopback: connect to a loopback port (a listener of our own)"
    assert lines[3].startswith("   connected to 127.0.0.1:") and lines[3].endswith("(allowed)")
    assert lines[4:8] == [
        "-> write_outside_workspace: write /var/tmp/agentd-example-agent.txt",
        "   refused: Permission denied (/var/tmp/agentd-example-agent.txt)",
        "-> rm_rf: rm -rf a scratch directory outside the workspace",
        "   refused: Permission denied (rm)",
    ]
    assert lines[8] == "-> read_ssh_key: read ~/.ssh/id_rsa" and len(lines) == 9
    assert "agentd: killing the agent: file_read" in result.stderr
    assert not Path("/var/tmp/agentd-example-agent.txt").exists()
    own = [r for r in result.records if "agentd:own_network" in (r.get("pattern_ids") or [])]
    assert len(own) == 1 and own[0]["action_type"] == "network_connect"


@pytest.mark.parametrize("attempt,what", [
    ("read_shadow", "file_read /etc/shadow"),
    ("write_passwd", "file_write /etc/passwd"),
    ("sudo", "shell_execute sudo -n true"),
])
def test_each_critical_attempt_kills_the_agent(ws, attempt, what):
    passwd = Path("/etc/passwd").stat()
    result = run_agentd("strict", [PYTHON, AGENT, attempt], cwd=ws)
    assert result.returncode == 137
    assert f"agentd: killing the agent: {what}" in result.stderr
    assert len(result.stdout.splitlines()) == 1  # the "->" line, and no result
    assert Path("/etc/passwd").stat().st_mtime == passwd.st_mtime
