"""The TOCTOU defence (supervisor/agentd/trace/pinning.py): the sealed scratch region and the pinning.

Real programs under the real ``agentd run``: the region exists at its fixed address in every
program after exec (also in forked children and threads), it is read-only and sealed (every way
of changing or writing it from inside fails), a pinned open really reads from the copy (the
register the kernel read points into the region afterwards) and opens the checked file, and the
bench switch turns the defence off. The races themselves are tests/escapes (-k toctou).
"""

from __future__ import annotations

import errno

import pytest

from helpers.agentd_run import PYTHON, needs_tracing, run_agentd, write_policy
from helpers.cbuild import build_c_helper

from agentd.trace import pinning as S
from agentd.trace.syscall_table import TABLE

pytestmark = [needs_tracing, pytest.mark.needs_ptrace]


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    return build_c_helper("scratch_probe", tmp_path_factory, ("-pthread",))


@pytest.fixture
def ws(tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "a.txt").write_text("checked-content\n")
    return workspace


@pytest.fixture
def policy(tmp_path):
    return write_policy(tmp_path, [])  # allow everything: only containment refuses


def test_region_is_mapped_read_only_after_exec(probe, ws, policy):
    result = run_agentd(policy, [str(probe), "maps"], cwd=ws)
    assert result.returncode == 0, result.stderr
    start, end = result.stdout.split()[0].split("-")
    assert int(start, 16) == S.SCRATCH_BASE
    assert int(end, 16) == S.SCRATCH_BASE + S.SCRATCH_SIZE
    assert result.stdout.split()[1] == "r--p"


def test_region_in_forked_child_thread_and_after_a_second_exec(probe, ws, policy):
    result = run_agentd(policy, ["sh", "-c", f"{probe} fork; {probe} maps"], cwd=ws)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for line in lines:
        assert f"{S.SCRATCH_BASE:x}-" in line and "r--p" in line, line


def test_region_cannot_be_changed_or_written(probe, ws, policy):
    result = run_agentd(policy, [str(probe), "attack"], cwd=ws)
    assert result.returncode == 0, result.stderr
    outcome = dict(line.split("=") for line in result.stdout.split())
    # mseal: the kernel refuses every change of the mapping
    for name in ("mprotect", "pkey_mprotect", "munmap", "mremap", "madvise_dontneed",
                 "mmap_fixed"):
        assert int(outcome[name]) == errno.EPERM, (name, outcome)
    # /proc/self/mem for writing: refused by the supervisor (containment) whatever the policy
    assert int(outcome["open_proc_self_mem_rdwr"]) == errno.EACCES
    assert "pwrite_proc_self_mem" not in outcome
    assert int(outcome["process_vm_writev"]) == errno.EPERM       # baseline
    assert int(outcome["read_into"]) == errno.EFAULT              # the kernel honours PROT_READ
    denied = [r for r in result.records if r["decision"] == "deny"]
    assert any(r["target"].endswith("/mem") and "agentd:containment" in r["pattern_ids"]
               for r in denied)


def test_plain_store_faults(probe, ws, policy):
    result = run_agentd(policy, [str(probe), "store"], cwd=ws)
    assert result.returncode == 128 + 11


def test_open_reads_the_copy_and_opens_the_checked_file(probe, ws, policy):
    result = run_agentd(policy, [str(probe), "regs", "sub/../a.txt"], cwd=ws)
    assert result.returncode == 0, result.stderr
    fields = dict(item.split("=", 1) for item in result.stdout.split())
    assert fields["in_scratch"] == "1", result.stdout
    # the copy is the resolved path (an open is also pinned against symlink swaps)
    assert fields["copy"] == str(ws.resolve() / "a.txt")
    assert fields["content"] == "checked-content"
    opened = [r for r in result.records if r.get("target") == str(ws.resolve() / "a.txt")]
    assert opened and opened[0]["decision"] == "allow"


