"""The syscall table and its decoders: names, coverage, and decoded actions.

Decoders read the "tracee's" memory with process_vm_readv; here the tracee is this process, so
arguments are real pointers into ctypes buffers and the decoded targets are checked exactly.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct

import pytest

from agent_os.action_types import ACTION_TYPES
from agentd.kernel import seccomp
from agentd.trace.decode import DecodeError, decode_syscall, format_sockaddr
from agentd.kernel.syscall_numbers import SYSCALL_NUMBERS
from agentd.trace.syscall_table import (AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW, O_APPEND, O_CREAT,
                                  O_NOFOLLOW, O_RDWR, O_TRUNC, O_WRONLY, TABLE, traced_syscalls)

AT_FDCWD = -100 & 0xFFFFFFFFFFFFFFFF
PID = os.getpid()

# The list in issue 3, plus the doors the escape suite (issue 4) names.
REQUIRED = {
    "open", "openat", "openat2", "creat", "truncate", "unlink", "unlinkat", "rmdir", "rename",
    "renameat", "renameat2", "link", "linkat", "symlink", "symlinkat", "mkdir", "mkdirat",
    "mknod", "mknodat", "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown",
    "fchownat", "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr",
    "fremovexattr", "execve", "execveat", "connect", "sendto", "sendmsg", "sendmmsg", "utimensat",
    "kill", "tkill", "tgkill", "pidfd_open", "pidfd_send_signal",
}


def test_every_name_is_a_real_x86_64_syscall():
    unknown = sorted(set(TABLE) - set(SYSCALL_NUMBERS))
    assert unknown == []


def test_the_issue_list_is_covered():
    assert REQUIRED - set(TABLE) == set()


def test_action_types_are_known_to_the_engine():
    for name, spec in TABLE.items():
        for action_type in spec.action_types:
            assert action_type in ACTION_TYPES, (name, action_type)


def test_the_traced_set_compiles_into_a_filter():
    program = seccomp.build_filter(seccomp.FilterSpec(traced=traced_syscalls()))
    assert 0 < len(program) < 4096


def test_nothing_traced_is_also_denied_by_the_baseline():
    # a name both traced and denied in the kernel would never reach the tracer: say so here
    assert traced_syscalls() & set(seccomp.TRACER_INVARIANTS.denied) == set()


# --- decoding against real memory --------------------------------------------------------------

class Args:
    """Keeps ctypes buffers alive and hands out their addresses as syscall arguments."""

    def __init__(self):
        self.keep = []

    def s(self, text: str | bytes) -> int:
        data = text.encode() if isinstance(text, str) else text
        buf = ctypes.create_string_buffer(data + b"\0")
        self.keep.append(buf)
        return ctypes.addressof(buf)

    def raw(self, data: bytes) -> int:
        buf = ctypes.create_string_buffer(data, len(data))
        self.keep.append(buf)
        return ctypes.addressof(buf)

    def argv(self, *words: str) -> int:
        pointers = [self.s(w) for w in words] + [0]
        return self.raw(struct.pack(f"{len(pointers)}Q", *pointers))


def decode(name, *args):
    args = tuple(args) + (0,) * (6 - len(args))
    return decode_syscall(PID, name, SYSCALL_NUMBERS[name], args)


def actions(name, *args):
    return [(a.action_type, a.target) for a in decode(name, *args).actions]


@pytest.fixture
def a():
    return Args()


@pytest.mark.parametrize("flags,kind", [
    (os.O_RDONLY, "file_read"), (O_WRONLY, "file_write"), (O_RDWR, "file_write"),
    (O_CREAT, "file_write"), (O_TRUNC, "file_write"), (O_APPEND, "file_write"),
    (os.O_RDONLY | os.O_DIRECTORY, "file_read"), (os.O_TMPFILE | O_WRONLY, "file_write"),
])
def test_open_flags_decide_read_or_write(a, tmp_path, flags, kind):
    assert actions("openat", AT_FDCWD, a.s(f"{tmp_path}/f"), flags) == [(kind, f"{tmp_path}/f")]
    assert actions("open", a.s(f"{tmp_path}/f"), flags) == [(kind, f"{tmp_path}/f")]


def test_creat_and_openat2(a, tmp_path):
    assert actions("creat", a.s(f"{tmp_path}/n"), 0o644) == [("file_write", f"{tmp_path}/n")]
    how = a.raw(struct.pack("QQQ", O_WRONLY | O_CREAT, 0o644, 0))
    assert actions("openat2", AT_FDCWD, a.s(f"{tmp_path}/n"), how, 24) == \
        [("file_write", f"{tmp_path}/n")]


def test_relative_open_uses_our_cwd_and_o_nofollow(a, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.symlink("/etc/passwd", tmp_path / "link")
    assert actions("openat", AT_FDCWD, a.s("link"), 0) == [("file_read", "/etc/passwd")]
    assert actions("openat", AT_FDCWD, a.s("link"), O_NOFOLLOW) == \
        [("file_read", f"{tmp_path}/link")]


def test_dev_shm_is_also_memory_access(a):
    assert actions("openat", AT_FDCWD, a.s("/dev/shm/region"), O_RDWR | O_CREAT) == \
        [("file_write", "/dev/shm/region"), ("memory_access", "shm://region")]


def test_delete_and_create_never_follow_the_last_link(a, tmp_path):
    os.symlink("/etc/passwd", tmp_path / "l")
    assert actions("unlink", a.s(f"{tmp_path}/l")) == [("file_delete", f"{tmp_path}/l")]
    assert actions("unlinkat", AT_FDCWD, a.s(f"{tmp_path}/l"), 0) == \
        [("file_delete", f"{tmp_path}/l")]
    assert actions("rmdir", a.s(f"{tmp_path}/d")) == [("file_delete", f"{tmp_path}/d")]
    assert actions("mkdir", a.s(f"{tmp_path}/d"), 0o755) == [("file_write", f"{tmp_path}/d")]
    assert actions("symlink", a.s("/anything"), a.s(f"{tmp_path}/s")) == \
        [("file_write", f"{tmp_path}/s")]
    assert actions("mknodat", AT_FDCWD, a.s(f"{tmp_path}/n"), 0o600, 0) == \
        [("file_write", f"{tmp_path}/n")]


def test_rename_is_a_move_and_a_write_of_both_names(a, tmp_path):
    """rename(tmp, file) is how programs replace a file atomically: a move, not a delete."""
    src, dst = f"{tmp_path}/a", f"{tmp_path}/b"
    expected = [("file_move", f"{src} -> {dst}"), ("file_write", dst), ("file_write", src)]
    assert actions("rename", a.s(src), a.s(dst)) == expected
    assert actions("renameat2", AT_FDCWD, a.s(src), AT_FDCWD, a.s(dst), 0) == expected


def test_rename_exchange_moves_both_ways(a, tmp_path):
    src, dst = f"{tmp_path}/a", f"{tmp_path}/b"
    RENAME_EXCHANGE = 2
    assert actions("renameat2", AT_FDCWD, a.s(src), AT_FDCWD, a.s(dst), RENAME_EXCHANGE) == [
        ("file_move", f"{src} -> {dst}"), ("file_move", f"{dst} -> {src}"),
        ("file_write", dst), ("file_write", src)]


def test_link_writes_the_new_name_and_reads_the_old(a, tmp_path):
    assert actions("link", a.s("/etc/shadow"), a.s(f"{tmp_path}/copy")) == \
        [("file_write", f"{tmp_path}/copy"), ("file_read", "/etc/shadow"),
         ("file_write", "/etc/shadow")]


def test_chmod_target_carries_the_octal_mode(a, tmp_path):
    assert actions("chmod", a.s(f"{tmp_path}/x"), 0o755) == [("file_chmod", f"{tmp_path}/x:0755")]
    assert actions("fchmodat", AT_FDCWD, a.s(f"{tmp_path}/x"), 0o4777) == \
        [("file_chmod", f"{tmp_path}/x:4777")]
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert actions("fchmod", fd, 0o700) == [("file_chmod", f"{tmp_path}:0700")]
    finally:
        os.close(fd)


def test_fd_and_nofollow_variants(a, tmp_path):
    os.symlink("/etc/passwd", tmp_path / "l")
    assert actions("chown", a.s(f"{tmp_path}/l"), 0, 0) == [("file_write", "/etc/passwd")]
    assert actions("lchown", a.s(f"{tmp_path}/l"), 0, 0) == [("file_write", f"{tmp_path}/l")]
    assert actions("fchownat", AT_FDCWD, a.s(f"{tmp_path}/l"), 0, 0, AT_SYMLINK_NOFOLLOW) == \
        [("file_write", f"{tmp_path}/l")]
    assert actions("setxattr", a.s(f"{tmp_path}/l"), a.s("user.x"), 0, 0, 0) == \
        [("file_write", "/etc/passwd")]
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert actions("fchownat", fd, a.s(""), 0, 0, AT_EMPTY_PATH) == \
            [("file_write", str(tmp_path))]
        assert actions("utimensat", fd, 0, 0, 0) == [("file_write", str(tmp_path))]
    finally:
        os.close(fd)


def test_execve_uses_the_real_executable_name(a, tmp_path):
    os.symlink("/bin/rm", tmp_path / "ls")  # a link named ls that runs rm
    real = os.path.realpath("/bin/rm")
    assert actions("execve", a.s(f"{tmp_path}/ls"), a.argv("ls", "-rf", "/x"), 0) == \
        [("shell_execute", "rm -rf /x"), ("process_spawn", real)]


def test_unreadable_and_overlong_arguments_are_decode_errors(a):
    with pytest.raises(DecodeError):
        decode("openat", AT_FDCWD, 0, 0)                    # NULL path
    with pytest.raises(DecodeError):
        decode("openat", AT_FDCWD, a.s("/" + "a" * 5000), 0)  # longer than PATH_MAX
    with pytest.raises(DecodeError):
        decode("openat", AT_FDCWD, 8, 0)                    # unmapped address


def _sockaddr_in(host, port):
    return struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + \
        socket.inet_pton(socket.AF_INET, host) + b"\0" * 8


def _sockaddr_in6(host, port):
    return struct.pack("<H", socket.AF_INET6) + struct.pack(">H", port) + b"\0" * 4 + \
        socket.inet_pton(socket.AF_INET6, host) + b"\0" * 4


def test_sockaddr_formats():
    assert format_sockaddr(PID, _sockaddr_in("1.2.3.4", 443)) == "1.2.3.4:443"
    assert format_sockaddr(PID, _sockaddr_in6("::1", 22)) == "[::1]:22"
    # an IPv4-mapped address reaches the IPv4 host: judged as that
    assert format_sockaddr(PID, _sockaddr_in6("::ffff:127.0.0.1", 80)) == "127.0.0.1:80"
    assert format_sockaddr(PID, struct.pack("<H", 1) + b"/run/x.sock\0") == "unix:/run/x.sock"
    assert format_sockaddr(PID, struct.pack("<H", 1) + b"\0abstract") == "unix:@abstract"
    assert format_sockaddr(PID, struct.pack("<H", 0) + b"\0" * 14) is None


def test_connect_sendto_sendmsg(a):
    addr = _sockaddr_in("127.0.0.1", 9)
    assert actions("connect", 3, a.raw(addr), len(addr)) == [("network_connect", "127.0.0.1:9")]
    assert actions("sendto", 3, 0, 0, 0, a.raw(addr), len(addr)) == \
        [("network_connect", "127.0.0.1:9")]
    assert actions("sendto", 3, 0, 0, 0, 0, 0) == []  # connected socket: judged at connect
    msghdr = struct.pack("QI4xQQQQi4x", a.raw(addr), len(addr), 0, 0, 0, 0, 0)
    assert actions("sendmsg", 3, a.raw(msghdr), 0) == [("network_connect", "127.0.0.1:9")]
    addr6 = _sockaddr_in6("::1", 7)
    mmsg = (struct.pack("QI4xQQQQi4x", a.raw(addr), len(addr), 0, 0, 0, 0, 0) + b"\0" * 8 +
            struct.pack("QI4xQQQQi4x", a.raw(addr6), len(addr6), 0, 0, 0, 0, 0) + b"\0" * 8)
    assert actions("sendmmsg", 3, a.raw(mmsg), 2, 0) == \
        [("network_connect", "127.0.0.1:9"), ("network_connect", "[::1]:7")]


def test_signal_targets():
    decoded = decode("kill", 1, 9)
    assert [(t.kind, t.ident) for t in decoded.signal_targets] == [("pid", 1)]
    assert decode("kill", 1, 0).signal_targets == ()      # kill(pid, 0) sends nothing
    assert [(t.kind, t.ident) for t in decode("kill", -1 & 0xFFFFFFFF, 9).signal_targets] == \
        [("all", -1)]
    assert [(t.kind, t.ident) for t in decode("kill", 0, 15).signal_targets] == \
        [("pgrp", os.getpgid(0))]
    assert [(t.kind, t.ident) for t in decode("tgkill", 77, 78, 9).signal_targets] == \
        [("pid", 77)]


def test_openat2_resolve_in_root(a, tmp_path):
    (tmp_path / "victim").mkdir()
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        how = a.raw(struct.pack("QQQ", os.O_RDONLY, 0, 0x10))  # RESOLVE_IN_ROOT
        assert actions("openat2", fd, a.s("/victim/secret"), how, 24) == \
            [("file_read", f"{tmp_path}/victim/secret")]
    finally:
        os.close(fd)
