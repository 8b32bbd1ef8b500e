"""The scratch region: copies of syscall arguments in memory the agent cannot write (TOCTOU).

Owns the defence against time-of-check/time-of-use races on syscall arguments. Every agent
address space gets, right at its exec (``PTRACE_EVENT_EXEC``, before the new program runs one
instruction), an anonymous ``PROT_READ`` mapping at the fixed address ``SCRATCH_BASE``, sealed
with ``mseal(2)`` so that no ``mprotect``/``munmap``/``mremap``/``mmap(MAP_FIXED)``/destructive
``madvise`` can ever touch it. The tracer installs it by running two injected syscalls in the
tracee (a 20-byte stub at the entry point: ``mmap``, ``mseal``, ``int3``), and restores the
code and registers afterwards. At every seccomp stop of a pinned syscall, ``Scratch.pin`` copies the
memory operands (paths, ``open_how``, argv and its strings, sockaddrs, ``msghdr`` + its name)
out of the agent into the task's slot (through ``/proc/PID/mem``, which writes read-only pages
as a debugger does) and points the argument registers at the copies; the decoder then reads the
copies, so the decision is made on exactly the bytes the kernel will read. Opens are also
rewritten to the resolved path with ``O_NOFOLLOW`` and, once allowed, run as ``openat2`` with
``RESOLVE_NO_SYMLINKS`` (``openat2_form``): a symlink swapped in anywhere on the path after the
check makes the kernel refuse. Each thread owns one slot while it lives (a thread is in one syscall
at a
time). An operand that cannot be copied is replaced by a non-canonical address, which the
decoder cannot read (so the syscall is refused, fail closed) and the kernel would refuse too.
State (slot owners) lives on the ``Scratch`` object of one tracer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from agentd.kernel import ptrace
from agentd.kernel.syscall_numbers import SYSCALL_NUMBERS
from agentd.kernel.tracee_memory import MAX_PATH_BYTES, MemoryReadError, TraceeMemory

from . import paths as _paths
from . import syscall_table

__all__ = [
    "SCRATCH_BASE",
    "SCRATCH_SIZE",
    "SLOT_SIZE",
    "SLOT_COUNT",
    "POISON",
    "ScratchError",
    "Install",
    "Scratch",
    "pinned_names",
    "send_deferred",
    "REGISTERS",
    "openat2_form",
    "in_window",
    "MUTATORS",
    "sendmsg_form",
    "sendmmsg_result",
]

# 32 TiB: above the ASan shadow, far below PIE images (0x55..), the mmap base (0x7f..) and the
# stack; free in every freshly exec'd image.
SCRATCH_BASE = 0x2000_0000_0000
SLOT_SIZE = 4 << 20  # argv up to 2 MiB of strings + 512 KiB of pointers, paths, structs
SLOT_COUNT = 1024  # live tasks of one agent tree that may hold a slot at once
SCRATCH_SIZE = SLOT_SIZE * SLOT_COUNT  # 4 GiB of address space; only written pages cost memory
POISON = 1 << 63  # non-canonical: unreadable for the decoder, EFAULT for the kernel
WINDOW_OFFSET = 1 << 20  # where the copies of a window syscall start in a slot (3 MiB left)

PROT_READ = 0x1
MAP_PRIVATE, MAP_ANONYMOUS, MAP_NORESERVE = 0x02, 0x20, 0x4000
NR_MMAP = SYSCALL_NUMBERS["mmap"]
NR_MSEAL = SYSCALL_NUMBERS["mseal"]
_U64 = (1 << 64) - 1

MAX_ARGV_ITEMS = 65536
MAX_ARG_BYTES = 128 * 1024 + 1
MAX_ARGV_BYTES = 2 * 1024 * 1024
SOCKADDR_MAX = 128
MSGHDR_SIZE = 56
MMSGHDR_SIZE = 64  # struct mmsghdr: a msghdr and its msg_len
MSG_LEN_OFFSET = 56
OPEN_HOW_MIN, OPEN_HOW_MAX = 24, 4096

REGISTERS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")  # syscall arguments 0..5


# The install stub, run once at the entry point of every freshly exec'd image (then the original
# bytes are put back): mmap(rdi..r9 as set by the tracer), keep the result in r12, then
# mseal(rdi, rsi, 0) (rdi and rsi survive a syscall), then trap back to the tracer.
INSTALL_STUB = (
    b"\xb8"
    + NR_MMAP.to_bytes(4, "little")  # mov eax, SYS_mmap
    + b"\x0f\x05"  # syscall
    + b"\x49\x89\xc4"  # mov r12, rax
    + b"\x31\xd2"  # xor edx, edx
    + b"\xb8"
    + NR_MSEAL.to_bytes(4, "little")  # mov eax, SYS_mseal
    + b"\x0f\x05"  # syscall
    + b"\xcc"
)  # int3
STUB_LEN = len(INSTALL_STUB)


class ScratchError(Exception):
    """The scratch region could not be installed or written; the caller fails closed."""


# Syscalls that change which object a name leads to (the directory for a symlink exchange, a
# symlink re-pointed, a name removed and made again): they wait while another task's window is
# open, so a path the kernel still has to walk cannot change between the check and the walk.
MUTATORS = frozenset(
    {
        "rename",
        "renameat",
        "renameat2",
        "rmdir",
        "unlink",
        "unlinkat",
        "symlink",
        "symlinkat",
        "link",
        "linkat",
        "mkdir",
        "mkdirat",
        "mknod",
        "mknodat",
        "bind",
    }
)


def pinned_names() -> frozenset[str]:
    """The traced syscalls whose memory operands are pinned (everything with a pointer)."""
    return frozenset(name for name, spec in syscall_table.TABLE.items() if _has_pointer(spec))


def _has_pointer(spec: syscall_table.SyscallSpec) -> bool:
    return any(
        i is not None for i in (spec.path, spec.path2, spec.how, spec.argv, spec.addr, spec.msg)
    )


@dataclass
class Install:
    """An installation in progress in one task (between the exec stop and the last trap)."""

    entry: int  # rip at the exec stop: where the stub runs
    code: bytes  # the program's bytes the stub overwrites
    regs: ptrace.Registers  # the registers at the exec stop, restored at the end
    deferred: list[int] = field(default_factory=list)  # signals that arrived meanwhile


class _Blob:
    """The bytes of one slot, laid out front to back, 8-byte aligned. A syscall that keeps a
    window open (``in_window``) lays its copies out from ``WINDOW_OFFSET`` instead of 0: the
    registers then say so by themselves."""

    def __init__(self, slot: int):
        self.slot = slot
        self.base = slot
        self.parts: list[bytes] = []
        self.size = 0

    def open_window(self) -> None:
        assert self.size == 0
        self.base = self.slot + WINDOW_OFFSET

    @property
    def window(self) -> bool:
        return self.base != self.slot

    def add(self, data: bytes) -> int:
        address = self.base + self.size
        pad = (-len(data)) % 8
        self.parts.append(data + b"\0" * pad)
        self.size += len(data) + pad
        if self.base + self.size > self.slot + SLOT_SIZE:
            raise ScratchError("operands larger than a scratch slot")
        return address

    def data(self) -> bytes:
        return b"".join(self.parts)


class Scratch:
    """Slots of the scratch region and the installation of it, for one tracer."""

    def __init__(self) -> None:
        self._slot_of: dict[int, int] = {}
        self._free = list(range(SLOT_COUNT - 1, -1, -1))

    # --- slots ------------------------------------------------------------------------------
    def slot(self, tid: int) -> int:
        """The address of ``tid``'s slot. INVARIANT: a slot is written only at a seccomp stop
        of its owner, whose previous syscall (the last reader of the slot) has then finished."""
        index = self._slot_of.get(tid)
        if index is None:
            if not self._free:
                raise ScratchError(f"more than {SLOT_COUNT} tasks hold scratch slots")
            index = self._free.pop()
            self._slot_of[tid] = index
        return SCRATCH_BASE + index * SLOT_SIZE

    def release(self, tid: int) -> None:
        index = self._slot_of.pop(tid, None)
        if index is not None:
            self._free.append(index)

    # --- installation, driven by the tracer -----------------------------------------------
    def begin_install(self, tid: int, memory: TraceeMemory, getregs, setregs) -> Install:
        """At the exec stop: write the mmap stub at rip and aim the registers at it."""
        regs = getregs(tid)
        saved = type(regs).from_buffer_copy(regs)
        entry = regs.rip
        try:
            code = memory.read_bytes(entry, STUB_LEN)
            memory.write_bytes(entry, INSTALL_STUB)
        except MemoryReadError as exc:
            raise ScratchError(f"cannot write the install stub at {entry:#x}: {exc}") from None
        regs.rip = entry
        regs.rdi, regs.rsi, regs.rdx = SCRATCH_BASE, SCRATCH_SIZE, PROT_READ
        regs.r10 = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE
        regs.r8, regs.r9 = _U64, 0  # fd -1, offset 0
        setregs(tid, regs)
        return Install(entry, code, saved)

    def is_stub_trap(self, install: Install, regs) -> bool:
        return regs.rip == install.entry + STUB_LEN

    def finish_install(
        self, tid: int, install: Install, memory: TraceeMemory, getregs, setregs
    ) -> None:
        """At the stub's trap: check what mmap and mseal returned, put the program back."""
        regs = getregs(tid)
        if regs.r12 != SCRATCH_BASE:
            raise ScratchError(f"mmap of the scratch region returned {_errno_text(regs.r12)}")
        if regs.rax != 0:
            raise ScratchError(f"mseal of the scratch region returned {_errno_text(regs.rax)}")
        try:
            memory.write_bytes(install.entry, install.code)
        except MemoryReadError as exc:
            raise ScratchError(f"cannot restore the program's code: {exc}") from None
        restored = install.regs
        restored.orig_rax = regs.orig_rax  # not in a syscall any more
        restored.rax = 0  # what execve returned
        setregs(tid, restored)

    # --- pinning -----------------------------------------------------------------------------
    def pin(
        self, tid: int, tgid: int, memory: TraceeMemory, spec: syscall_table.SyscallSpec, regs
    ) -> tuple[bool, bool]:
        """Copy the memory operands of the stopped syscall into ``tid``'s slot and point its
        registers at the copies. Returns ``(changed, window)``: whether a register changed (the
        caller sets them) and whether the kernel will walk a path that a rename elsewhere in
        the tree could still redirect (see ``in_window``). An operand that cannot be copied
        gets ``POISON`` instead (the decoder then refuses)."""
        args = [getattr(regs, name) for name in REGISTERS]
        before = list(args)
        blob = _Blob(self.slot(tid))
        decoder = spec.decoder
        if decoder == "open":
            self._pin_open(tid, tgid, memory, spec, args, blob)
        elif decoder in ("path", "chmod", "move", "link", "exec"):
            if any(i is not None and args[i] != 0 for i in (spec.path, spec.path2)):
                blob.open_window()
            for index in (spec.path, spec.path2):
                if index is not None and args[index] != 0:
                    args[index] = _or_poison(lambda a=args[index]: blob.add(_path_copy(memory, a)))
            if spec.argv is not None and args[spec.argv] != 0:
                args[spec.argv] = _or_poison(lambda: _pin_argv(memory, args[spec.argv], blob))
        elif decoder in ("sockaddr", "bind"):
            address, length = (
                args[syscall_table.operand(spec.addr)],
                args[syscall_table.operand(spec.addrlen)] & 0xFFFFFFFF,
            )
            # A longer sockaddr is refused by the kernel (EINVAL) before it reads any of it.
            if address != 0 and 0 < length <= SOCKADDR_MAX:
                try:
                    raw = memory.read_bytes(address, length)
                except MemoryReadError:
                    args[syscall_table.operand(spec.addr)] = POISON
                else:
                    if _names_unix_path(raw):
                        blob.open_window()
                    args[syscall_table.operand(spec.addr)] = _or_poison(lambda: blob.add(raw))
        elif decoder == "sendmsg" and spec.vlen is None:
            if args[syscall_table.operand(spec.msg)] != 0:
                args[syscall_table.operand(spec.msg)] = _or_poison(
                    lambda: _pin_msghdr(memory, args[syscall_table.operand(spec.msg)], blob)
                )
        elif decoder == "sendmsg":
            # sendmmsg: the kernel writes each msg_len back into the array, which a read-only
            # copy cannot take. One message per call: pinned, run as sendmsg (``sendmsg_form``),
            # and the tracer writes msg_len and the count 1 at the exit stop (partial sends are
            # sendmmsg's documented behaviour; callers loop).
            if (
                args[syscall_table.operand(spec.msg)] != 0
                and args[syscall_table.operand(spec.vlen)] & 0xFFFFFFFF
            ):
                blob.open_window()
                args[syscall_table.operand(spec.msg)] = _or_poison(
                    lambda: _pin_msghdr(
                        memory, args[syscall_table.operand(spec.msg)], blob, MMSGHDR_SIZE
                    )
                )
                args[syscall_table.operand(spec.vlen)] = 1
        if args == before:
            # Nothing new to copy; the registers may still point at copies in the slot (a
            # syscall re-issued after a hold): then the window is open all the same.
            return False, in_window(regs)
        if blob.size:
            try:
                memory.write_bytes(blob.base, blob.data())
            except MemoryReadError as exc:
                raise ScratchError(f"cannot write the scratch slot: {exc}") from None
        for name, value in zip(REGISTERS, args, strict=False):
            setattr(regs, name, value)
        # INVARIANT: a window is exactly what ``enforce`` resumes with PTRACE_SYSCALL
        return True, in_window(regs)

    def _pin_open(self, tid, tgid, memory, spec, args, blob) -> None:
        flags_index = spec.flags
        if spec.how is not None:
            blob.open_window()  # openat2 keeps the agent's own resolve flags and path
            size = args[3]
            if args[spec.how] != 0 and OPEN_HOW_MIN <= size <= OPEN_HOW_MAX:
                try:
                    how = memory.read_bytes(args[spec.how], size)
                except MemoryReadError:
                    args[spec.how] = POISON
                    return
                try:
                    args[spec.how] = blob.add(how)
                except ScratchError:
                    args[spec.how] = POISON
                    return
        try:
            raw = _path_copy(memory, args[spec.path])
        except (MemoryReadError, ScratchError):
            args[spec.path] = POISON
            return
        path = raw[:-1]
        rewritten = None
        if not raw.endswith(b"\0"):
            flags_index = None  # too long: the kernel refuses it (ENAMETOOLONG) as it is
        # The file system race (a symlink swapped in after the check): name the resolved path
        # and forbid following a symlink at its end. Only for plain open/openat/creat, where
        # O_NOFOLLOW can be added to a register (creat and openat2 keep the copied bytes);
        # not through /proc magic links.
        if flags_index is not None:
            flags = args[flags_index] & 0xFFFFFFFF
            rewritten = _resolved_for_open(tid, tgid, spec, args, path, flags)
        if rewritten is not None:
            raw = os.fsencode(rewritten) + b"\0"
            if spec.dirfd is not None:
                args[spec.dirfd] = _paths.AT_FDCWD & _U64
            args[flags_index] = (args[flags_index] | syscall_table.O_NOFOLLOW) & _U64
            # The struct open_how that ``openat2_form`` turns the call into once it is allowed:
            # no symlink anywhere on the (resolved) path, so a directory swapped for a symlink
            # after the check makes the kernel refuse (ELOOP).
            mode = args[flags_index + 1] if spec.mode is None else args[spec.mode]
            assert blob.size == 0
            blob.add(_open_how(args[flags_index], mode))
            assert blob.size == PINNED_OPEN_PATH_OFFSET
        elif blob.size == 0:
            blob.open_window()  # kept as the agent wrote it: the walk may still be redirected
        args[spec.path] = _or_poison(lambda: blob.add(raw))


