"""A real ``agentd daemon`` in a temporary directory, without systemd, for the host tests.

``DaemonUnderTest(root, policies, grants)`` writes a configuration whose socket, runs dir, audit
log, policy dir and cgroup subtree are all private to the test, starts the daemon as a
subprocess with a fake ``NOTIFY_SOCKET`` (a datagram socket the test owns) and returns once the
daemon said ``READY=1``. ``run(...)`` runs ``agentd run`` against it (optionally as another
user, through ``setpriv``); ``request(op, ...)`` speaks to the control socket directly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from .agentd_run import AGENTD
from .processes import pid_alive, wait_for  # noqa: F401 - re-exported for the tests

PYTHON = sys.executable


def cgroup2_mount() -> str | None:
    try:
        from agentd.kernel.cgroups import find_unified_mount
        return find_unified_mount()
    except OSError:
        return None


class DaemonUnderTest:
    def __init__(self, root: Path, policies: dict[str, list[dict]] | None = None,
                 grants: list[dict] | None = None, **config):
        self.root = Path(root)
        # A place every user can reach (pytest's tmp dirs are 0700 root).
        self.shared = Path(tempfile.mkdtemp(prefix="agentd-daemon-test-", dir="/tmp"))
        os.chmod(self.shared, 0o777)
        self.policy_dir = self.root / "policies"
        self.policy_dir.mkdir(exist_ok=True)
        for name, patterns in (policies or {}).items():
            self.write_policy(name, patterns)
        self.socket_path = str(self.shared / "agentd.sock")
        self.audit_log = self.root / "audit" / "flight.jsonl"
        self.cgroup_base = f"agentd-test-{os.getpid()}-{os.urandom(3).hex()}"
        self.config = {"policy_dir": str(self.policy_dir), "socket_path": self.socket_path,
                       "runs_dir": str(self.root / "runs"), "cgroup_base": self.cgroup_base,
                       "require_cgroups": cgroup2_mount() is not None,
                       "audit": {"path": str(self.audit_log), "fsync": "never"},
                       "grants": grants or [], **config}
        self.config_path = self.root / "agentd.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.process: subprocess.Popen | None = None
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify_path = str(self.root / "notify.sock")
        self.notify.bind(self.notify_path)
        self.notifications: list[str] = []

    @property
    def cgroup_dir(self) -> Path:
        return Path(cgroup2_mount() or "/nonexistent") / self.cgroup_base

    def write_policy(self, name: str, patterns: list[dict], default_action: str = "allow") -> Path:
        path = self.policy_dir / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, "default_action": default_action,
                                        "patterns": patterns}, sort_keys=False))
        return path

    def start(self, extra_env: dict | None = None) -> "DaemonUnderTest":
        env = dict(os.environ, NOTIFY_SOCKET=self.notify_path, **(extra_env or {}))
        env.pop("AGENTD_SOCKET", None)
        self.log = open(self.root / "daemon.log", "ab")
        self.process = subprocess.Popen([AGENTD, "daemon", "--config", str(self.config_path)],
                                        stdin=subprocess.DEVNULL, stdout=self.log,
                                        stderr=subprocess.STDOUT, env=env)
        self.wait_notification("READY=1", 30)
        return self

    def wait_notification(self, prefix: str, timeout: float = 10.0) -> str:
        for seen in self.notifications:
            if seen.startswith(prefix):
                return seen
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {prefix!r} from the daemon; log:\n{self.log_text()}")
            self.notify.settimeout(left)
            try:
                message = self.notify.recv(4096).decode()
            except socket.timeout:
                continue
            self.notifications.append(message)
            if message.startswith(prefix):
                return message

    def log_text(self) -> str:
        try:
            return (self.root / "daemon.log").read_text(errors="replace")
        except OSError:
            return ""

    def env(self, **more) -> dict:
        return dict(os.environ, AGENTD_SOCKET=self.socket_path, **more)

    def argv(self, command: list[str], policy: str, user: str | None = None,
             options: tuple = ()) -> list[str]:
        argv = [AGENTD, "run", "--policy", policy, *options, "--", *command]
        if user is not None:
            argv = ["setpriv", "--reuid", user, "--regid", user if user != "nobody" else "nogroup",
                    "--clear-groups", *argv]
        return argv

    def run(self, command: list[str], policy: str = "test", user: str | None = None,
            options: tuple = (), timeout: float = 60, cwd: Path | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(command, policy, user, options), cwd=cwd or self.shared,
                              env=self.env(), capture_output=True, text=True, timeout=timeout,
                              input=input)

    def popen(self, command: list[str], policy: str = "test", user: str | None = None,
              **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.argv(command, policy, user), cwd=self.shared,
                                env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, **kwargs)

    def request(self, op: str, raw: bytes | None = None, **fields) -> dict:
        from agentd.daemon import client as daemon_client
        return daemon_client.request(op, path=self.socket_path, **fields)

    def runs(self) -> list[dict]:
        return self.request("ps")["runs"]

    def wait_run(self, predicate=lambda run: True, timeout: float = 20.0) -> dict:
        return wait_for(lambda: next((r for r in self.runs() if predicate(r)), None), timeout,
                        "a daemon run")

    def records(self) -> list[dict]:
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line]

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.notify.close()
        self.log.close()
        subprocess.run(["rm", "-rf", str(self.shared)], check=False)
        if self.cgroup_dir.exists():
            for child in self.cgroup_dir.iterdir():
                if child.is_dir():
                    try:
                        (child / "cgroup.kill").write_text("1")
                        child.rmdir()
                    except OSError:
                        pass
            try:
                self.cgroup_dir.rmdir()
            except OSError:
                pass
