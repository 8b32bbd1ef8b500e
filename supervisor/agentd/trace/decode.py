"""Decode one stopped syscall into plain data: registers + tracee memory -> ``Action`` records.

Owns the *decode* step of stop -> decode -> decide -> enforce. ``decode_syscall`` looks the
syscall up in ``syscall_table.TABLE``, reads its operands from the registers and the tracee's
memory (bounded reads, ``tracee_memory``), resolves paths the way the kernel will (``paths``) and
returns a ``DecodedSyscall``: the actions to put to the policy (``Action(action_type, target)``,
targets in the formats of docs/dev/contracts.md) and the signal targets the supervisor checks
itself (containment). Anything it cannot read completely raises ``DecodeError``, which the caller
turns into a denial. Knows nothing about policies; no state.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentd.kernel import statx as _statx
from agentd.kernel import tracee_memory as _mem

from . import exec_identity as _exec_identity
from . import paths as _paths
from . import syscall_table

__all__ = [
    "Action",
    "SignalTarget",
    "Tracee",
    "DecodedSyscall",
    "DecodeError",
    "decode_syscall",
    "syscall_args",
    "format_sockaddr",
]

SyscallSpec_ = syscall_table.SyscallSpec

MAX_ARGV_ITEMS = 65536
MAX_ARGV_BYTES = 2 * 1024 * 1024  # the kernel's default ARG_MAX region
MAX_ARG_BYTES = 128 * 1024 + 1  # MAX_ARG_STRLEN
SOCKADDR_MAX = 128  # sizeof(struct sockaddr_storage)
MSGHDR_SIZE = 56
MMSGHDR_SIZE = 64
MAX_MMSG = 1024  # UIO_MAXIOV: the kernel caps vlen here too

AF_UNSPEC, AF_UNIX, AF_INET, AF_INET6 = 0, 1, 2, 10
_FAMILY_NAMES = {
    16: "netlink",
    17: "packet",
    4: "ipx",
    5: "appletalk",
    9: "x25",
    40: "vsock",
    38: "alg",
    31: "bluetooth",
    29: "can",
    44: "xdp",
}


@dataclass(frozen=True)
class Action:
    """One thing a syscall would do, in the policy's terms, with what the decoder learnt about
    its target (``facts``: extra context for the policy, e.g. ``preexisting``)."""

    action_type: str
    target: str
    facts: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class SignalTarget:
    """Whom a signal-sending syscall aims at: ``kind`` is "pid" (a process or thread id),
    "pgrp" (a process group id) or "all" (kill(-1): every process the caller may signal)."""

    kind: str
    ident: int


@dataclass(frozen=True)
class Tracee:
    """The stopped task a syscall is decoded for: its tid, thread group and memory reader."""

    tid: int
    tgid: int | None
    memory: _mem.TraceeMemory
    exec_identifier: _exec_identity.ExecIdentifier | None = None  # per run: its caches
    # When the run began (statx.coarse_now_ns): files born since are the agent's own. None: no
    # run (one-off decoding), nothing counts as the agent's.
    run_started_ns: int | None = None
    # Where the tracer's pinning put the path it resolved for this stop's open (the kernel will
    # open exactly it, with RESOLVE_NO_SYMLINKS); None: it resolved none, the decoder walks it
    resolved_open: int | None = None


@dataclass(frozen=True)
class DecodedSyscall:
    syscall: str
    nr: int
    args: tuple[int, ...]
    actions: tuple[Action, ...] = ()
    signal_targets: tuple[SignalTarget, ...] = ()
    # whose limits, scheduling, memory placement or SIGIO the call changes (kind "pid",
    # "pgrp", or "all" for a user-wide form): containment, like signals
    process_targets: tuple[SignalTarget, ...] = ()


class DecodeError(Exception):
    """The syscall's operands could not be read or resolved completely; deny it.

    ``errno``: set when the kernel would fail the call for the same reason (a bad pointer, a
    descriptor that is not open, an empty, too long or looping path): the refusal is then no
    policy matter, and the audit record says so (``agentd:kernel_refuses``)."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


def syscall_args(regs) -> tuple[int, ...]:
    """The six x86_64 syscall arguments (rdi, rsi, rdx, r10, r8, r9), as unsigned 64-bit ints."""
    return (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9)