# openat(2)'s own translation of flags and mode into a struct open_how (fs/open.c
# build_open_how): openat2 refuses unknown bits and a mode without O_CREAT/O_TMPFILE.
VALID_OPEN_FLAGS = (
    0o3
    | 0o100
    | 0o200
    | 0o400
    | 0o1000
    | 0o2000
    | 0o4000
    | 0o10000
    | 0o20000
    | 0o40000
    | 0o100000
    | 0o200000
    | 0o400000
    | 0o1000000
    | 0o2000000
    | 0o10000000
    | 0o20000000
    | 0o4000000
)
O_PATH_FLAGS = (
    syscall_table.O_DIRECTORY | syscall_table.O_NOFOLLOW | syscall_table.O_PATH | 0o2000000
)
RESOLVE_NO_SYMLINKS = 0x04
PINNED_OPEN_PATH_OFFSET = 24  # a rewritten open: open_how at the slot's start, path after it
_NR_OPEN, _NR_OPENAT, _NR_OPENAT2 = (SYSCALL_NUMBERS[n] for n in ("open", "openat", "openat2"))


def _open_how(flags: int, mode: int) -> bytes:
    flags &= VALID_OPEN_FLAGS
    if flags & syscall_table.O_PATH:
        flags &= O_PATH_FLAGS
    mode = mode & 0o7777 if flags & (syscall_table.O_CREAT | syscall_table.O_TMPFILE) else 0
    return (
        flags.to_bytes(8, "little")
        + mode.to_bytes(8, "little")
        + RESOLVE_NO_SYMLINKS.to_bytes(8, "little")
    )


