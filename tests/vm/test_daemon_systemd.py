"""agentd.service under the VM's real systemd: start and status (READY, STATUS), an agent run by
the unprivileged user `agent` (uid 1000) through the daemon, every verdict, reload with a bad and
a good policy (agentd reload, systemctl reload), `systemctl kill -s KILL agentd` leaving no agent
alive, the automatic restart, structured journal fields, and an audit log that verifies.
Runs only inside the test VM (tests/vm/conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import processes
from helpers.processes import pid_alive

REPO = Path(__file__).resolve().parents[2]
AGENTD = shutil.which("agentd") or "/usr/local/bin/agentd"
POLICY_DIR = Path("/etc/agentd/policies")
AUDIT_LOG = Path("/var/log/agentd/flight.jsonl")
SOCKET = "/run/agentd/agentd.sock"
SHARED = Path("/var/tmp/agentd-vm")     # a directory user `agent` can write

PATTERNS = [
    {"id": "kill_it", "action_type": "file_write", "pattern": r".*/forbidden$", "action": "deny",
     "violation_mode": "sigkill", "severity": "critical"},
    {"id": "hold_it", "action_type": "file_write", "pattern": r".*/review_me$", "action": "deny",
     "violation_mode": "sigstop", "severity": "high"},
    {"id": "block_it", "action_type": "file_write", "pattern": r".*/blocked$", "action": "deny",
     "violation_mode": "block", "severity": "high"},
    {"id": "warn_it", "action_type": "file_write", "pattern": r".*/noisy$", "action": "warn",
     "violation_mode": "sigwarn"},
]


def sh(*argv, check=True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=120, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def write_policy(patterns: list[dict], name: str = "vmtest") -> None:
    (POLICY_DIR / f"{name}.yaml").write_text(yaml.safe_dump(
        {"name": name, "default_action": "allow", "patterns": patterns}, sort_keys=False))


def show(*props: str) -> dict[str, str]:
    out = sh("systemctl", "show", "agentd", *(f"-p{p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_for(predicate, timeout=60.0, what="condition"):
    """``processes.wait_for`` with the VM's longer default (TCG is slow)."""
    return processes.wait_for(predicate, timeout, what, interval=0.2)


def request(op: str, **fields) -> dict:
    from agentd.daemon import client as daemon_client
    return daemon_client.request(op, path=SOCKET, **fields)


def as_agent(*argv: str) -> list[str]:
    return ["runuser", "-u", "agent", "--", AGENTD, *argv]


