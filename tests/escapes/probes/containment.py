"""Containment probes: what no policy may allow, because it would undo the supervision itself.

Usage: python3 containment.py MODE TARGET. Run under a policy that allows everything
(policies/allow_all.yaml), so only agentd's containment rules stand in the way.

  audit_append / audit_truncate / audit_unlink / audit_rename / audit_chmod  TARGET = audit log
  audit_symlink_write     a workspace symlink to the log, written through
  audit_hardlink_write    a hard link to the log in the workspace, written through
  audit_proc_fd_write     the log through /proc/<ancestor>/fd/N (its writer holds it open: the
                          parent, or under the daemon the daemon above the run's supervisor)
  proc_mem_write          TARGET = a pid outside the tree: write its memory via /proc/PID/mem
Exit status: 0 when the deed went through, 1 when it was refused.
"""

import os
import sys

MODE, TARGET = sys.argv[1], sys.argv[2]
JUNK = b'{"seq": 0, "TAMPERED": true}\n'


def append(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.write(fd, JUNK)
    os.close(fd)


def parent_of(pid: int) -> int:
    stat = open(f"/proc/{pid}/stat").read()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def proc_fd_write() -> None:
    real = os.path.realpath(TARGET)
    holder = os.getppid()
    while holder > 1:                   # the nearest ancestor holding the log
        try:
            names = os.listdir(f"/proc/{holder}/fd")
        except OSError:
            names = []
        for name in names:
            link = f"/proc/{holder}/fd/{name}"
            try:
                if os.readlink(link) == real:
                    append(link)
                    return
            except OSError:
                continue
        holder = parent_of(holder)
    raise OSError(2, f"no ancestor holds a descriptor of {real}")


def env_start(pid: int) -> int:
    stat = open(f"/proc/{pid}/stat").read()
    return int(stat[stat.rindex(")") + 2:].split()[47])     # field 50


def proc_mem_write() -> None:
    pid = int(TARGET)
    fd = os.open(f"/proc/{pid}/mem", os.O_RDWR)
    os.pwrite(fd, b"PWNED=1", env_start(pid))


MODES = {
    "audit_append": lambda: append(TARGET),
    "audit_truncate": lambda: os.truncate(TARGET, 0),
    "audit_unlink": lambda: os.unlink(TARGET),
    "audit_rename": lambda: os.rename(TARGET, os.path.join(os.getcwd(), "log.jsonl")),
    "audit_chmod": lambda: os.chmod(TARGET, 0o666),
    "audit_symlink_write": lambda: (os.symlink(TARGET, "log-link"), append("log-link")),
    "audit_hardlink_write": lambda: (os.link(TARGET, "log-hl"), append("log-hl")),
    "audit_proc_fd_write": proc_fd_write,
    "proc_mem_write": proc_mem_write,
}

try:
    MODES[MODE]()
except OSError as exc:
    print(f"refused: {exc}", file=sys.stderr)
    sys.exit(1)
print("went through")
