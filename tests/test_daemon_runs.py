"""A real `agentd daemon` on the host (tmp paths, no systemd) and real `agentd run` clients:
stdio passed with SCM_RIGHTS, the caller's identity, grants, every verdict, a cgroup per agent
(freeze, kill), garbage on the socket, a client that vanishes, atomic reload, the daemon's
death taking every agent with it, and an audit log that verifies."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from agent_os.flight_recorder import verify_file
from helpers.agentd_daemon import PYTHON, DaemonUnderTest, cgroup2_mount, pid_alive, wait_for
from helpers.agentd_run import deny, needs_tracing

pytestmark = [needs_tracing, pytest.mark.needs_ptrace,
              pytest.mark.skipif(os.geteuid() != 0, reason="the daemon runs agents as other "
                                 "users: needs root"),
              pytest.mark.skipif(cgroup2_mount() is None, reason="no cgroup v2 mounted")]

POLICY = [
    deny("kill_it", "file_write", r".*/forbidden$", mode="sigkill"),
    deny("hold_it", "file_write", r".*/review_me$", mode="sigstop"),
    deny("block_it", "file_write", r".*/blocked$", mode="block"),
    {"id": "warn_it", "action_type": "file_write", "pattern": r".*/noisy$", "action": "warn",
     "violation_mode": "sigwarn"},
]


@pytest.fixture
def daemon(tmp_path):
    d = DaemonUnderTest(tmp_path, policies={"test": POLICY},
                        grants=[{"users": ["nobody"], "policies": ["test"]}])
    d.start()
    yield d
    d.stop()


def py(code: str) -> list[str]:
    return [PYTHON, "-c", code]


def test_root_run_passes_stdio_and_exit_status_through(daemon):
    result = daemon.run(py("import sys; print('out', input()); print('err', file=sys.stderr);"
                           "sys.exit(7)"), input="hello\n")
    assert result.returncode == 7, result.stderr
    assert result.stdout == "out hello\n"
    assert "err\n" in result.stderr
    records = daemon.records()
    assert records and {r["run_id"] for r in records} == {records[0]["run_id"]}
    assert verify_file(daemon.audit_log).ok


def test_agent_runs_as_the_caller_in_its_own_cgroup(daemon):
    result = daemon.run(["sh", "-c", "grep -E '^(Uid|Gid|Groups):' /proc/self/status; "
                         "cat /proc/self/cgroup"], user="nobody")
    assert result.returncode == 0, result.stderr
    assert "Uid:\t65534\t65534\t65534\t65534" in result.stdout
    assert "Gid:\t65534\t65534\t65534\t65534" in result.stdout
    assert "Groups:\t\n" in result.stdout or "Groups:\t \n" in result.stdout
    assert f"0::/{daemon.cgroup_base}/run-d" in result.stdout


def test_ungranted_policy_and_audit_mode_are_refused(daemon):
    result = daemon.run(["true"], policy="permissive", user="nobody")
    assert result.returncode == 125
    assert "not granted policy 'permissive'" in result.stderr
    result = daemon.run(["true"], user="nobody", options=("--mode", "audit"))
    assert result.returncode == 125 and "--mode audit" in result.stderr
    result = daemon.run(["true"], user="nobody", options=("--audit-log", "/tmp/x"))
    assert result.returncode == 125 and "--embedded" in result.stderr


def test_verdicts_kill_block_warn(daemon):
    target = daemon.shared / "forbidden"
    result = daemon.run(["sh", "-c", f"sleep 30 & touch {target}; echo survived"], user="nobody")
    assert result.returncode == 137
    assert not target.exists() and "survived" not in result.stdout
    result = daemon.run(["sh", "-c", f"touch {daemon.shared}/blocked || echo refused; "
                         f"touch {daemon.shared}/noisy && echo warned"], user="nobody")
    assert result.returncode == 0
    assert "refused" in result.stdout and "warned" in result.stdout
    assert not (daemon.shared / "blocked").exists() and (daemon.shared / "noisy").exists()
    assert "warning:" in result.stderr
    decided = {(r["target"], r["enforced"]) for r in daemon.records()}
    assert (str(target), "kill") in decided
    assert (f"{daemon.shared}/blocked", "block") in decided


def _cgroup_frozen(daemon, run_id: str) -> bool:
    events = (daemon.cgroup_dir / f"run-{run_id}" / "cgroup.events").read_text()
    return "frozen 1" in events.split("\n")


@pytest.mark.parametrize("decision", ["deny", "allow"])
def test_sigstop_verdict_freezes_until_root_decides(daemon, decision):
    target = daemon.shared / "review_me"
    client = daemon.popen(py(f"try:\n open({str(target)!r}, 'w'); print('done')\n"
                             "except PermissionError: print('refused')"), user="nobody")
    try:
        run = daemon.wait_run(lambda r: r["state"] == "held")
        assert run["held"]["what"] == f"file_write {target}"
        assert _cgroup_frozen(daemon, run["run_id"])
        # the owner may not approve their own agent's held action
        nobody = subprocess.run(["setpriv", "--reuid", "nobody", "--regid", "nogroup",
                                 "--clear-groups", daemon.argv([], "x")[0], "resume",
                                 run["run_id"], "--allow"], env=daemon.env(),
                                capture_output=True, text=True, timeout=20)
        assert nobody.returncode == 1 and "only root" in nobody.stderr
        answer = daemon.request("resume", run_id=run["run_id"], decision=decision)
        assert answer["ok"], answer
        out, err = client.communicate(timeout=30)
    finally:
        client.kill()
    assert client.returncode == 0, err
    assert out.strip() == ("done" if decision == "allow" else "refused")
    assert target.exists() == (decision == "allow")
    assert any(r["syscall"] == "operator" and r["enforced"] == decision for r in daemon.records())


def test_stop_freezes_and_resume_thaws_the_whole_cgroup(daemon):
    client = daemon.popen(["sh", "-c", "while :; do sleep 0.05; done"], user="nobody")
    try:
        run = daemon.wait_run(lambda r: len(r["pids"]) >= 1)
        assert daemon.request("stop", run_id=run["run_id"])["ok"]
        # The daemon waits up to 2 s for the kernel's "frozen 1"; on a loaded machine the
        # answer may be "freezing" and the kernel finishes a little later.
        wait_for(lambda: _cgroup_frozen(daemon, run["run_id"]), what="cgroup.events frozen 1")
        assert daemon.runs()[0]["state"] == "frozen"
        assert daemon.request("resume", run_id=run["run_id"])["ok"]
        wait_for(lambda: not _cgroup_frozen(daemon, run["run_id"]), what="cgroup.events frozen 0")
        assert daemon.request("kill", run_id=run["run_id"])["ok"]
        client.wait(20)
    finally:
        client.kill()
    assert client.returncode == 137
    assert not (daemon.cgroup_dir / f"run-{run['run_id']}").exists() or \
        not (daemon.cgroup_dir / f"run-{run['run_id']}" / "cgroup.procs").read_text().strip()


def test_garbage_on_the_socket_does_not_hurt_the_daemon(daemon):
    for junk in (b"\x00\xff garbage\n", b"[1,2,3]\n", b'{"op": "launch_missiles"}\n',
                 b'{"op": "run", "argv": "ls"}\n', b"x" * (2 << 20), b'{"op": "kill"}\n'):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(daemon.socket_path)
            try:
                sock.sendall(junk)
                sock.settimeout(5)
                sock.recv(4096)
            except OSError:
                pass
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:  # connect and vanish
        sock.connect(daemon.socket_path)
    assert daemon.alive()
    assert daemon.run(["true"]).returncode == 0


def test_a_client_that_disconnects_takes_its_agent_along(daemon):
    client = daemon.popen(["sleep", "300"], user="nobody")
    run = daemon.wait_run(lambda r: r["agent_pid"])
    agent = run["agent_pid"]
    client.kill()
    client.wait()
    wait_for(lambda: not pid_alive(agent), what="the agent to die")
    wait_for(lambda: not daemon.runs(), what="the run to end")
    assert daemon.alive()
    assert daemon.run(["true"]).returncode == 0


def test_reload_rejects_a_bad_policy_and_switches_running_agents(daemon):
    fifo = daemon.shared / "go"
    os.mkfifo(fifo)
    os.chmod(fifo, 0o666)
    late = daemon.shared / "late"
    client = daemon.popen(["sh", "-c", f"read x < {fifo}; touch {late} || echo refused"],
                          user="nobody")
    try:
        run = daemon.wait_run(lambda r: r["agent_pid"])
        old_version = run["version"]
        bad = daemon.policy_dir / "test.yaml"
        good_text = bad.read_text()
        bad.write_text(good_text.replace(r".*/forbidden$", r".*/forbidden($"))
        answer = daemon.request("reload")
        assert not answer["ok"] and "test.yaml" in answer["error"]
        assert "kill_it" in answer["error"]
        assert daemon.runs()[0]["version"] == old_version
        daemon.write_policy("test", POLICY + [deny("late", "file_write", r".*/late$")])
        answer = daemon.request("reload")
        assert answer["ok"] and answer["switched"] == [run["run_id"]]
        assert daemon.runs()[0]["version"] != old_version
        with open(fifo, "w") as handle:
            handle.write("go\n")
        out, err = client.communicate(timeout=30)
    finally:
        client.kill()
    assert "refused" in out, err
    assert not late.exists()
    switch = [r for r in daemon.records() if r.get("action_type") == "policy_reload"]
    assert len(switch) == 1 and switch[0]["run_id"] == run["run_id"]


def test_sighup_reloads_and_only_root_may_reload(daemon):
    daemon.write_policy("extra", [])
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "extra" in daemon.request("status")["policies"], what="SIGHUP reload")
    result = subprocess.run(["setpriv", "--reuid", "nobody", "--regid", "nogroup",
                             "--clear-groups", daemon.argv([], "x")[0], "reload"],
                            env=daemon.env(), capture_output=True, text=True, timeout=20)
    assert result.returncode == 1 and "only root" in result.stderr


def test_when_the_daemon_dies_every_agent_dies(daemon):
    clients = [daemon.popen(["sh", "-c", "sleep 300 & sleep 300"], user="nobody")
               for _ in range(3)]
    wait_for(lambda: len(daemon.runs()) == 3 and all(len(r["pids"]) >= 2 for r in daemon.runs()),
             what="three agents with children")
    pids = [pid for r in daemon.runs() for pid in r["pids"]]
    daemon.process.kill()
    daemon.process.wait()
    wait_for(lambda: not any(pid_alive(pid) for pid in pids), timeout=10,
             what="every agent process to die")
    for client in clients:
        client.wait(10)
        assert client.returncode != 0


def test_audit_log_holds_one_verified_record_per_decision(daemon):
    for _ in range(3):
        daemon.run(["sh", "-c", "ls / >/dev/null; cat /etc/hostname >/dev/null"], user="nobody")
    wait_for(lambda: not daemon.runs(), what="runs to end")
    daemon.stop()
    result = verify_file(daemon.audit_log)
    assert result.ok, result.error
    records = daemon.records()
    assert result.records == len(records) > 0
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert "records sent" not in daemon.log_text()   # supervisors' counts matched the daemon's


def test_a_flood_of_file_descriptors_is_refused(daemon):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(daemon.socket_path)
        sock.settimeout(5)
        try:
            for _ in range(4):
                socket.send_fds(sock, [b"{"], [0, 1, 2])
            reply = sock.recv(4096)
        except OSError:
            reply = b""
    assert b"too many file descriptors" in reply or reply == b""
    assert daemon.alive()
    own = os.listdir(f"/proc/{daemon.process.pid}/fd")
    assert len(own) < 40, own


def test_an_agent_cannot_ask_the_daemon_for_another_run(daemon):
    """Else it would start a process outside its own tree, under another policy."""
    escaped = daemon.shared / "escaped"
    result = daemon.run([daemon.argv([], "x")[0], "run", "--policy", "test", "--", "touch",
                         str(escaped)], user="nobody")
    assert result.returncode == 125, result.stderr
    assert "agents may not use the daemon" in result.stderr
    assert not escaped.exists()
    result = daemon.run([daemon.argv([], "x")[0], "ps"], user="nobody")
    assert result.returncode == 0


def test_each_daemon_run_gets_its_own_network_plane(daemon):
    """config network: plane (the default): the agent, running as the caller, sits in its own
    network namespace (loopback + one veth), with the proxy variables pointing at its
    supervisor's end; the host's interfaces are not there."""
    code = ("import os, socket; print(sorted(n for _, n in socket.if_nameindex()));"
            "print(os.environ.get('HTTPS_PROXY')); print(os.readlink('/proc/self/ns/net'))")
    result = daemon.run(py(code), user="nobody")
    assert result.returncode == 0, result.stderr
    names, proxy, netns = result.stdout.splitlines()
    assert names == "['eth0', 'lo']", names
    assert proxy.startswith("http://10.255."), proxy
    assert netns != os.readlink("/proc/self/ns/net")


def test_a_daemon_runs_plane_is_torn_down_after_the_client_is_answered(daemon):
    """The supervisor closes its record pipe (the daemon answers the client) before it tears
    the namespace down; the veth and the namespace still go, moments later."""
    import time

    from agentd.netplane.netns import HOST_IFNAME_PREFIX

    def planes() -> set[str]:
        return {name for _, name in socket.if_nameindex() if name.startswith(HOST_IFNAME_PREFIX)}

    before = planes()
    result = daemon.run(py("import socket; print(sorted(n for _, n in socket.if_nameindex()))"),
                        user="nobody")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['eth0', 'lo']", result.stdout  # the run had its plane
    deadline = time.monotonic() + 10
    while planes() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not planes() - before, "the run's veth outlived its supervisor"


def test_network_options_of_a_daemon_run_are_said_not_to_apply(daemon):
    result = daemon.run(["true"], options=("--network", "off"))
    assert result.returncode == 0, result.stderr
    assert "its configuration decides the network plane" in result.stderr
    assert "decides the network plane" not in daemon.run(["true"]).stderr


@pytest.mark.parametrize("held", [False, True], ids=["running", "held"])
def test_sigterm_to_a_supervisor_kills_its_agent_and_the_client_gets_137(daemon, held):
    """SIGTERM's handler only notes it and SIGKILLs the agent's thread groups: the supervisor's
    waitpid wakes as the tree dies (running), or its wait for the operator ends (held)."""
    if held:
        command = py(f"open({str(daemon.shared / 'review_me')!r}, 'w')")
        ready = lambda r: r["state"] == "held"    # noqa: E731
    else:
        command = ["sh", "-c", "sleep 300 & sleep 300"]
        ready = lambda r: len(r["pids"]) >= 2    # noqa: E731
    client = daemon.popen(command, user="nobody")
    try:
        run = daemon.wait_run(ready)
        pids = run["pids"] or [run["agent_pid"]]
        os.kill(run["supervisor_pid"], signal.SIGTERM)
        client.wait(20)
    finally:
        client.kill()
    assert client.returncode == 137
    wait_for(lambda: not any(pid_alive(pid) for pid in pids), what="the agent to die")
    wait_for(lambda: not daemon.runs(), what="the run to end")
    assert "supervisor died" not in daemon.log_text()
    assert "Traceback" not in daemon.log_text()
    assert not (daemon.shared / "review_me").exists()


def test_a_supervisor_killed_outright_is_logged_as_such_before_the_client_gets_137(daemon):
    """SIGKILL gives the supervisor no time to report: the client's 137 alone would look like a
    SIGKILL verdict, so the daemon logs how the supervisor ended (the escape suite reads it to
    see an attack on the supervisor of a daemon run)."""
    client = daemon.popen(["sh", "-c", "sleep 300 & sleep 300"], user="nobody")
    try:
        run = daemon.wait_run(lambda r: len(r["pids"]) >= 2)
        pids = run["pids"]
        os.kill(run["supervisor_pid"], signal.SIGKILL)
        client.wait(20)
    finally:
        client.kill()
    assert client.returncode == 137
    assert (f"run {run['run_id']}: supervisor {run['supervisor_pid']} died of signal 9 before "
            "reporting the agent's status") in daemon.log_text()
    wait_for(lambda: not any(pid_alive(pid) for pid in pids), what="the agent to die")


def test_a_switch_waits_for_the_next_stop_and_the_last_one_wins(daemon):
    """Two reloads while the agent is blocked: its supervisor applies the newest policy at the
    agent's next stop, and records that one switch."""
    fifo = daemon.shared / "go"
    os.mkfifo(fifo)
    os.chmod(fifo, 0o666)
    first, second = daemon.shared / "first", daemon.shared / "second"
    client = daemon.popen(["sh", "-c", f"read x < {fifo}; touch {first} || echo first refused; "
                           f"touch {second} || echo second refused"], user="nobody")
    try:
        run = daemon.wait_run(lambda r: r["agent_pid"])
        # the agent is blocked in the kernel, opening the fifo: no stop until we write to it
        wait_for(lambda: _wchan(run["agent_pid"]) == "wait_for_partner",
                 what="the agent to block opening the fifo")
        daemon.write_policy("test", POLICY + [deny("first", "file_write", r".*/first$")])
        assert daemon.request("reload")["switched"] == [run["run_id"]]
        daemon.write_policy("test", POLICY + [deny("second", "file_write", r".*/second$")])
        answer = daemon.request("reload")
        assert answer["switched"] == [run["run_id"]]
        newest = answer["changed"]["test"][1]
        with open(fifo, "w") as handle:
            handle.write("go\n")
        out, err = client.communicate(timeout=30)
    finally:
        client.kill()
    assert out.split("\n")[:1] == ["second refused"], (out, err)
    assert first.exists() and not second.exists()
    switches = [r for r in daemon.records() if r.get("action_type") == "policy_reload"]
    assert [r["target"] for r in switches] == [f"test@{newest}"]


