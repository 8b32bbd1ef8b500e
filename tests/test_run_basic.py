"""`agentd run` end to end: exit statuses, stdio, a blocked read, audit mode, env_read, records."""

from __future__ import annotations

import os

import pytest

from helpers.agentd_run import PYTHON, deny, needs_tracing, run_agentd, write_policy

pytestmark = [needs_tracing, pytest.mark.needs_ptrace]


@pytest.fixture
def ws(tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (tmp_path / "secret.txt").write_text("TOP-SECRET-CONTENT\n")
    return workspace


@pytest.fixture
def policy(tmp_path):
    return write_policy(tmp_path, [
        deny("no_secret", "file_read", r".*/secret\.txt$"),
        {"id": "hide_token", "action_type": "env_read", "pattern": r"^AGENTD_TEST_TOKEN$",
         "action": "deny"},
    ])


def test_exit_status_is_the_agents(ws, policy):
    assert run_agentd(policy, ["sh", "-c", "exit 7"], cwd=ws).returncode == 7
    assert run_agentd(policy, ["/bin/true"], cwd=ws).returncode == 0


def test_death_by_signal_is_128_plus_n(ws, policy):
    result = run_agentd(policy, ["sh", "-c", "kill -TERM $$"], cwd=ws)
    assert result.returncode == 128 + 15


def test_missing_command_is_127(ws, policy):
    result = run_agentd(policy, ["no-such-command-xyz"], cwd=ws)
    assert result.returncode == 127
    assert "command not found" in result.stderr


def test_stdio_passes_through(ws, policy):
    result = run_agentd(policy, ["sh", "-c", "cat; echo to-stderr >&2"], cwd=ws, input="hello\n")
    assert result.returncode == 0
    assert result.stdout == "hello\n"
    assert "to-stderr" in result.stderr


def test_denied_read_is_refused_and_recorded(ws, policy, tmp_path):
    result = run_agentd(policy, ["cat", str(tmp_path / "secret.txt")], cwd=ws)
    assert result.returncode == 1
    assert "Permission denied" in result.stderr
    assert "TOP-SECRET" not in result.stdout
    denials = [r for r in result.records if r["decision"] == "deny"]
    assert len(denials) == 1
    record = denials[0]
    assert record["target"] == str(tmp_path / "secret.txt")
    assert record["action_type"] == "file_read"
    assert record["pattern_ids"] == ["no_secret"]
    assert record["syscall"] in ("openat", "open")
    assert record["exe"].endswith("/cat")
    assert record["run_id"] and record["pid"] > 0 and record["ppid"] > 0
    assert record["enforced"] == "block"
    # allowed decisions are recorded too
    assert any(r["decision"] == "allow" for r in result.records)


def test_audit_mode_blocks_nothing_and_summarises(ws, policy, tmp_path):
    result = run_agentd(policy, ["cat", str(tmp_path / "secret.txt")], cwd=ws,
                        options=("--mode", "audit"))
    assert result.returncode == 0
    assert "TOP-SECRET-CONTENT" in result.stdout
    assert "would have been denied" in result.stderr
    assert str(tmp_path / "secret.txt") in result.stderr
    denials = [r for r in result.records if r["decision"] == "deny"]
    assert denials and denials[0]["enforced"].startswith("allow")


def test_env_read_denied_variables_are_removed_and_recorded(ws, policy):
    env = dict(os.environ, AGENTD_TEST_TOKEN="sk-123", AGENTD_TEST_OTHER="fine")
    code = "import os; print(os.environ.get('AGENTD_TEST_TOKEN'), os.environ.get('AGENTD_TEST_OTHER'))"
    result = run_agentd(policy, [PYTHON, "-c", code], cwd=ws, env=env)
    assert result.stdout.split() == ["None", "fine"]
    removed = [r for r in result.records if r["action_type"] == "env_read"]
    assert [r["target"] for r in removed] == ["AGENTD_TEST_TOKEN"]
    assert removed[0]["decision"] == "deny" and removed[0]["pattern_ids"] == ["hide_token"]


def test_bad_policy_is_a_clear_error(ws, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\npatterns:\n  - action_type: file_read\n    pattern: '('\n")
    result = run_agentd(bad, ["/bin/true"], cwd=ws)
    assert result.returncode == 2
    assert "bad.yaml" in result.stderr


def test_the_agent_cannot_signal_the_supervisor(ws, policy):
    code = ("import os, signal\n"
            "try:\n    os.kill(os.getppid(), signal.SIGKILL); print('SENT')\n"
            "except PermissionError: print('REFUSED')\n")
    result = run_agentd(policy, [PYTHON, "-c", code], cwd=ws)
    assert result.stdout.strip() == "REFUSED"
    assert result.returncode == 0
    assert any(r["action_type"] == "process_signal" and r["decision"] == "deny"
               for r in result.records)


def test_the_agent_dies_with_the_supervisor(ws, policy, tmp_path):
    import signal
    import subprocess
    import time

    from helpers.agentd_run import AGENTD

    pidfile = ws / "agent.pid"
    code = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    proc = subprocess.Popen([AGENTD, "run", "--policy", str(policy), "--audit-log",
                             str(tmp_path / "a.jsonl"), "--", PYTHON, "-c", code],
                            cwd=ws, env=dict(os.environ, AGENTD_RUNS_DIR=str(tmp_path / "runs")))
    deadline = time.monotonic() + 20
    while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    agent = int(pidfile.read_text())
    os.kill(proc.pid, signal.SIGKILL)   # no chance to clean up: EXITKILL must do it
    proc.wait()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{agent}") and time.monotonic() < deadline:
        stat = open(f"/proc/{agent}/stat").read()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{agent}") or \
        open(f"/proc/{agent}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"


def test_signals_to_the_shared_process_group_are_refused(ws, policy):
    code = ("import os, signal\n"
            "try:\n    os.kill(0, signal.SIGTERM); print('SENT')\n"
            "except PermissionError: print('REFUSED')\n"
            "pid = os.fork()\n"
            "if pid == 0:\n    import time; time.sleep(30); os._exit(0)\n"
            "os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0); print('CHILD KILLED')\n")
    result = run_agentd(policy, [PYTHON, "-c", code], cwd=ws)
    assert result.stdout.split("\n")[:2] == ["REFUSED", "CHILD KILLED"]


def test_a_user_seccomp_profile_adds_kernel_denials(ws, policy, tmp_path):
    import json

    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}))
    result = run_agentd(policy, ["sh", "-c", "mkdir newdir; echo status=$?"], cwd=ws,
                        options=("--seccomp-profile", str(profile)))
    assert "status=1" in result.stdout
    assert not (ws / "newdir").exists()
    bad = tmp_path / "bad.json"
    bad.write_text('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["nosuch"], '
                   '"action": "SCMP_ACT_ERRNO"}]}')
    result = run_agentd(policy, ["/bin/true"], cwd=ws, options=("--seccomp-profile", str(bad)))
    assert result.returncode == 2 and "bad.json" in result.stderr


def test_nested_tracing_is_a_clear_error(ws, policy):
    from helpers.agentd_run import AGENTD

    result = run_agentd(policy, [AGENTD, "run", "--policy", str(policy), "--audit-log",
                                 str(ws / "inner.jsonl"), "--", "/bin/true"], cwd=ws)
    assert result.returncode == 125
    assert "itself being traced" in result.stderr and "Fix" in result.stderr


def test_the_supervisors_environment_and_memory_are_out_of_reach(ws, policy):
    env = dict(os.environ, AGENTD_TEST_TOKEN="sk-should-stay-hidden")
    code = ("import os\n"
            "for name in ('environ', 'mem'):\n"
            "    try:\n        open(f'/proc/{os.getppid()}/' + name, 'rb').read(1); print(name, 'READ')\n"
            "    except PermissionError: print(name, 'REFUSED')\n"
            "    except OSError as e: print(name, e.errno)\n"
            "print('own', len(open('/proc/self/environ', 'rb').read()) > 0)\n")
    result = run_agentd(policy, [PYTHON, "-c", code], cwd=ws, env=env)
    assert result.stdout.split("\n")[:3] == ["environ REFUSED", "mem REFUSED", "own True"]
    assert "sk-should-stay-hidden" not in result.stdout
