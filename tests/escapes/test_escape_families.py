"""The four families of issue 12: ways an agent whose policy forbids writing outside its
workspace could still change the machine outside it.

1. ioctls that change a file through a descriptor opened for reading (chattr +i / +a with
   FS_IOC_SETFLAGS, FS_IOC_FSSETXATTR, FS_IOC_SETVERSION) on a write-protected file;
2. device nodes made inside the workspace (a character device naming a terminal the test holds,
   written through; a block device node);
3. syscalls aimed at a process outside the agent tree other than signals (prlimit64,
   setpriority, sched_setaffinity, sched_setscheduler, ioprio_set, fcntl(F_SETOWN) + O_ASYNC,
   whose SIGIO kills the target);
4. files the kernel writes for the agent (a core dump in a write-protected cwd).

Each probe is one mode of probes/families.c, judged from outside: the file's inode flags or
generation, the terminal's master end, the sibling's limits, nice value, affinity, scheduling
class and I/O priority, its life, the arena's snapshot. The last tests check that what the
agent does to its own tree still works under the same policy.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct

import pytest

from escape_harness import Probe, judge, sibling_harmed, start_sibling, stop_sibling

probe = pytest.mark.escape_probe  # the own-tree checks at the end are not probes

FS_IOC_GETFLAGS, FS_IOC_SETFLAGS = 0x80086601, 0x40086602
FS_IOC_GETVERSION = 0x80087601
FS_IMMUTABLE_FL, FS_APPEND_FL = 0x10, 0x20
SYS_IOPRIO_GET = 252
IOPRIO_IDLE = 3 << 13


def _families(probe_bin, *args):
    return lambda lay: [str(probe_bin / "families"), *(lay.fmt(str(a)) for a in args)]


# --- 1. ioctls that change a file ------------------------------------------------------------

def _ioctl_long(path, request, value=None) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        if value is None:
            return struct.unpack("l", fcntl.ioctl(fd, request, b"\0" * 8))[0]
        fcntl.ioctl(fd, request, struct.pack("l", value))
        return value
    finally:
        os.close(fd)


def _remember_flags(lay):
    target = lay.keep / "file.txt"
    lay.extra["flags"] = _ioctl_long(target, FS_IOC_GETFLAGS)
    lay.extra["version"] = _ioctl_long(target, FS_IOC_GETVERSION)


def _clear_flags(lay):
    """An immutable file would outlive the test (its tmp dir could not be removed)."""
    for target in (lay.keep / "file.txt", lay.ws / "allowed.txt"):
        try:
            flags = _ioctl_long(target, FS_IOC_GETFLAGS)
            _ioctl_long(target, FS_IOC_SETFLAGS, flags & ~(FS_IMMUTABLE_FL | FS_APPEND_FL))
        except OSError:
            pass


def _flags_changed(result):
    lay = result.layout
    now = _ioctl_long(lay.keep / "file.txt", FS_IOC_GETFLAGS)
    if now != lay.extra["flags"]:
        return f"keep/file.txt's inode flags changed: {lay.extra['flags']:#x} -> {now:#x}"
    return None


def _version_changed(result):
    lay = result.layout
    now = _ioctl_long(lay.keep / "file.txt", FS_IOC_GETVERSION)
    if now != lay.extra["version"]:
        return f"keep/file.txt's generation changed: {lay.extra['version']} -> {now}"
    return None


@probe
@pytest.mark.parametrize("flag", [FS_IMMUTABLE_FL, FS_APPEND_FL], ids=["immutable", "append"])
def test_chattr_through_a_read_only_descriptor(arena, probe_bin, flag):
    judge(arena, Probe(f"families-setflags-{flag:#x}",
                       _families(probe_bin, "setflags", "{keep}/file.txt", f"{flag:x}"),
                       setup=_remember_flags, deed=_flags_changed, cleanup=_clear_flags))


@probe
def test_fssetxattr_through_a_read_only_descriptor(arena, probe_bin):
    judge(arena, Probe("families-fssetxattr",
                       _families(probe_bin, "fssetxattr", "{keep}/file.txt"),
                       setup=_remember_flags, deed=_flags_changed, cleanup=_clear_flags))


@probe
def test_setversion_through_a_read_only_descriptor(arena, probe_bin):
    judge(arena, Probe("families-setversion",
                       _families(probe_bin, "setversion", "{keep}/file.txt", 424242),
                       setup=_remember_flags, deed=_version_changed))


# --- 2. device nodes made inside the workspace -------------------------------------------------

def _open_terminal(lay):
    master, slave = os.openpty()
    os.set_blocking(master, False)
    rdev = os.fstat(slave).st_rdev
    lay.extra.update(master=master, slave=slave, tty_major=os.major(rdev),
                     tty_minor=os.minor(rdev))


def _close_terminal(lay):
    for key in ("master", "slave"):
        if key in lay.extra:
            os.close(lay.extra.pop(key))


def _terminal_written(result):
    try:
        data = os.read(result.layout.extra["master"], 4096)
    except BlockingIOError:
        return None
    if b"THROUGH-A-NODE" in data:
        return f"the test's terminal received {data!r} through a device node in the workspace"
    return None


@probe
def test_character_device_node_in_the_workspace(arena, probe_bin):
    judge(arena, Probe("families-mknod-char",
                       _families(probe_bin, "mknod-write", "{ws}/tty", "{tty_major}",
                                 "{tty_minor}", "THROUGH-A-NODE\n"),
                       setup=_open_terminal, cleanup=_close_terminal, deed=_terminal_written,
                       watch=("tty",)))


@probe
def test_block_device_node_in_the_workspace(arena, probe_bin):
    """loop0's numbers (7, 0): the node is the deed (a second name for a disk)."""
    judge(arena, Probe("families-mknod-block",
                       _families(probe_bin, "mknod-block", "{ws}/blk", 7, 0), watch=("blk",)))