def _is_resolved_open_path(address: int) -> bool:
    # only a path ``pin`` resolved for an open sits at PINNED_OPEN_PATH_OFFSET in a slot
    offset = address - SCRATCH_BASE
    return 0 <= offset < SCRATCH_SIZE and offset % SLOT_SIZE == PINNED_OPEN_PATH_OFFSET


def resolved_open_path(regs) -> int | None:
    """For an open(at) ``pin`` has just rewritten (``regs`` as it set them): the address of the
    path it resolved (absolute, normalised, symlinks followed), which the kernel will walk with
    RESOLVE_NO_SYMLINKS once the open is allowed; None for anything else."""
    if regs.orig_rax == _NR_OPENAT:
        path = regs.rsi
    elif regs.orig_rax == _NR_OPEN:
        path = regs.rdi
    else:
        return None
    return path if _is_resolved_open_path(path) else None


def openat2_form(regs) -> bool:
    """An allowed, pinned and rewritten open(at) becomes openat2(AT_FDCWD, path, how, 24) with
    RESOLVE_NO_SYMLINKS (the how was laid out by ``pin``). Recognised from the registers alone:
    the path pointer sits at ``PINNED_OPEN_PATH_OFFSET`` in a slot, where nothing else ever
    puts a path. True when ``regs`` changed (the caller sets them)."""
    path = resolved_open_path(regs)
    if path is None:
        return False
    regs.orig_rax = _NR_OPENAT2
    regs.rdi = _paths.AT_FDCWD & _U64
    regs.rsi = path
    regs.rdx = path - PINNED_OPEN_PATH_OFFSET
    regs.r10 = 24
    return True


