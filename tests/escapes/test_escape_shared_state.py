"""State the host shares with the agent by name or by kernel default, found by the syscall ledger
(docs/syscalls.md, issue 12): no path for a policy to judge, yet a change outside the agent.

1. System V IPC: ids are global in an IPC namespace; the agent removes a segment the test made
   by its id alone (``shmctl(IPC_RMID)``).
2. POSIX message queues: names are global in an IPC namespace; the agent unlinks the test's.
3. A file lease (``F_SETLEASE``) on a file the agent may read: an outside writer is held up
   (its non-blocking open fails with EWOULDBLOCK while the lease stands).
4. ``chroot``: after it the agent's absolute paths name other files than the tracer judges:
   ``/secret`` under a chroot into ``victim/`` is the protected marker.
5. ``O_ASYNC`` on a terminal: the kernel aims SIGIO at the terminal's foreground process group
   (a sibling here), which dies of it when input arrives.

Each probe is judged as in ``escape_harness``: the deed happens without agentd (else the probe
proves nothing) and is seen from outside (the segment, the queue, the writer's open, the arena's
snapshot, the sibling's life).
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import subprocess
import time

import pytest

from escape_harness import PYTHON, Probe, judge

probe = pytest.mark.escape_probe

_libc = ctypes.CDLL(None, use_errno=True)
_libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
_libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
_libc.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
_libc.mq_close.argtypes = [ctypes.c_int]
_libc.mq_unlink.argtypes = [ctypes.c_char_p]
IPC_PRIVATE, IPC_CREAT, IPC_RMID, IPC_STAT = 0, 0o1000, 0, 2


def _python(code: str, *args: str):
    return lambda lay: [PYTHON, "-c", code, *(lay.fmt(a) for a in args)]


# --- 1. System V shared memory -------------------------------------------------------------------

def _make_segment(lay):
    shmid = _libc.shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0o600)
    if shmid < 0:
        raise OSError(ctypes.get_errno(), "shmget")
    lay.extra["shmid"] = shmid


def _segment_gone(result):
    stat = ctypes.create_string_buffer(256)  # struct shmid_ds is 112 bytes on x86_64
    if _libc.shmctl(result.layout.extra["shmid"], IPC_STAT, stat) < 0:
        return f"the test's shared memory segment is gone ({os.strerror(ctypes.get_errno())})"
    return None


def _remove_segment(lay):
    _libc.shmctl(lay.extra.get("shmid", -1), IPC_RMID, None)


REMOVE_SEGMENT = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
r = libc.shmctl(int(sys.argv[1]), 0, None)  # IPC_RMID
print("shmctl(IPC_RMID):", r, ctypes.get_errno())
"""


@probe
def test_remove_a_system_v_segment_of_the_host_by_id(arena):
    judge(arena, Probe("shared-sysv-rmid", _python(REMOVE_SEGMENT, "{shmid}"),
                       setup=_make_segment, deed=_segment_gone, cleanup=_remove_segment))


# --- 2. POSIX message queues ---------------------------------------------------------------------

def _make_queue(lay):
    name = f"/agentd-escape-{secrets.token_hex(6)}"
    mqd = _libc.mq_open(name.encode(), os.O_CREAT | os.O_RDWR, 0o600, None)
    if mqd < 0:
        raise OSError(ctypes.get_errno(), f"mq_open {name}")
    _libc.mq_close(mqd)
    lay.extra["queue"] = name


def _queue_gone(result):
    name = result.layout.extra["queue"]
    mqd = _libc.mq_open(name.encode(), os.O_RDWR, 0, None)
    if mqd < 0:
        return f"the test's message queue {name} is gone ({os.strerror(ctypes.get_errno())})"
    _libc.mq_close(mqd)
    return None


def _remove_queue(lay):
    if "queue" in lay.extra:
        _libc.mq_unlink(lay.extra["queue"].encode())


UNLINK_QUEUE = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mq_unlink.argtypes = [ctypes.c_char_p]
print("mq_unlink:", libc.mq_unlink(sys.argv[1].encode()), ctypes.get_errno())
"""


@probe
def test_unlink_a_message_queue_of_the_host(arena):
    judge(arena, Probe("shared-mq-unlink", _python(UNLINK_QUEUE, "{queue}"),
                       setup=_make_queue, deed=_queue_gone, cleanup=_remove_queue))


# --- 3. a lease on a file outside ----------------------------------------------------------------

TAKE_LEASE = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    fcntl.fcntl(fd, 1024, fcntl.F_RDLCK)  # F_SETLEASE
    print("lease taken", flush=True)
except OSError as exc:
    print("lease refused:", exc, flush=True)
time.sleep(3)
"""