def _s32(value: int) -> int:
    """The low 32 bits as a signed int: how the kernel reads an `int` argument (fds, pids)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


# Errors of a path walk or a descriptor lookup that mean the kernel fails the call itself.
_KERNEL_ERRORS = frozenset(
    {_errno.ENOENT, _errno.ENOTDIR, _errno.ELOOP, _errno.ENAMETOOLONG, _errno.EBADF, _errno.EFAULT}
)


def _read_path(t: Tracee, addr: int) -> str:
    try:
        data, truncated = t.memory.read_cstring(addr, _mem.MAX_PATH_BYTES)
    except _mem.MemoryReadError as exc:
        raise DecodeError(f"cannot read path argument: {exc.strerror}", _errno.EFAULT) from None
    if truncated:
        raise DecodeError(
            f"path argument at {addr:#x} is longer than {_mem.MAX_PATH_BYTES} bytes",
            _errno.ENAMETOOLONG,
        )
    return os.fsdecode(data)


def _resolve(
    t: Tracee,
    dirfd: int,
    path: str,
    follow_last: bool,
    empty_ok: bool = False,
    in_root: bool = False,
) -> str:
    try:
        return _paths.resolve_tracee_path(
            t.tid,
            dirfd,
            path,
            follow_last=follow_last,
            empty_ok=empty_ok,
            tgid=t.tgid,
            in_root=in_root,
        )
    except _paths.PathResolutionError as exc:
        raise DecodeError(
            f"cannot resolve {path!r}: {exc.strerror}",
            exc.errno if exc.errno in _KERNEL_ERRORS else None,
        ) from None


def _dirfd(args: tuple[int, ...], index: int | None) -> int:
    return _paths.AT_FDCWD if index is None else _s32(args[index])


def _flags(spec: SyscallSpec_, args: tuple[int, ...]) -> int:
    return 0 if spec.flags is None else args[spec.flags] & 0xFFFFFFFF


def _follow(spec: SyscallSpec_, flags: int) -> bool:
    follow = spec.follow_last
    if spec.nofollow_mask and flags & spec.nofollow_mask:
        follow = False
    if spec.follow_mask and flags & spec.follow_mask:
        follow = True
    return follow


def _named_path(
    t: Tracee,
    spec: SyscallSpec_,
    args: tuple[int, ...],
    path_index: int | None,
    dirfd_index: int | None,
    follow: bool,
    flags: int,
) -> str:
    """The resolved path of a (dirfd, path) or fd operand."""
    if spec.fd is not None and path_index is None:
        return _fd_path(t, _s32(args[spec.fd]))
    assert path_index is not None
    dirfd = _dirfd(args, dirfd_index)
    address = args[path_index]
    empty_ok = bool(spec.empty_path_mask and flags & spec.empty_path_mask)
    if address == 0 and spec.decoder == "path" and dirfd_index is not None:
        # utimensat(fd, NULL, ...): the descriptor itself
        return _fd_path(t, dirfd)
    return _resolve(t, dirfd, _read_path(t, address), follow, empty_ok)


def _fd_path(t: Tracee, fd: int) -> str:
    try:
        return _paths.fd_target(t.tid, fd)
    except _paths.PathResolutionError as exc:
        raise DecodeError(str(exc), exc.errno if exc.errno in _KERNEL_ERRORS else None) from None


def _shm_action(path: str) -> tuple[Action, ...]:
    if path.startswith("/dev/shm/") and len(path) > len("/dev/shm/"):
        return (Action("memory_access", "shm://" + path[len("/dev/shm/") :]),)
    return ()


# --- decoders: (pid, spec, args) -> (actions, signal targets) ------------------------------------


def _decode_open(t: Tracee, spec: SyscallSpec_, args: tuple[int, ...]):
    resolve = 0
    if spec.how is not None:
        try:
            # struct open_how { u64 flags; u64 mode; u64 resolve; }
            raw = t.memory.read_bytes(args[spec.how], 24)
        except _mem.MemoryReadError as exc:
            raise DecodeError(f"cannot read struct open_how: {exc.strerror}") from None
        flags = int.from_bytes(raw[0:8], "little")
        resolve = int.from_bytes(raw[16:24], "little")
    elif spec.flags is not None:
        flags = args[spec.flags] & 0xFFFFFFFF
    else:
        flags = spec.fixed_flags
    follow = not flags & syscall_table.O_NOFOLLOW
    address = args[syscall_table.operand(spec.path)]
    path = _read_path(t, address)
    if not (address == t.resolved_open and not path.endswith("/")):
        # RESOLVE_IN_ROOT scopes the walk to the dirfd; the other RESOLVE_* flags only make the
        # kernel refuse more, so resolving without them names the same file or a refused one.
        path = _resolve(
            t,
            _dirfd(args, spec.dirfd),
            path,
            follow_last=follow
            and not (flags & syscall_table.O_CREAT and flags & syscall_table.O_EXCL),
            in_root=bool(resolve & syscall_table.RESOLVE_IN_ROOT),
        )
    # else: the pinning resolved it in this stop, as this would (pinning._resolved_for_open),
    # and the kernel will open exactly it (RESOLVE_NO_SYMLINKS): resolving again changes nothing
    writes = (flags & syscall_table.O_ACCMODE) in (
        syscall_table.O_WRONLY,
        syscall_table.O_RDWR,
    ) or flags & syscall_table.WRITE_FLAGS
    action = Action("file_write" if writes else "file_read", path)
    return (action,) + _shm_action(path), ()


_FILE_TYPES = {
    stat.S_IFREG: "regular",
    stat.S_IFDIR: "directory",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "char_device",
    stat.S_IFBLK: "block_device",
}


def _file_facts(t: Tracee, path: str, follow: bool = False) -> tuple[tuple[str, Any], ...]:
    """What the policy may ask about the file a delete or chmod is aimed at:

    - ``preexisting``: was it there before the run began? Every file the agent's tree makes is
      made after the run began, and a file's birth time cannot be set from user space, so a
      birth time at or after the start is the agent's doing (docs/policies.md, batch deletes);
      a name that does not exist has nothing from before the run either. Not known (no run, a
      file system without birth times, a file that cannot be inspected) reads as there before.
    - ``file_type``: regular, directory, symlink, ... (a set-group-ID directory is no set-ID
      program).
    """
    try:
        born, mode = _statx.birth_and_mode(path, follow=follow)
    except FileNotFoundError:
        return () if t.run_started_ns is None else (("preexisting", False),)
    except OSError:
        return ()
    facts: tuple[tuple[str, Any], ...] = (
        ("file_type", _FILE_TYPES.get(stat.S_IFMT(mode), "unknown")),
    )
    if t.run_started_ns is not None:
        facts += (("preexisting", born is None or born < t.run_started_ns),)
    return facts


def _decode_path(t: Tracee, spec: SyscallSpec_, args: tuple[int, ...]):
    flags = _flags(spec, args)
    path = _named_path(t, spec, args, spec.path, spec.dirfd, _follow(spec, flags), flags)
    facts = _file_facts(t, path) if spec.action_type == "file_delete" else ()
    return (Action(spec.action_type, path, facts),), ()


def _decode_chmod(t: Tracee, spec: SyscallSpec_, args: tuple[int, ...]):
    flags = _flags(spec, args)
    follow = _follow(spec, flags)
    path = _named_path(t, spec, args, spec.path, spec.dirfd, follow, flags)
    mode = args[syscall_table.operand(spec.mode)] & 0o7777
    if spec.fd is not None:
        # the descriptor's own inode, whatever its name has become since
        facts = _file_facts(t, f"/proc/{t.tid}/fd/{_s32(args[spec.fd])}", follow=True)
    else:
        facts = _file_facts(t, path, follow=follow)
    return (Action("file_chmod", f"{path}:{mode:04o}", facts),), ()


RENAME_EXCHANGE = 0x2  # renameat2: swap the two names


def _decode_move(t: Tracee, spec: SyscallSpec_, args: tuple[int, ...]):
    src = _resolve(
        t, _dirfd(args, spec.dirfd), _read_path(t, args[syscall_table.operand(spec.path)]), False
    )
    dst = _resolve(
        t, _dirfd(args, spec.dirfd2), _read_path(t, args[syscall_table.operand(spec.path2)]), False
    )
    # A move is a file_move and a write of both names: the new name appears (or replaces a file
    # there) and the old one goes away. It is not a delete of the source: rename(tmp, file) is
    # how programs replace a file atomically. (Landlock agrees: a rename needs write rights at
    # both ends, docs/landlock.md.)
    if _flags(spec, args) & RENAME_EXCHANGE:
        return (
            Action("file_move", f"{src} -> {dst}"),
            Action("file_move", f"{dst} -> {src}"),
            Action("file_write", dst),
            Action("file_write", src),
        ), ()
    return (
        Action("file_move", f"{src} -> {dst}"),
        Action("file_write", dst),
        Action("file_write", src),
    ), ()


def _decode_link(t: Tracee, spec: SyscallSpec_, args: tuple[int, ...]):
    flags = _flags(spec, args)
    empty_ok = bool(spec.empty_path_mask and flags & spec.empty_path_mask)
    old = _resolve(
        t,
        _dirfd(args, spec.dirfd),
        _read_path(t, args[syscall_table.operand(spec.path)]),
        _follow(spec, flags),
        empty_ok,
    )
    new = _resolve(
        t, _dirfd(args, spec.dirfd2), _read_path(t, args[syscall_table.operand(spec.path2)]), False
    )
    # A hard link aliases the inode: whatever the new name allows, the old file suffers. So
    # linking needs the right to read and to write the old file, and to create the new name.
    return (Action("file_write", new), Action("file_read", old), Action("file_write", old)), ()


def _read_argv(t: Tracee, address: int) -> list[str]:
    try:
        pointers, truncated = t.memory.read_pointer_array(address, MAX_ARGV_ITEMS)
    except _mem.MemoryReadError as exc:
        raise DecodeError(f"cannot read argv: {exc.strerror}") from None
    if truncated:
        raise DecodeError(f"argv has more than {MAX_ARGV_ITEMS} entries")
    argv: list[str] = []
    total = 0
    for pointer in pointers:
        try:
            data, cut = t.memory.read_cstring(pointer, MAX_ARG_BYTES)
        except _mem.MemoryReadError as exc:
            raise DecodeError(f"cannot read argv[{len(argv)}]: {exc.strerror}") from None
        total += len(data) + 1
        if cut or total > MAX_ARGV_BYTES:
            raise DecodeError("argv is larger than the kernel accepts")
        argv.append(os.fsdecode(data))
    return argv


def _decode_exec(t: Tracee, spec: SyscallSpec_, args: tuple[int, ...]):
    flags = _flags(spec, args)
    path = _named_path(t, spec, args, spec.path, spec.dirfd, _follow(spec, flags), flags)
    argv = _read_argv(t, args[syscall_table.operand(spec.argv)])
    # argv[0] is chosen by the caller, and a name is not an identity: judge what really runs
    # (a copy's original, the shebang's interpreter, the loader's program; exec_identity.py).
    fd = None
    if (
        spec.dirfd is not None
        and spec.empty_path_mask
        and flags & spec.empty_path_mask
        and _read_path(t, args[syscall_table.operand(spec.path)]) == ""
    ):
        fd = _dirfd(args, spec.dirfd)
    identifier = t.exec_identifier or _exec_identity.ExecIdentifier()
    try:
        what = identifier.identify(t.tid, path, argv, fd)
    except _exec_identity.IdentityError as exc:
        raise DecodeError(str(exc)) from None
    return tuple(
        [Action("shell_execute", line) for line in what.commands]
        + [Action("process_spawn", p) for p in what.spawn_paths]
    ), ()


def _printable(data: bytes) -> str:
    return re.sub(r"[^\x21-\x7e]", lambda m: f"\\x{ord(m.group()):02x}", data.decode("latin-1"))


def format_sockaddr(t: Tracee | int, raw: bytes) -> str | None:
    """The network_connect target for a sockaddr, or None for AF_UNSPEC (disconnect)."""
    if len(raw) < 2:
        raise DecodeError(f"sockaddr of {len(raw)} bytes")
    family = int.from_bytes(raw[:2], "little")
    if family == AF_UNSPEC:
        return None
    if family == AF_INET:
        if len(raw) < 8:
            raise DecodeError("short sockaddr_in")
        port = int.from_bytes(raw[2:4], "big")
        return f"{ipaddress.IPv4Address(raw[4:8])}:{port}"
    if family == AF_INET6:
        if len(raw) < 24:
            raise DecodeError("short sockaddr_in6")
        port = int.from_bytes(raw[2:4], "big")
        address = ipaddress.IPv6Address(raw[8:24])
        if address.ipv4_mapped is not None:
            # ::ffff:127.0.0.1 reaches 127.0.0.1: judge it as that
            return f"{address.ipv4_mapped}:{port}"
        return f"[{address}]:{port}"
    if family == AF_UNIX:
        sun_path = raw[2:]
        if not sun_path:
            return "unix:"  # autobind
        if sun_path[0] == 0:
            return "unix:@" + _printable(sun_path[1:])
        name = sun_path.split(b"\0", 1)[0]
        resolved = _resolve(_as_tracee(t), _paths.AT_FDCWD, os.fsdecode(name), True)
        return "unix:" + resolved
    return f"{_FAMILY_NAMES.get(family, f'af{family}')}:{raw[2:].hex()}"


# The unspecified address as a destination means "this host": the kernel sends to loopback
# (0.0.0.0 -> 127.0.0.1, :: -> ::1). Judge it both as written and as the loopback address the
# kernel will use, so a rule on 127.0.0.1 / [::1] holds (the most restrictive answer wins).
_UNSPECIFIED_AS_LOOPBACK = (("0.0.0.0:", "127.0.0.1:"), ("[::]:", "[::1]:"))


def _connect_actions(target: str | None) -> tuple[Action, ...]:
    if not target or target.startswith("netlink:"):
        # A netlink message goes to the kernel (getifaddrs, route and address dumps), not over
        # a network; changing the kernel's network state needs CAP_NET_ADMIN, which no agent
        # keeps (capabilities.py).
        return ()
    actions = [Action("network_connect", target)]
    for unspecified, loopback in _UNSPECIFIED_AS_LOOPBACK:
        if target.startswith(unspecified):
            actions.append(Action("network_connect", loopback + target[len(unspecified) :]))
    return tuple(actions)


def _read_sockaddr(t: Tracee, address: int, length: int) -> bytes:
    if length > SOCKADDR_MAX:
        length = SOCKADDR_MAX  # the kernel refuses longer ones with EINVAL anyway
    try:
        return t.memory.read_bytes(address, length)
    except _mem.MemoryReadError as exc:
        raise DecodeError(f"cannot read sockaddr: {exc.strerror}") from None


def _decode_sockaddr(t: Tracee, spec: SyscallSpec_, args: tuple[int, ...]):
    address, length = (
        args[syscall_table.operand(spec.addr)],
        args[syscall_table.operand(spec.addrlen)] & 0xFFFFFFFF,
    )
    if address == 0 or length == 0:
        return (), ()  # sendto on a connected socket: judged at connect()
    target = format_sockaddr(t, _read_sockaddr(t, address, length))
    return _connect_actions(target), ()


def _decode_bind(t: Tracee, spec: SyscallSpec_, args: tuple[int, ...]):
    address, length = (
        args[syscall_table.operand(spec.addr)],
        args[syscall_table.operand(spec.addrlen)] & 0xFFFFFFFF,
    )
    if address == 0 or length < 3:
        return (), ()
    raw = _read_sockaddr(t, address, length)
    if int.from_bytes(raw[:2], "little") != AF_UNIX or raw[2] == 0:
        return (), ()  # binding a port or an abstract name creates no file
    name = raw[2:].split(b"\0", 1)[0]
    return (Action("file_write", _resolve(t, _paths.AT_FDCWD, os.fsdecode(name), False)),), ()


def _decode_sendmsg(t: Tracee, spec: SyscallSpec_, args: tuple[int, ...]):
    count = 1 if spec.vlen is None else min(args[spec.vlen] & 0xFFFFFFFF, MAX_MMSG)
    stride = MSGHDR_SIZE if spec.vlen is None else MMSGHDR_SIZE
    actions: list[Action] = []
    for i in range(count):
        try:
            header = t.memory.read_bytes(args[syscall_table.operand(spec.msg)] + i * stride, 16)
        except _mem.MemoryReadError as exc:
            raise DecodeError(f"cannot read struct msghdr: {exc.strerror}") from None
        name = int.from_bytes(header[0:8], "little")
        namelen = int.from_bytes(header[8:12], "little")
        if name == 0 or namelen == 0:
            continue
        target = format_sockaddr(t, _read_sockaddr(t, name, namelen))
        actions += [a for a in _connect_actions(target) if a not in actions]
    return tuple(actions), ()


def _decode_signal(t: Tracee, spec: SyscallSpec_, args: tuple[int, ...]):
    # kill(pid, sig), tkill(tid, sig), tgkill(tgid, tid, sig), rt_sigqueueinfo(tgid, sig, ..),
    # rt_tgsigqueueinfo(tgid, tid, sig, ..), pidfd_open(pid, flags)
    target = _s32(args[syscall_table.operand(spec.pid)])
    if target > 0:
        return (), (SignalTarget("pid", target),)
    if target == 0:
        return (), (SignalTarget("pgrp", os.getpgid(t.tid)),)
    if target == -1:
        return (), (SignalTarget("all", -1),)
    return (), (SignalTarget("pgrp", -target),)


def _decode_pidfd_signal(t: Tracee, spec: SyscallSpec_, args: tuple[int, ...]):
    fd = _s32(args[syscall_table.operand(spec.fd)])
    try:
        with open(f"/proc/{t.tid}/fdinfo/{fd}", "rb") as handle:
            for line in handle:
                if line.startswith(b"Pid:"):
                    return (), (SignalTarget("pid", int(line.split()[1])),)
    except OSError as exc:
        raise DecodeError(f"descriptor {fd} is not open: {exc.strerror}") from None
    # a /proc/PID directory descriptor is accepted as a pidfd too
    target = _fd_path(t, fd)
    match = re.fullmatch(r"/proc/(\d+)", target)
    if match:
        return (), (SignalTarget("pid", int(match.group(1))),)
    raise DecodeError(f"descriptor {fd} ({target}) is not a pidfd")


def _decode_process(t: Tracee, spec: SyscallSpec_, args: tuple[int, ...]):
    """prlimit64, setpriority, ioprio_set, sched_set*, migrate_pages, move_pages,
    fcntl(F_SETOWN), prctl(PR_SCHED_CORE): the process (or group, or user) the call changes.
    Nothing when it aims at the caller itself (0) or changes nothing; the kernel's own EINVAL
    for an unknown ``which`` is left to the kernel (no target)."""
    if spec.only_when is not None:
        index, value = spec.only_when
        if args[index] & 0xFFFFFFFF != value:
            return (), ()
    if spec.changes is not None and args[spec.changes] == 0:
        return (), ()
    who = _s32(args[syscall_table.operand(spec.pid)])
    kind = "pid"
    if spec.which is not None:
        found = dict(spec.which_kinds).get(_s32(args[spec.which]))
        if found is None:
            return (), ()
        kind = found
    if kind == "user":
        # every process of a user (who 0: the caller's): reaches far beyond the tree
        return (), (SignalTarget("all", who),)
    if who == 0:
        if kind == "pgrp":
            return (), (SignalTarget("pgrp", os.getpgid(t.tid)),)
        return (), ()
    if who < 0:
        if spec.negative_pgrp:
            return (), (SignalTarget("pgrp", -who),)
        return (), ()  # the kernel fails a negative pid itself (EINVAL / ESRCH)
    return (), (SignalTarget(kind, who),)


_DECODERS: dict[str, Callable] = {
    "open": _decode_open,
    "path": _decode_path,
    "chmod": _decode_chmod,
    "move": _decode_move,
    "link": _decode_link,
    "exec": _decode_exec,
    "sockaddr": _decode_sockaddr,
    "bind": _decode_bind,
    "sendmsg": _decode_sendmsg,
    "signal": _decode_signal,
    "pidfd_signal": _decode_pidfd_signal,
    "process": _decode_process,
}
# INVARIANT: every decoder the table names exists.
assert {spec.decoder for spec in syscall_table.TABLE.values()} <= set(_DECODERS)


def _as_tracee(tracee: Tracee | int) -> Tracee:
    if isinstance(tracee, Tracee):
        return tracee
    return Tracee(tracee, None, _mem.TraceeMemory(tracee))


def decode_syscall(
    tracee: Tracee | int, name: str, nr: int, args: tuple[int, ...]
) -> DecodedSyscall:
    """Decode syscall ``name`` (number ``nr``, register ``args``) stopped in ``tracee`` (a
    ``Tracee``, or a bare tid for one-off use)."""
    t = _as_tracee(tracee)
    spec = syscall_table.TABLE.get(name)
    if spec is None:
        raise DecodeError(f"syscall {name} ({nr}) stopped but is not in the syscall table")
    if name == "kill" and _s32(args[1]) == 0:
        return DecodedSyscall(name, nr, args)  # kill(pid, 0): an existence check, sends nothing
    actions, targets = _DECODERS[spec.decoder](t, spec, args)
    if spec.decoder == "process":
        return DecodedSyscall(name, nr, args, tuple(actions), process_targets=tuple(targets))
    return DecodedSyscall(name, nr, args, tuple(actions), tuple(targets))