def _resolved_for_open(tid, tgid, spec, args, path: bytes, flags: int) -> str | None:
    """The resolved path to open instead of ``path``, or None to keep the original bytes."""
    text = os.fsdecode(path)
    if not text or text.startswith(("/proc", "/dev/fd", "/dev/std")):
        return None
    dirfd = _paths.AT_FDCWD if spec.dirfd is None else _s32(args[spec.dirfd])
    follow = not flags & syscall_table.O_NOFOLLOW and not (
        flags & syscall_table.O_CREAT and flags & syscall_table.O_EXCL
    )
    try:
        resolved = _paths.resolve_tracee_path(tid, dirfd, text, follow_last=follow, tgid=tgid)
    except (_paths.PathResolutionError, OSError):
        return None  # the decoder will fail the same way and refuse
    if (
        not resolved.startswith("/")
        or resolved.startswith("/proc/")
        or resolved.endswith(" (deleted)")
        or resolved.startswith("/memfd:")
    ):
        return None
    if text.endswith("/") and not resolved.endswith("/"):
        resolved += "/"
    if len(resolved) >= MAX_PATH_BYTES:
        return None
    return resolved


def _s32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _path_copy(memory: TraceeMemory, address: int) -> bytes:
    """The path at ``address`` with its NUL. A path too long for the kernel is copied as its
    first PATH_MAX bytes, without a NUL: the kernel refuses that copy (ENAMETOOLONG) as it
    would have refused the original, and so do the decoder and the errno probe."""
    data, truncated = memory.read_cstring(address, MAX_PATH_BYTES)
    if truncated:
        return data[:MAX_PATH_BYTES]
    return data + b"\0"


