"""Violation modes under `agentd run`: SIGKILL kills the whole tree (137), SIGWARN warns on the
agent's stderr and allows, SIGSTOP really stops every agent process (state T) until an operator
resumes it (allow or deny) or kills it, from another terminal."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from helpers.agentd_run import AGENTD, PYTHON, deny, needs_tracing, run_agentd, write_policy
from helpers.processes import wait_for

pytestmark = [needs_tracing, pytest.mark.needs_ptrace]


@pytest.fixture
def env(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    policy = write_policy(tmp_path, [
        deny("kill_it", "file_write", r".*/forbidden$", mode="sigkill"),
        deny("hold_it", "file_write", r".*/review_me$", mode="sigstop"),
        {"id": "warn_it", "action_type": "file_write", "pattern": r".*/noisy$", "action": "warn",
         "violation_mode": "sigwarn"},
    ])
    return tmp_path, ws, policy


def test_sigkill_kills_the_whole_tree(env):
    base, ws, policy = env
    pidfile = ws / "child.pid"
    code = f"""
import os, time
pid = os.fork()
if pid == 0:
    open({str(pidfile)!r}, 'w').write(str(os.getpid()))
    time.sleep(60); os._exit(0)
while not os.path.exists({str(pidfile)!r}) or not open({str(pidfile)!r}).read(): time.sleep(0.01)
open('forbidden', 'w').write('x')
print('SURVIVED')
"""
    result = run_agentd(policy, [PYTHON, "-c", code], cwd=ws)
    assert result.returncode == 137
    assert "SURVIVED" not in result.stdout
    assert not (ws / "forbidden").exists()
    child = int(pidfile.read_text())
    assert not Path(f"/proc/{child}").exists() or \
        Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"
    kill = [r for r in result.records if r["decision"] == "deny"]
    assert kill[0]["signal"] == "SIGKILL" and kill[0]["enforced"] == "kill"


def test_sigwarn_allows_and_warns_on_the_agents_stderr(env):
    base, ws, policy = env
    result = run_agentd(policy, ["sh", "-c", "echo hi > noisy; echo done"], cwd=ws)
    assert result.returncode == 0
    assert (ws / "noisy").read_text() == "hi\n"
    assert "agentd: warning:" in result.stderr and str(ws / "noisy") in result.stderr
    warned = [r for r in result.records if r["target"] == str(ws / "noisy")]
    assert warned[0]["decision"] == "warn"


def _held_run(runs: Path):
    for f in runs.glob("*.json") if runs.exists() else ():
        info = json.loads(f.read_text())
        if info.get("state") == "held":
            return info
    return None


def _states(pid: int) -> list[str]:
    """The state letter of every thread of pid and of its descendants."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
        children = (task / "children").read_text().split()
        for child in children:
            states += _states(int(child))
    return states


HOLD_AGENT = """
import os, threading, time
threading.Thread(target=lambda: time.sleep(120), daemon=True).start()
parent = os.getpid()
if os.fork() == 0:
    while os.getppid() == parent:   # a second process, alive until the main one ends
        time.sleep(0.05)
    os._exit(0)
try:
    open('review_me', 'w').write('written'); print('WROTE', flush=True)
except PermissionError:
    print('DENIED', flush=True)
"""


