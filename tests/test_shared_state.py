"""What the host shares by name or by kernel default, closed after the syscall ledger's OPEN list
(issue 12): the agent's own IPC namespace (or, where it cannot have one, the IPC syscalls
refused), O_ASYNC / FIOASYNC and leases refused in the kernel, CAP_SYS_CHROOT dropped.

The filter cases run the compiled program (no kernel needed); the run cases start real agents:
as root (a namespace of its own) and as nobody with ``--network off`` (the host's namespace, the
calls refused). The escape probes are tests/escapes/test_escape_shared_state.py.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from agentd.kernel import bpf, seccomp
from agentd.kernel import consts as kc
from agentd.kernel.bpf import SeccompData
from agentd.kernel.ipc_namespace import SHARED_NAMESPACE_SYSCALLS
from agentd.kernel.syscall_numbers import SYSCALL_NUMBERS
from agentd.run.supervise import filter_spec
from agentd.trace.syscall_table import traced_syscalls
from helpers.agentd_run import AGENTD, needs_tracing

PYTHON = os.path.realpath(sys.executable)
ALLOW = kc.SECCOMP_RET_ALLOW
EPERM = kc.SECCOMP_RET_ERRNO | errno.EPERM
F_GETFL, F_SETFL, F_SETLEASE = 3, 4, 1024
F_RDLCK, F_WRLCK, F_UNLCK = 0, 1, 2
O_NONBLOCK, O_ASYNC = 0o4000, 0o20000
FIOASYNC, FIONBIO = 0x5452, 0x5421


def program(shared_ipc: bool):
    return seccomp.build_filter(filter_spec(None, traced_syscalls(), shared_ipc))


def run(prog, name: str, *args: int) -> int:
    data = SeccompData(SYSCALL_NUMBERS[name], kc.AUDIT_ARCH_X86_64,
                       tuple(args) + (0,) * (6 - len(args)))
    return bpf.run(prog, data)


@pytest.mark.parametrize("name", SHARED_NAMESPACE_SYSCALLS)
def test_ipc_syscalls_run_in_an_own_namespace_and_are_refused_in_the_hosts(name):
    assert run(program(shared_ipc=False), name) == ALLOW
    assert run(program(shared_ipc=True), name) == EPERM


@pytest.mark.parametrize("args, expected", [
    ((F_SETFL, O_ASYNC), EPERM),
    ((F_SETFL, O_ASYNC | O_NONBLOCK), EPERM),
    ((F_SETFL, O_NONBLOCK), ALLOW),
    ((F_SETFL, 0), ALLOW),
    ((F_GETFL, O_ASYNC), ALLOW),            # the bit means nothing to another command
    ((F_SETLEASE, F_RDLCK), EPERM),
    ((F_SETLEASE, F_WRLCK), EPERM),
    ((F_SETLEASE, F_UNLCK), ALLOW),         # dropping a lease stays possible
    ((F_SETLEASE, (1 << 32) | F_UNLCK), ALLOW),  # the kernel reads an int: F_UNLCK
], ids=str)
def test_fcntl_o_async_and_leases_are_refused_in_the_kernel(args, expected):
    assert run(program(False), "fcntl", 3, *args) == expected


def test_fioasync_is_refused_and_fionbio_is_not():
    prog = program(False)
    assert run(prog, "ioctl", 0, FIOASYNC) == EPERM
    assert run(prog, "ioctl", 0, FIONBIO) == ALLOW


# --- real runs ---------------------------------------------------------------------------------

PROBE = r"""
import ctypes, fcntl, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
def err():
    return os.strerror(ctypes.get_errno())
shmid = libc.shmget(0, 4096, 0o1000 | 0o600)
print("shmget", "ok" if shmid >= 0 else err())
if shmid >= 0:
    libc.shmctl(shmid, 0, None)
print("ipc", os.readlink("/proc/self/ns/ipc"))
fd = os.open(sys.argv[1], os.O_RDONLY)
for what, call in (("async", lambda: fcntl.fcntl(fd, fcntl.F_SETFL, os.O_ASYNC)),
                   ("nonblock", lambda: fcntl.fcntl(fd, fcntl.F_SETFL, os.O_NONBLOCK)),
                   ("lease", lambda: fcntl.fcntl(fd, 1024, fcntl.F_RDLCK))):
    try:
        call()
        print(what, "ok")
    except OSError as exc:
        print(what, os.strerror(exc.errno))
try:
    os.chroot(os.getcwd())
    print("chroot ok")
except OSError as exc:
    print("chroot", os.strerror(exc.errno))
"""


def _lines(stdout: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in stdout.splitlines() if " " in line)


@needs_tracing
@pytest.mark.needs_ptrace
@pytest.mark.skipif(os.geteuid() != 0, reason="a root agent: its own IPC namespace")
def test_a_root_agent_has_its_own_ipc_namespace_and_no_async_lease_or_chroot(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    done = subprocess.run([AGENTD, "run", "--embedded", "--network", "off", "--policy",
                           "permissive", "--audit-log", str(tmp_path / "audit.jsonl"), "--",
                           PYTHON, "-c", PROBE, str(target)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = _lines(done.stdout)
    assert seen["shmget"] == "ok"
    assert seen["ipc"] != os.readlink("/proc/self/ns/ipc")
    assert seen["async"] == os.strerror(errno.EPERM)
    assert seen["nonblock"] == "ok"
    assert seen["lease"] == os.strerror(errno.EPERM)
    assert seen["chroot"] == os.strerror(errno.EPERM)  # the kernel's answer: no CAP_SYS_CHROOT


@needs_tracing
@pytest.mark.needs_ptrace
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to start an agent as nobody")
def test_an_ordinary_users_agent_without_the_plane_gets_no_ipc(tmp_path):
    shared = Path(tempfile.mkdtemp(prefix="agentd-ipc-", dir="/tmp"))
    os.chmod(shared, 0o777)
    try:
        (shared / "file").write_text("x")
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "env",
                f"HOME={shared}", f"AGENTD_RUNS_DIR={shared}/runs", AGENTD, "run",
                "--embedded", "--network", "off", "--policy", "permissive", "--workspace",
                str(shared), "--audit-log", f"{shared}/audit.jsonl", "--", PYTHON, "-c", PROBE,
                str(shared / "file")]
        done = subprocess.run(argv, cwd=shared, capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    seen = _lines(done.stdout)
    assert seen["shmget"] == os.strerror(errno.EPERM)
    assert seen["ipc"] == os.readlink("/proc/self/ns/ipc")  # the host's: nothing made
    assert seen["async"] == os.strerror(errno.EPERM)
    assert seen["nonblock"] == "ok"