def _cstring(memory: TraceeMemory, address: int, limit: int = MAX_PATH_BYTES) -> bytes:
    """The string at ``address`` with its NUL; ScratchError when longer than ``limit``."""
    data, truncated = memory.read_cstring(address, limit)
    if truncated:
        raise ScratchError(f"string at {address:#x} is longer than {limit} bytes")
    return data + b"\0"


def _pin_argv(memory: TraceeMemory, address: int, blob: _Blob) -> int:
    pointers, truncated = memory.read_pointer_array(address, MAX_ARGV_ITEMS)
    if truncated:
        raise ScratchError("argv too long")
    copies = []
    total = 0
    for pointer in pointers:
        data = _cstring(memory, pointer, MAX_ARG_BYTES)
        total += len(data)
        if total > MAX_ARGV_BYTES:
            raise ScratchError("argv is larger than the kernel accepts")
        copies.append(blob.add(data))
    table = b"".join(c.to_bytes(8, "little") for c in copies) + b"\0" * 8
    return blob.add(table)


def _pin_msghdr(memory: TraceeMemory, address: int, blob: _Blob, size: int = MSGHDR_SIZE) -> int:
    header = bytearray(memory.read_bytes(address, size))
    name = int.from_bytes(header[0:8], "little")
    namelen = int.from_bytes(header[8:12], "little", signed=True)
    if name != 0 and namelen > 0:
        # The kernel clamps msg_namelen to sizeof(struct sockaddr_storage).
        length = min(namelen, SOCKADDR_MAX)
        raw = memory.read_bytes(name, length)
        if _names_unix_path(raw) and not blob.window:
            blob.open_window()
        header[0:8] = blob.add(raw).to_bytes(8, "little")
        header[8:12] = length.to_bytes(4, "little")
    return blob.add(bytes(header))