def _wchan(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return ""


def test_arguments_and_environment_that_are_not_utf8_reach_the_agent_intact(daemon):
    argv = [daemon.argv([], "test")[0], "run", "--policy", "test", "--", "sh", "-c",
            'printf "%s|%s" "$1" "$V" | od -An -tx1', "sh", b"caf\xe9"]
    env = {os.fsencode(k): os.fsencode(v) for k, v in daemon.env().items()}
    env[b"V"] = b"\xff\xfe"
    result = subprocess.run(argv, env=env, cwd=daemon.shared, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [b"63", b"61", b"66", b"e9", b"7c", b"ff", b"fe"]


def test_repeated_reads_through_the_daemon_are_one_record_and_a_count(daemon):
    """The daemon's runs summarise as standalone ones do: the summary goes through the run's
    pipe to the daemon's log before the run ends, and the chain verifies."""
    target = daemon.shared / "data.txt"
    target.write_text("x")
    os.chmod(target, 0o644)
    result = daemon.run(py(f"for _ in range(25): open({str(target)!r}).read()"))
    assert result.returncode == 0, result.stderr
    reads = [r for r in daemon.records()
             if r.get("action_type") == "file_read" and r.get("target") == str(target)]
    assert [r.get("repeats") for r in reads] == [None, 24], reads
    assert verify_file(daemon.audit_log).ok


def test_git_config_global_in_the_callers_home_under_strict(daemon, tmp_path):
    """${HOME} is the agent's $HOME, as under `agentd run`, not the account's home from passwd:
    `git config --global` writes the caller's $HOME/.gitconfig, which strict allows (with its
    lock); the rest of that $HOME stays refused. Bound to the account's home, the lock was
    refused and the commit had no identity."""
    home, workspace, tmpdir = tmp_path / "home", tmp_path / "ws", tmp_path / "tmp"
    for directory in (home, workspace, tmpdir):
        directory.mkdir()
        directory.chmod(0o777)
    env = {key: value for key, value in daemon.env().items() if not key.startswith("GIT_")}
    env.update(HOME=str(home), TMPDIR=str(tmpdir), GIT_CONFIG_NOSYSTEM="1")
    script = ("set -e; git config --global user.email agent@example.invalid; "
              "git config --global user.name Agent; git init -q repo && cd repo; "
              "for i in $(seq 1 300); do echo $i > f$i; done; git add -A && git commit -qm one; "
              "for i in $(seq 1 300); do echo edit >> f$i; done; git commit -qam two && git gc -q; "
              "git log --format=%ae | sort -u; "
              "echo x > \"$HOME/notes.txt\" 2>/dev/null || echo notes refused")
    result = subprocess.run(daemon.argv(["sh", "-c", script], "strict"), cwd=workspace, env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["agent@example.invalid", "notes", "refused"], result.stdout
    assert "email = agent@example.invalid" in (home / ".gitconfig").read_text()
    assert not (home / "notes.txt").exists()