@pytest.mark.parametrize("decision", ["allow", "deny", "kill"])
def test_sigstop_holds_until_the_operator_decides(env, decision):
    base, ws, policy = env
    runs = base / "runs"
    full_env = dict(os.environ, AGENTD_RUNS_DIR=str(runs))
    proc = subprocess.Popen(
        [AGENTD, "run", "--policy", str(policy), "--audit-log", str(base / "a.jsonl"), "--",
         PYTHON, "-c", HOLD_AGENT],
        cwd=ws, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        info = wait_for(lambda: _held_run(runs))
        assert info["held"]["what"] == f"file_write {ws / 'review_me'}"
        # every agent process and thread is really stopped
        states = wait_for(lambda: (lambda s: s if set(s) == {"T"} else None)(
            _states(info["agent_pid"])))
        assert len(states) >= 3  # main thread, its thread, the forked child
        assert not (ws / "review_me").exists()
        listing = subprocess.run([AGENTD, "ps"], env=full_env, capture_output=True, text=True)
        assert info["run_id"] in listing.stdout and "held" in listing.stdout
        if decision == "kill":
            cmd = [AGENTD, "kill", info["run_id"]]
        else:
            cmd = [AGENTD, "resume", info["run_id"], f"--{decision}"]
        assert subprocess.run(cmd, env=full_env, capture_output=True).returncode == 0
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if decision == "allow":
        assert proc.returncode == 0
        assert "WROTE" in out
        assert (ws / "review_me").read_text() == "written"
    elif decision == "deny":
        assert proc.returncode == 0
        assert "DENIED" in out
        assert not (ws / "review_me").exists()
    else:
        assert proc.returncode == 137
        assert not (ws / "review_me").exists()


def test_sigkill_from_a_daemon_after_the_main_process_exited_is_still_137(env):
    base, ws, policy = env
    code = """
import os, time
if os.fork() == 0:
    os.setsid()
    time.sleep(0.3)                     # the main process is gone by now
    open('forbidden', 'w')
    os._exit(0)
os._exit(0)
"""
    result = run_agentd(policy, [PYTHON, "-c", code], cwd=ws)
    assert result.returncode == 137
    assert not (ws / "forbidden").exists()


def test_sigstop_on_a_path_the_kernel_still_walks_survives_the_allow(tmp_path):
    """unlink keeps its pinned path in a window (scratch.py) until its exit stop; the syscall
    re-issued after the operator's allow must be traced to that exit too (it once was taken for
    a signal, and the agent died of SIGTRAP)."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "doomed").write_text("x")
    policy = write_policy(tmp_path, [deny("hold_unlink", "file_delete", r".*/doomed$",
                                          mode="sigstop")])
    runs = tmp_path / "runs"
    env = dict(os.environ, AGENTD_RUNS_DIR=str(runs))
    proc = subprocess.Popen(
        [AGENTD, "run", "--policy", str(policy), "--network", "off", "--audit-log",
         str(tmp_path / "a.jsonl"), "--", PYTHON, "-c",
         "import os; os.unlink('doomed'); print('UNLINKED', flush=True)"],
        cwd=ws, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        info = wait_for(lambda: _held_run(runs))
        assert (ws / "doomed").exists()
        subprocess.run([AGENTD, "resume", info["run_id"], "--allow"], env=env, check=True,
                       capture_output=True)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.strip() == "UNLINKED"
    assert not (ws / "doomed").exists()


def test_repeated_warnings_are_one_line_and_a_count(tmp_path):
    """permissive warns on deleting files that predate the run: 40 deletes are one warning line
    on the agent's stderr and one summary line at the end, while every delete is recorded."""
    ws = tmp_path / "ws"
    (ws / "old").mkdir(parents=True)
    for i in range(40):
        (ws / "old" / f"f{i}").write_text("x")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = run_agentd("permissive", [PYTHON, "-c",
                                       "import os\nfor n in os.listdir('old'): "
                                       "os.unlink('old/' + n)"],
                        cwd=ws, options=("--network", "off"),
                        env=dict(os.environ, TMPDIR=str(scratch)))
    assert result.returncode == 0, result.stderr
    assert os.listdir(ws / "old") == []
    warnings = [line for line in result.stderr.splitlines() if "warning: file_delete" in line]
    assert len(warnings) == 1, result.stderr
    assert "agentd: warnings repeated: 40 x file_delete [warn_delete]" in result.stderr
    warned = [r for r in result.records if r.get("decision") == "warn"]
    assert len(warned) == 40