def test_bench_switch_turns_the_defence_off(probe, ws, policy):
    import os
    env = dict(os.environ, AGENTD_BENCH_NO_PINNING="1")
    result = run_agentd(policy, [str(probe), "regs", "a.txt"], cwd=ws, env=env)
    fields = dict(item.split("=", 1) for item in result.stdout.split())
    assert fields["in_scratch"] == "0" and fields["content"] == "checked-content"
    assert run_agentd(policy, [str(probe), "maps"], cwd=ws, env=env).stdout == "absent\n"


def test_every_pointer_taking_syscall_is_pinned():
    pinned = S.pinned_names()
    for name, spec in TABLE.items():
        takes_memory = any(i is not None for i in (spec.path, spec.path2, spec.how, spec.argv,
                                                   spec.addr, spec.msg))
        assert (name in pinned) == takes_memory, name
    for name in ("open", "openat", "openat2", "creat", "truncate", "unlink", "rmdir", "rename",
                 "renameat2", "link", "symlinkat", "mkdir", "mknodat", "chmod", "fchownat",
                 "setxattr", "utimensat", "execve", "execveat", "connect", "sendto", "sendmsg",
                 "bind"):
        assert name in pinned, name


SENDMMSG = """
import ctypes, socket
libc = ctypes.CDLL(None, use_errno=True)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p),
                ("controllen", ctypes.c_size_t), ("flags", ctypes.c_int)]
class mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint32)]
receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
receiver.bind(("127.0.0.1", 0))
sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sender.connect(receiver.getsockname())
buffers = [ctypes.create_string_buffer(b"hello"), ctypes.create_string_buffer(b"worldwide")]
iovecs = [iovec(ctypes.cast(b, ctypes.c_void_p), len(b.value)) for b in buffers]
messages = (mmsghdr * 2)()
for i in range(2):
    messages[i].hdr.iov = ctypes.cast(ctypes.pointer(iovecs[i]), ctypes.c_void_p)
    messages[i].hdr.iovlen = 1
sent = libc.sendmmsg(sender.fileno(), messages, 2, 0)
print(sent, messages[0].len, receiver.recv(100).decode())
"""


def test_sendmmsg_sends_one_pinned_message_and_reports_it(ws, policy):
    """sendmmsg is pinned one message per call (the kernel writes msg_len back, which a
    read-only copy cannot take): the count is 1 and msg_len lands in the agent's array."""
    result = run_agentd(policy, [PYTHON, "-c", SENDMMSG], cwd=ws)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "5", "hello"]


def test_a_path_the_agent_puts_where_pinned_paths_go_is_still_walked(ws, tmp_path):
    """The decoder takes an open's path unwalked only when this stop's pinning resolved it
    (``Task.resolved_open``), never because of where the pointer points: with the defence off,
    an agent that maps memory where a pinned path would sit (slot offset 24) and opens a symlink
    from there is judged on the symlink's target."""
    import os

    (tmp_path / "secret.txt").write_text("TOP-SECRET\n")
    os.symlink(tmp_path / "secret.txt", ws / "innocent")
    policy = write_policy(tmp_path, [{"id": "no_secret", "action_type": "file_read",
                                      "pattern": r".*/secret\.txt$", "action": "deny"}],
                          name="deny_secret")
    code = f"""
import ctypes, mmap
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
base = libc.mmap({S.SCRATCH_BASE}, 4096, mmap.PROT_READ | mmap.PROT_WRITE,
                 mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x100000, -1, 0)  # MAP_FIXED_NOREPLACE
assert base == {S.SCRATCH_BASE}, hex(base or 0)
path = {str(ws / "innocent")!r}.encode() + b"\\0"
ctypes.memmove(base + {S.PINNED_OPEN_PATH_OFFSET}, path, len(path))
fd = libc.syscall(257, -100, ctypes.c_void_p(base + {S.PINNED_OPEN_PATH_OFFSET}), 0, 0)
print("fd", fd, "errno", ctypes.get_errno())
"""
    env = dict(os.environ, AGENTD_BENCH_NO_PINNING="1")
    result = run_agentd(policy, [PYTHON, "-c", code], cwd=ws, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["fd", "-1", "errno", str(errno.EACCES)], result.stdout
    denied = [r for r in result.records if r["decision"] == "deny"]
    assert [r["target"] for r in denied] == [str((tmp_path / "secret.txt").resolve())]
