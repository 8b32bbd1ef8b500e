"""shell_execute and process_spawn under `agentd run`: the decision is made on what really runs
(argv[0] is replaced by the resolved executable's name), so a link named `ls` that runs `rm`
is judged as `rm`; a refused execve fails with EACCES and the agent carries on."""

from __future__ import annotations

import os
import shutil

import pytest

from helpers.agentd_run import deny, needs_tracing, run_agentd, write_policy

pytestmark = [needs_tracing, pytest.mark.needs_ptrace]


@pytest.fixture
def env(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("keep\n")
    policy = write_policy(tmp_path, [
        deny("no_rm_rf", "shell_execute", r"^rm\s+-[a-z]*r[a-z]*f.*"),
        deny("no_sudo", "shell_execute", r"^sudo\b.*"),
        deny("no_evil", "process_spawn", r".*/evil$"),
    ])
    return tmp_path, ws, victim, policy


def test_rm_rf_is_refused_and_the_agent_goes_on(env):
    base, ws, victim, policy = env
    result = run_agentd(policy, ["sh", "-c", f"rm -rf {victim}; echo status=$?"], cwd=ws)
    assert (victim / "keep").exists()
    assert "status=126" in result.stdout  # sh: Permission denied
    record = next(r for r in result.records if r["decision"] == "deny")
    assert record["action_type"] == "shell_execute" and record["target"] == f"rm -rf {victim}"


def test_a_renamed_link_is_judged_by_what_it_runs(env):
    base, ws, victim, policy = env
    os.symlink(shutil.which("rm"), ws / "ls")
    result = run_agentd(policy, ["sh", "-c", f"./ls -rf {victim}; echo status=$?"], cwd=ws)
    assert (victim / "keep").exists()
    assert "status=126" in result.stdout
    assert any(r["target"] == f"rm -rf {victim}" for r in result.records)


def test_process_spawn_sees_the_resolved_path(env):
    base, ws, victim, policy = env
    shutil.copy(shutil.which("true"), ws / "evil")
    result = run_agentd(policy, ["sh", "-c", "./evil; echo status=$?; true; echo after=$?"],
                        cwd=ws)
    assert "status=126" in result.stdout and "after=0" in result.stdout
    assert any(r["action_type"] == "process_spawn" and r["target"] == str(ws / "evil")
               and r["decision"] == "deny" for r in result.records)


def test_allowed_commands_are_recorded_with_their_command_line(env):
    base, ws, victim, policy = env
    result = run_agentd(policy, ["sh", "-c", "ls -a /"], cwd=ws)
    assert result.returncode == 0
    assert any(r["action_type"] == "shell_execute" and r["target"] == "ls -a /"
               and r["decision"] == "allow" for r in result.records)