def agent_run(command: str, policy: str = "vmtest", **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(as_agent("run", "--policy", policy, "--", "sh", "-c", command),
                          cwd=SHARED, capture_output=True, text=True, timeout=120, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def service():
    # A module fixture runs before conftest's per-test skip: check here too, so nothing of this
    # ever touches the host's /etc or its systemd.
    if os.environ.get("AGENTD_IN_VM") != "1":
        pytest.skip("VM suite: runs only inside the test VM (scripts/vm-test sets AGENTD_IN_VM=1)")
    SHARED.mkdir(parents=True, exist_ok=True)
    os.chmod(SHARED, 0o1777)
    POLICY_DIR.mkdir(parents=True, exist_ok=True)
    write_policy(PATTERNS)
    Path("/etc/agentd/agentd.yaml").write_text(yaml.safe_dump({
        "grants": [{"users": ["agent"], "policies": ["vmtest", "strict"]}],
        "audit": {"fsync": "interval"}}))
    shutil.copy(REPO / "agentd.service", "/etc/systemd/system/agentd.service")
    sh("systemctl", "daemon-reload")
    sh("systemctl", "restart", "agentd")   # Type=notify: returns after READY=1
    yield
    sh("systemctl", "stop", "agentd", check=False)


def test_service_is_active_and_reports_its_status():
    props = show("ActiveState", "SubState", "StatusText", "Type", "Delegate", "KillMode",
                 "WatchdogUSec", "MainPID", "ControlGroup")
    assert props["ActiveState"] == "active" and props["SubState"] == "running", props
    assert props["Type"] == "notify" and props["Delegate"] == "yes"
    assert props["KillMode"] == "control-group"
    assert "agent(s) running" in props["StatusText"]
    assert oct(os.stat(SOCKET).st_mode & 0o777) == "0o666"
    daemon_cgroup = Path(f"/proc/{props['MainPID']}/cgroup").read_text()
    assert f"0::{props['ControlGroup']}/daemon" in daemon_cgroup
    caps = Path(f"/proc/{props['MainPID']}/status").read_text()
    bound = int(next(line.split()[1] for line in caps.splitlines() if line.startswith("CapBnd")), 16)
    # CAP_DAC_OVERRIDE 1, CAP_KILL 5, CAP_SETGID 6, CAP_SETUID 7, CAP_SETPCAP 8,
    # CAP_NET_ADMIN 12, CAP_SYS_PTRACE 19, CAP_SYS_ADMIN 21 (8, 12, 21 for the network plane)
    assert bound == sum(1 << c for c in (1, 5, 6, 7, 8, 12, 19, 21)), hex(bound)
    assert "agentd" in sh("systemctl", "status", "agentd", "--no-pager", check=False).stdout


def test_agent_runs_as_the_unprivileged_caller_in_its_own_cgroup():
    result = agent_run("id -u; id -g; cat /proc/self/cgroup; exit 5")
    assert result.returncode == 5, result.stderr
    lines = result.stdout.split()
    assert lines[0] == "1000" and lines[1] == "1000"
    assert "/system.slice/agentd.service/run-d" in result.stdout
    refused = agent_run("true", policy="permissive")
    assert refused.returncode == 125 and "not granted" in refused.stderr


def test_agent_gets_the_network_plane_under_the_units_restrictions():
    # The plane (the config's default) needs CAP_SYS_ADMIN + CAP_NET_ADMIN and writable
    # /proc/sys/net inside the unit's ProtectKernelTunables=: the agent's own namespace has lo and
    # the veth end, with the sysctls the daemon wrote from inside it, and no host interface.
    result = agent_run("cat /proc/net/dev; cat /proc/sys/net/ipv4/conf/eth0/route_localnet "
                       "/proc/sys/net/ipv6/conf/eth0/disable_ipv6")
    assert result.returncode == 0, result.stderr
    names = sorted(line.split(":")[0].strip() for line in result.stdout.splitlines() if ":" in line)
    assert names == ["eth0", "lo"], result.stdout
    assert result.stdout.split()[-2:] == ["1", "1"], result.stdout


def test_each_verdict():
    killed = agent_run(f"sleep 300 & touch {SHARED}/forbidden; echo survived")
    assert killed.returncode == 137 and "survived" not in killed.stdout
    assert not (SHARED / "forbidden").exists()
    assert not sh("pgrep", "-u", "agent", "-x", "sleep", check=False).stdout.strip()
    blocked = agent_run(f"touch {SHARED}/blocked || echo refused; touch {SHARED}/noisy && echo ok")
    assert blocked.returncode == 0 and "refused" in blocked.stdout and "ok" in blocked.stdout
    assert "warning:" in blocked.stderr
    assert not (SHARED / "blocked").exists() and (SHARED / "noisy").exists()
    for decision in ("deny", "allow"):
        target = SHARED / "review_me"
        target.unlink(missing_ok=True)
        client = subprocess.Popen(
            as_agent("run", "--policy", "vmtest", "--", "python3", "-c",
                     f"try:\n open({str(target)!r}, 'w'); print('done')\n"
                     "except PermissionError: print('refused')"),
            cwd=SHARED, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            run = wait_for(lambda: next((r for r in request("ps")["runs"]
                                         if r["state"] == "held"), None), what="a held run")
            cgroup = Path("/sys/fs/cgroup") / show("ControlGroup")["ControlGroup"].lstrip("/") \
                / f"run-{run['run_id']}"
            assert "frozen 1" in (cgroup / "cgroup.events").read_text()
            listing = sh(AGENTD, "ps").stdout
            assert run["run_id"] in listing and "pending review" in listing
            sh(AGENTD, "resume", run["run_id"], f"--{decision}")
            out, err = client.communicate(timeout=60)
        finally:
            client.kill()
        assert out.strip() == ("done" if decision == "allow" else "refused"), err
        assert target.exists() == (decision == "allow")


def test_reload_with_a_bad_then_a_good_policy():
    before = request("status")["policies"]["vmtest"]
    path = POLICY_DIR / "vmtest.yaml"
    good = path.read_text()
    path.write_text(good.replace(r".*/forbidden$", r".*/forbidden($"))
    bad = sh(AGENTD, "reload", check=False)
    assert bad.returncode == 1 and "vmtest.yaml" in bad.stderr and "kill_it" in bad.stderr
    assert request("status")["policies"]["vmtest"] == before
    assert agent_run(f"touch {SHARED}/forbidden").returncode == 137   # the old one still rules
    write_policy(PATTERNS + [{"id": "late", "action_type": "file_write", "action": "deny",
                              "pattern": r".*/late$", "violation_mode": "block"}])
    sh("systemctl", "reload", "agentd")   # ExecReload: SIGHUP
    wait_for(lambda: request("status")["policies"]["vmtest"] != before, what="the reload")
    result = agent_run(f"touch {SHARED}/late || echo refused")
    assert "refused" in result.stdout and not (SHARED / "late").exists()
    journal = sh("journalctl", "-u", "agentd", "--no-pager", "-o", "cat").stdout
    assert "reload" in journal and "rejected" in journal


def test_systemctl_kill_leaves_no_agent_alive_and_the_service_restarts():
    old_pid = show("MainPID")["MainPID"]
    clients = [subprocess.Popen(as_agent("run", "--policy", "vmtest", "--", "sh", "-c",
                                         "sleep 600 & sleep 600"),
                                cwd=SHARED, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(3)]
    wait_for(lambda: len(request("ps")["runs"]) == 3 and
             all(len(r["pids"]) >= 2 for r in request("ps")["runs"]), what="three agents")
    pids = [pid for run in request("ps")["runs"] for pid in run["pids"]]
    sh("systemctl", "kill", "-s", "KILL", "agentd")
    wait_for(lambda: not any(pid_alive(pid) for pid in pids), what="every agent to die")
    assert not sh("pgrep", "-u", "agent", "-x", "sleep", check=False).stdout.strip()
    for client in clients:
        client.wait(60)
        assert client.returncode != 0
    # Restart=on-failure brings it back, with a fresh READY=1
    wait_for(lambda: show("ActiveState", "MainPID")["MainPID"] not in ("0", old_pid) and
             show("ActiveState")["ActiveState"] == "active", what="the restart")
    assert agent_run("exit 3").returncode == 3


def test_journal_has_structured_fields_and_the_audit_log_verifies():
    agent_run("true")
    entries = [json.loads(line) for line in sh(
        "journalctl", "-u", "agentd", "--no-pager", "-o", "json").stdout.splitlines() if line]
    launched = [e for e in entries if "launched" in str(e.get("MESSAGE", ""))]
    assert launched, "no launch message in the journal"
    try:
        import systemd.journal  # noqa: F401
    except ImportError:
        pass
    else:
        assert launched[-1].get("RUN_ID", "").startswith("d")
        assert launched[-1].get("AGENT_UID") == "1000"
    sh("systemctl", "stop", "agentd")   # closes the log: head sidecar written
    result = sh(AGENTD, "audit", "verify", "--log", str(AUDIT_LOG), "--json", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    records = [json.loads(line) for line in AUDIT_LOG.read_text().splitlines() if line]
    assert any(r.get("enforced") == "kill" for r in records)
    sh("systemctl", "start", "agentd")
