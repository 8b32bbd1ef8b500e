"""Smoke test of the VM itself: the machine the VM suite relies on is really there (systemd as
PID 1 and answering, cgroup v2, no network, the project installed and runnable)."""

import os
import pathlib
import shutil
import subprocess
import time

SYSTEM_STATES = {"initializing", "starting", "running", "degraded", "maintenance", "stopping"}


def test_systemd_is_pid_1():
    assert pathlib.Path("/proc/1/comm").read_text().strip() == "systemd"


def test_systemctl_is_system_running_answers():
    # The boot job of agentd-vmtest.service is done once the runner starts (Type=exec), so the
    # manager leaves "starting" shortly; wait for it, bounded.
    deadline = time.monotonic() + 60
    while True:
        answer = subprocess.run(["systemctl", "is-system-running"], capture_output=True,
                                text=True, timeout=30)
        state = answer.stdout.strip()
        if state not in ("initializing", "starting") or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert state in SYSTEM_STATES, f"unexpected answer {answer.stdout!r} {answer.stderr!r}"
    failed = subprocess.run(["systemctl", "--failed", "--no-legend", "--plain"],
                            capture_output=True, text=True, timeout=30).stdout
    assert state == "running", f"system is {state}; failed units:\n{failed}"


def test_cgroup_v2_is_mounted():
    mounts = pathlib.Path("/proc/self/mounts").read_text().splitlines()
    cgroup_mounts = [line.split() for line in mounts if line.split()[1] == "/sys/fs/cgroup"]
    assert cgroup_mounts and cgroup_mounts[-1][2] == "cgroup2", cgroup_mounts
    controllers = pathlib.Path("/sys/fs/cgroup/cgroup.controllers").read_text().split()
    assert {"cpu", "memory", "pids"} <= set(controllers), controllers


def test_vm_has_no_network_but_loopback():
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    names = [line.split(":")[1].strip() for line in links]
    assert names == ["lo"], names


def test_runs_as_root_with_an_unprivileged_user_available():
    assert os.geteuid() == 0
    agent = subprocess.run(["id", "-u", "agent"], capture_output=True, text=True, check=True)
    assert agent.stdout.strip() == "1000"


def test_agentd_help_from_the_installed_project():
    agentd = shutil.which("agentd")
    assert agentd is not None, "agentd is not on PATH"
    result = subprocess.run([agentd, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    # The editable install points at the copy under test, not at anything baked in the image.
    origin = subprocess.run(["/opt/agentd/venv/bin/python", "-c",
                             "import agentd; print(agentd.__file__)"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert origin.startswith("/opt/agentd/src/supervisor/agentd/"), origin