def _names_unix_path(raw: bytes) -> bool:
    """An AF_UNIX sockaddr with a file system path (not abstract, not autobind)."""
    return len(raw) > 2 and int.from_bytes(raw[:2], "little") == 1 and raw[2] != 0


_NR_SENDMSG, _NR_SENDMMSG = SYSCALL_NUMBERS["sendmsg"], SYSCALL_NUMBERS["sendmmsg"]


def sendmsg_form(regs) -> bool:
    """An allowed, pinned sendmmsg(fd, copy, 1, flags) runs as sendmsg(fd, copy, flags); the
    tracer completes it at the exit stop (``sendmmsg_result``). True when ``regs`` changed."""
    if regs.orig_rax != _NR_SENDMMSG or not in_window(regs):
        return False
    regs.orig_rax = _NR_SENDMSG
    regs.rdx = regs.r10
    return True


def sendmmsg_result(regs, memory: TraceeMemory, array: int) -> bool:
    """At the exit stop of a sendmmsg run as sendmsg: what sendmmsg would have returned (1)
    and written (msg_len of the first entry, in the agent's own array). True when ``regs``
    changed."""
    if regs.orig_rax != _NR_SENDMSG or regs.rax > _U64 - 4096:
        return False  # refused or failed: the error is sendmmsg's too
    try:
        memory.write_bytes(array + MSG_LEN_OFFSET, (regs.rax & 0xFFFFFFFF).to_bytes(4, "little"))
    except MemoryReadError:
        pass  # the kernel would have failed the same write; the count stands
    regs.rax = 1
    return True


def in_window(regs) -> bool:
    """Does this stopped syscall keep a window open: a pinned path the kernel will still walk
    (everything but the rewritten opens, which run with RESOLVE_NO_SYMLINKS)? Read from the
    registers alone: its copies lie at ``WINDOW_OFFSET`` or beyond in a slot."""
    for name in REGISTERS:
        offset = getattr(regs, name) - SCRATCH_BASE
        if 0 <= offset < SCRATCH_SIZE and offset % SLOT_SIZE >= WINDOW_OFFSET:
            return True
    return False


def _or_poison(copy) -> int:
    try:
        return copy()
    except (MemoryReadError, ScratchError):
        return POISON


def _errno_text(value: int) -> str:
    if value > _U64 - 4096:
        return f"-{os.strerror(_U64 + 1 - value)}"
    return f"{value:#x}"


def send_deferred(tid: int, signals: list[int]) -> None:
    """Signals that arrived while the stubs ran are sent again once the program is restored."""
    for sig in signals:
        try:
            os.kill(tid, sig)
        except ProcessLookupError:
            pass
