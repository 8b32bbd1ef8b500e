"""strict's batch deletes under `agentd run` (docs/policies.md, "Batch deletes").

A file the run created itself (temporary files, build outputs, git's objects and locks) is
deleted freely, and an atomic replace (rename(tmp, file)) is a move, not a delete. Deleting more
than 100 files that predate the run in a minute is a batch: the agent is held for review (really
stopped, state T) until the operator answers, once for the whole batch: allow and the rest of
the batch goes through; deny and the rest is refused without asking again.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers.agentd_run import AGENTD, PYTHON, needs_tracing, run_agentd
from helpers.processes import wait_for

pytestmark = [needs_tracing, pytest.mark.needs_ptrace]


def _env(tmp_path: Path) -> dict:
    """The agent's environment: its own TMPDIR (pytest's directories live in /tmp, where strict
    lets every delete through), and the runs directory of the test."""
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    return dict(os.environ, TMPDIR=str(scratch), AGENTD_RUNS_DIR=str(tmp_path / "runs"))

OWN_FILES = """
import os
for i in range(400):
    with open(f"tmp{i}", "w") as f:
        f.write("x")
    os.replace(f"tmp{i}", f"file{i % 10}")      # the atomic replace
for i in range(300):
    os.makedirs(f"build/d{i}", exist_ok=True)
    open(f"build/d{i}/o", "w").close()
for i in range(300):
    os.unlink(f"build/d{i}/o")
    os.rmdir(f"build/d{i}")
os.rmdir("build")
print("DONE")
"""


def test_the_runs_own_files_come_and_go_freely(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    done = run_agentd("strict", [PYTHON, "-c", OWN_FILES], cwd=ws, env=_env(tmp_path),
                      options=("--network", "off"), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "DONE"
    assert sorted(os.listdir(ws)) == [f"file{i}" for i in range(10)]
    denied = [r for r in done.records if r.get("decision") != "allow"]
    assert denied == []
    deletes = [r for r in done.records if r.get("action_type") == "file_delete"]
    assert len(deletes) >= 600 and {r["pattern_ids"][0] for r in deletes} == {"allow_own_deletes"}


DELETE_ALL = """
import os, sys
refused = 0
for name in sorted(os.listdir("old")):
    try:
        os.unlink(os.path.join("old", name))
    except PermissionError:
        refused += 1
print("REFUSED", refused, flush=True)
"""


def _held(runs: Path):
    for entry in runs.glob("*.json") if runs.exists() else ():
        info = json.loads(entry.read_text())
        if info.get("state") == "held":
            return info
    return None


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.parametrize("answer", ["allow", "deny"])
def test_a_batch_of_old_files_asks_the_operator_once(tmp_path, answer):
    ws = tmp_path / "ws"
    (ws / "old").mkdir(parents=True)
    for i in range(150):
        (ws / "old" / f"f{i:03}").write_text("user data")
    runs = tmp_path / "runs"
    audit = tmp_path / "audit.jsonl"
    proc = subprocess.Popen(
        [AGENTD, "run", "--network", "off", "--policy", "strict", "--audit-log", str(audit),
         "--", PYTHON, "-c", DELETE_ALL],
        cwd=ws, env=_env(tmp_path), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = wait_for(lambda: _held(runs), timeout=60)
        assert info["held"]["batch"] is True
        assert info["held"]["what"].startswith(f"file_delete {ws / 'old'}/")
        wait_for(lambda: _state(info["agent_pid"]) == "T")
        # the first hundred are gone, the rest wait for the answer
        assert len(os.listdir(ws / "old")) == 50
        resumed = subprocess.run([AGENTD, "resume", info["run_id"], f"--{answer}"],
                                 env=dict(os.environ, AGENTD_RUNS_DIR=str(runs)),
                                 capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    operator = [r for r in records if r.get("syscall") == "operator"]
    assert len(operator) == 1, "one question for the whole batch"
    if answer == "allow":
        assert out.split() == ["REFUSED", "0"]
        assert os.listdir(ws / "old") == []
    else:
        assert out.split() == ["REFUSED", "50"]
        assert len(os.listdir(ws / "old")) == 50
        declined = [r for r in records if "declined this batch" in (r.get("reason") or "")]
        assert len(declined) == 49


def test_rm_r_of_the_users_tree_stops_for_review(tmp_path):
    """A recursive delete by the real `rm` of files that predate the run is a batch too."""
    ws = tmp_path / "ws"
    tree = ws / "tree"
    for d in range(3):
        (tree / f"d{d}").mkdir(parents=True)
        for i in range(60):
            (tree / f"d{d}" / f"f{i}").write_text("user data")
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [AGENTD, "run", "--network", "off", "--policy", "strict", "--audit-log",
         str(tmp_path / "audit.jsonl"), "--", "rm", "-r", "tree"],
        cwd=ws, env=_env(tmp_path), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = wait_for(lambda: _held(runs), timeout=60)
        assert tree.exists()
        subprocess.run([AGENTD, "resume", info["run_id"], "--allow"], check=True,
                       env=dict(os.environ, AGENTD_RUNS_DIR=str(runs)), capture_output=True)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert not tree.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="the daemon needs root")
def test_through_the_daemon_a_batch_is_held_and_confirmed_once(tmp_path):
    from helpers.agentd_daemon import DaemonUnderTest, cgroup2_mount

    if cgroup2_mount() is None:
        pytest.skip("no cgroup v2 mounted: the daemon's runs need one")
    (tmp_path / "daemon").mkdir()
    daemon = DaemonUnderTest(tmp_path / "daemon", network="off")
    daemon.start()
    try:
        ws = tmp_path / "ws"
        (ws / "old").mkdir(parents=True)
        for i in range(150):
            (ws / "old" / f"f{i:03}").write_text("user data")
        client = subprocess.Popen(
            daemon.argv([PYTHON, "-c", DELETE_ALL], "strict"), cwd=ws,
            env=dict(daemon.env(), TMPDIR=str(_env(tmp_path)["TMPDIR"])),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            run = daemon.wait_run(lambda r: r["state"] == "held", timeout=60)
            assert run["held"]["batch"] is True
            assert len(os.listdir(ws / "old")) == 50
            assert daemon.request("resume", run_id=run["run_id"], decision="allow")["ok"]
            out, err = client.communicate(timeout=60)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        assert client.returncode == 0, err
        assert out.split() == ["REFUSED", "0"]
        assert os.listdir(ws / "old") == []
        assert len([r for r in daemon.records() if r.get("syscall") == "operator"]) == 1
    finally:
        daemon.stop()