def _outside_writer(lay, finished):
    """Opens keep/file.txt for writing, non-blocking, while the agent runs: a lease makes the
    open fail with EWOULDBLOCK (and starts breaking the lease)."""
    target = lay.keep / "file.txt"
    while not finished.is_set():
        try:
            os.close(os.open(target, os.O_WRONLY | os.O_NONBLOCK))
        except OSError as exc:
            if exc.errno == errno.EWOULDBLOCK:
                lay.extra["held_up"] = True
                return
        time.sleep(0.05)


def _writer_held_up(result):
    if result.layout.extra.get("held_up"):
        return "an outside writer's open of keep/file.txt was held up by the agent's lease"
    return None


@probe
def test_lease_on_a_file_outside_holds_up_its_writers(arena):
    judge(arena, Probe("shared-lease", _python(TAKE_LEASE, "{keep}/file.txt"),
                       during=_outside_writer, deed=_writer_held_up))


# --- 4. chroot ------------------------------------------------------------------------------------

CHROOT_READ = """
import os, sys
os.chroot(sys.argv[1])
with open("/secret") as secret:  # the tracer is asked about /secret of the host's root
    print(secret.read())
"""


@probe
def test_chroot_makes_a_path_name_a_protected_file(arena):
    judge(arena, Probe("shared-chroot", _python(CHROOT_READ, "{victim}")))


# --- 5. O_ASYNC on a terminal ---------------------------------------------------------------------

SESSION_LEADER = """
import os, sys, time
os.setsid()
fd = os.open(sys.argv[1], os.O_RDWR)  # a session leader's first terminal: its controlling one
print("ready", flush=True)
time.sleep(600)
"""

ASYNC_TERMINAL = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_NOCTTY)
try:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
    print("O_ASYNC set", flush=True)
except OSError as exc:
    print("O_ASYNC refused:", exc, flush=True)
time.sleep(2)
"""


def _terminal_with_a_foreground_sibling(lay):
    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    sibling = subprocess.Popen([PYTHON, "-c", SESSION_LEADER, name], stdout=subprocess.PIPE)
    assert sibling.stdout.readline() == b"ready\n"
    lay.extra.update(tty=name, master=master, sibling=sibling)


def _type_into_the_terminal(lay, finished):
    while not finished.is_set():
        try:
            os.write(lay.extra["master"], b"x\n")
        except OSError:
            return
        time.sleep(0.1)


def _sibling_killed(result):
    sibling = result.layout.extra["sibling"]
    try:
        status = sibling.wait(timeout=1)
    except subprocess.TimeoutExpired:
        return None
    return f"the terminal's foreground process (a sibling) died: status {status}"


def _close_terminal(lay):
    sibling = lay.extra.get("sibling")
    if sibling is not None and sibling.poll() is None:
        sibling.kill()
        sibling.wait()
    if "master" in lay.extra:
        os.close(lay.extra["master"])


@probe
def test_o_async_on_a_terminal_signals_its_foreground_group(arena):
    judge(arena, Probe("shared-o-async-tty", _python(ASYNC_TERMINAL, "{tty}"),
                       setup=_terminal_with_a_foreground_sibling, during=_type_into_the_terminal,
                       deed=_sibling_killed, cleanup=_close_terminal))


# --- what the agent does with its own IPC stays allowed --------------------------------------------
# (System V only: an embedded run's Landlock rules refuse mq_open (EACCES) of any queue, the
# agent's own included, as they do any file outside their hierarchies; docs/security.md.)

OWN_IPC = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmat.restype = ctypes.c_void_p
libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
shmid = libc.shmget(0, 4096, 0o1000 | 0o600)
assert shmid >= 0, os.strerror(ctypes.get_errno())
address = libc.shmat(shmid, None, 0)
assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
ctypes.memmove(address, b"mine", 4)
assert ctypes.string_at(address, 4) == b"mine"
assert libc.shmctl(shmid, 0, None) == 0, os.strerror(ctypes.get_errno())
print("own ipc ok")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="an ordinary user's run without the plane "
                    "shares the host's IPC namespace, where the filter refuses these calls")
def test_own_shared_memory_works(arena):
    lay = arena.layout("own-ipc")
    lay.sandboxed = True
    result = arena.run(lay, [PYTHON, "-c", OWN_IPC])
    assert "own ipc ok" in result.stdout, result.tail()