# --- 3. another process's limits, scheduling, I/O priority, SIGIO -------------------------------

def _sibling_with_state(lay):
    start_sibling(lay)
    pid = lay.extra["sibling_pid"]
    lay.extra["affinity"] = os.sched_getaffinity(pid)


def _sibling_changed(what):
    def deed(result):
        lay = result.layout
        pid = lay.extra["sibling_pid"]
        harmed = sibling_harmed(result)
        if harmed:
            return harmed
        if what == "prlimit":
            limits = open(f"/proc/{pid}/limits").read()
            line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
            return f"the sibling's limit changed: {line}" if line.split()[3] == "17" else None
        if what == "renice":
            nice = os.getpriority(os.PRIO_PROCESS, pid)
            return f"the sibling was reniced to {nice}" if nice == 19 else None
        if what == "affinity":
            now = os.sched_getaffinity(pid)
            return f"the sibling's affinity changed to {now}" if now != lay.extra["affinity"] \
                else None
        if what == "scheduler":
            policy = os.sched_getscheduler(pid)
            return "the sibling was moved to SCHED_IDLE" if policy == os.SCHED_IDLE else None
        if what == "ioprio":
            libc = ctypes.CDLL(None, use_errno=True)
            prio = libc.syscall(SYS_IOPRIO_GET, 1, pid)
            return f"the sibling's I/O priority became {prio:#x}" if prio == IOPRIO_IDLE \
                else None
        return None
    return deed


def _single_cpu(result):
    if len(os.sched_getaffinity(0)) < 2:
        return "one CPU only: an affinity change cannot be seen"
    return None


@probe
@pytest.mark.parametrize("mode", ["prlimit", "renice", "affinity", "scheduler", "ioprio",
                                  "setown"])
def test_change_a_process_outside_the_tree(arena, probe_bin, mode):
    judge(arena, Probe(f"families-{mode}-sibling",
                       _families(probe_bin, mode, "{sibling_pid}"),
                       setup=_sibling_with_state, cleanup=stop_sibling,
                       deed=_sibling_changed(mode),
                       host_lacks=_single_cpu if mode == "affinity" else None))


# --- 4. files the kernel writes for the agent ---------------------------------------------------

def _core_pattern_lacks(result):
    pattern = open("/proc/sys/kernel/core_pattern").read().strip()
    if pattern.startswith("|") or "/" in pattern:
        return f"core_pattern is {pattern!r}: dumps do not land in the cwd on this host"
    return None


@probe
def test_core_dump_in_a_protected_cwd(arena, probe_bin):
    judge(arena, Probe("families-core-dump", _families(probe_bin, "core", "{keep}"),
                       host_lacks=_core_pattern_lacks))


# --- what the agent does to its own tree stays allowed -----------------------------------------

def _sandboxed(arena, label):
    lay = arena.layout(label)
    lay.sandboxed = True
    return lay


@pytest.mark.parametrize("flag", [FS_IMMUTABLE_FL, FS_APPEND_FL], ids=["immutable", "append"])
def test_chattr_of_a_workspace_file_is_allowed(arena, probe_bin, flag):
    lay = _sandboxed(arena, "own-chattr")
    try:
        result = arena.run(lay, _families(probe_bin, "setflags", "{ws}/allowed.txt",
                                          f"{flag:x}")(lay))
        assert "done: FS_IOC_SETFLAGS" in result.stdout, result.tail()
        assert _ioctl_long(lay.ws / "allowed.txt", FS_IOC_GETFLAGS) & flag
    finally:
        _clear_flags(lay)


def test_own_tree_limits_priority_affinity_and_owner(arena, probe_bin):
    lay = _sandboxed(arena, "own-tree")
    result = arena.run(lay, _families(probe_bin, "own-tree")(lay))
    assert "own-tree ok" in result.stdout, result.tail()


def test_fifo_in_the_workspace_is_allowed(arena):
    lay = _sandboxed(arena, "own-fifo")
    result = arena.run(lay, ["sh", "-c", "mkfifo pipe && echo made"])
    assert "made" in result.stdout, result.tail()
    assert os.path.exists(lay.ws / "pipe")
