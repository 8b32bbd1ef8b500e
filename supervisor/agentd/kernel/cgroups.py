"""cgroup v2 for the daemon: one cgroup per agent under the daemon's own delegated subtree.

Owns finding the cgroup v2 hierarchy (from ``/proc/self/mountinfo``: ``/sys/fs/cgroup`` on a
unified host, ``/sys/fs/cgroup/unified`` on a hybrid one) and the daemon's place in it (the
``0::`` line of ``/proc/self/cgroup``); under systemd with ``Delegate=yes`` that place is
``/system.slice/agentd.service`` and the subtree is ours. Each run gets ``run-<id>``: the agent
joins it before exec (its supervisor stays outside, so killing the cgroup never kills the one
who records). Only core cgroup files are used — ``cgroup.procs``, ``cgroup.freeze``,
``cgroup.events``, ``cgroup.kill`` (Linux 5.14) — so no controller needs enabling and the
"no internal processes" rule never bites.
"""

from __future__ import annotations

import errno
import os
import select
import time
from dataclasses import dataclass

__all__ = ["CgroupError", "find_unified_mount", "own_cgroup", "CgroupTree", "RunCgroup"]


class CgroupError(OSError):
    """cgroup v2 is missing or not writable here; the message says what and where."""


def find_unified_mount(mountinfo: str = "/proc/self/mountinfo") -> str:
    """The mount point of the cgroup2 filesystem (the first one listed)."""
    try:
        with open(mountinfo, encoding="utf-8") as handle:
            for line in handle:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4].replace("\\040", " ")
    except OSError as exc:
        raise CgroupError(exc.errno or errno.ENOENT, f"cannot read {mountinfo}: {exc}") from None
    raise CgroupError(
        errno.ENOENT,
        "no cgroup2 filesystem is mounted (cgroup v2 is needed to "
        "freeze and kill whole agents; boot with systemd.unified_cgroup_hierarchy=1 "
        "or mount -t cgroup2 none /sys/fs/cgroup/unified)",
    )


def own_cgroup(pid: int | str = "self") -> str:
    """This process's cgroup v2 path (``/system.slice/agentd.service``), from the ``0::`` line."""
    with open(f"/proc/{pid}/cgroup", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("0::"):
                return line[3:].strip()
    raise CgroupError(errno.ENOENT, "/proc/self/cgroup has no cgroup v2 (0::) entry")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


@dataclass
class RunCgroup:
    """One agent's cgroup."""

    path: str

    def join_path(self) -> str:
        """What the agent's child writes its pid to (before exec, while still root)."""
        return os.path.join(self.path, "cgroup.procs")

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in _read(os.path.join(self.path, "cgroup.procs")).split()]
        except FileNotFoundError:
            return []

    def events(self) -> dict[str, str]:
        try:
            return dict(
                line.split(" ", 1)
                for line in _read(os.path.join(self.path, "cgroup.events")).split("\n")
                if " " in line
            )
        except FileNotFoundError:
            return {}

    @property
    def frozen(self) -> bool:
        return self.events().get("frozen") == "1"

    def freeze(self, wait: float = 0.0) -> bool:
        """Freeze every process of the agent; with ``wait``, block (on cgroup.events, no
        polling) until the kernel says frozen or the time is up. True when frozen."""
        _write(os.path.join(self.path, "cgroup.freeze"), "1")
        return self._wait_event("frozen", "1", wait) if wait else self.frozen

    def thaw(self) -> None:
        _write(os.path.join(self.path, "cgroup.freeze"), "0")

    def kill(self) -> None:
        """SIGKILL every process in the cgroup, frozen or not, including ones forked meanwhile."""
        try:
            _write(os.path.join(self.path, "cgroup.kill"), "1")
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: pre-5.14 kernel; fall back to signals
                raise
            for pid in self.pids():
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass

    def remove(self, wait: float = 2.0) -> bool:
        """rmdir once empty (waits for ``populated 0`` up to ``wait`` seconds)."""
        self._wait_event("populated", "0", wait)
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True

    def _wait_event(self, key: str, value: str, timeout: float) -> bool:
        # cgroup.events raises POLLPRI when it changes: wait on that, not a sleep loop.
        path = os.path.join(self.path, "cgroup.events")
        deadline = time.monotonic() + timeout
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return value == "0"
        try:
            poller = select.poll()
            poller.register(fd, select.POLLPRI | select.POLLERR)
            while True:
                os.lseek(fd, 0, os.SEEK_SET)
                text = os.read(fd, 4096).decode()
                if f"{key} {value}" in text.split("\n"):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                poller.poll(left * 1000)
        finally:
            os.close(fd)


class CgroupTree:
    """The daemon's delegated subtree: ``<base>/daemon`` (the daemon itself, when the subtree
    is its own) and ``<base>/run-<id>`` per agent."""

    def __init__(self, base: str | None = None):
        mount = find_unified_mount()
        if base is None and own_cgroup() != "/":
            base = os.path.join(mount, own_cgroup().lstrip("/"))
            self.owns_base = True
        elif base is None:
            # Started by hand in the root cgroup: never spread over the root, use <mount>/agentd.
            base = os.path.join(mount, "agentd")
            self.owns_base = False
        else:
            base = base if base.startswith(mount) else os.path.join(mount, base.lstrip("/"))
            self.owns_base = False
        self.mount = mount
        self.base = base.rstrip("/")
        try:
            os.makedirs(self.base, exist_ok=True)
            probe = os.path.join(self.base, f"agentd-probe-{os.getpid()}")
            os.mkdir(probe)
            os.rmdir(probe)
        except OSError as exc:
            raise CgroupError(
                exc.errno or errno.EACCES,
                f"cannot create cgroups under "
                f"{self.base}: {exc.strerror} (under systemd the unit needs "
                "Delegate=yes; by hand, run as root)",
            ) from None
        if not os.path.exists(os.path.join(self.base, "cgroup.freeze")) and self.base != mount:
            raise CgroupError(
                errno.ENOTSUP,
                f"{self.base} has no cgroup.freeze (Linux 5.2+ is needed to freeze agents)",
            )

    def settle_daemon(self) -> None:
        """Move the daemon into ``<base>/daemon`` so that the subtree's root holds no process
        (systemd's delegation rules; also keeps the daemon out of any run's cgroup)."""
        if not self.owns_base:
            return
        leaf = os.path.join(self.base, "daemon")
        os.makedirs(leaf, exist_ok=True)
        _write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))

    def create_run(self, run_id: str) -> RunCgroup:
        path = os.path.join(self.base, f"run-{run_id}")
        os.mkdir(path, 0o755)
        return RunCgroup(path)

    def remove(self) -> None:
        """The subtree when it was made for us (not our own systemd cgroup)."""
        if self.owns_base:
            return
        try:
            for name in os.listdir(self.base):
                full = os.path.join(self.base, name)
                if os.path.isdir(full) and name.startswith("run-"):
                    RunCgroup(full).kill()
                    RunCgroup(full).remove()
            os.rmdir(self.base)
        except OSError:
            pass
