"""The kernel's own answer to a refused syscall: which errno the agent sees.

Owns the rule "denied or failed, the agent sees the truth". When agentd refuses a syscall that
the kernel would have failed anyway (a closed descriptor, an empty or too long path, a missing
file, a symlink loop, a bad pointer, a component that is not a directory, ...), the agent must
get the kernel's errno, not a made-up EACCES: programs test for ENOENT and EBADF.

The kernel is asked, not imitated. The refused syscall never runs; in its place the agent's own
thread runs a *probe* that walks the same operands and changes nothing: ``faccessat2(dirfd,
path, F_OK, flags)`` for a path (the pinned copy the decision was made on, the same dirfd and
follow rules, the agent's own credentials, root and mount namespace), ``fcntl(fd, F_GETFD)`` for
a descriptor. At the syscall's exit the probe's result becomes the answer (``Probe.answer``):

- the probe failed with an error of the walk (ENOENT, ENOTDIR, ELOOP, ENAMETOOLONG, EFAULT,
  EBADF, EACCES): the kernel would have failed the call the same way; that error stands;
- the probe succeeded (the thing exists): the refusal stands, as EACCES, or EEXIST for a call
  that makes a new name exclusively (mkdir, mknod, symlink, open O_CREAT|O_EXCL), which the
  kernel checks before any security module is asked; for an open, the kernel's own EISDIR,
  ENOTDIR (O_DIRECTORY) and ELOOP (O_NOFOLLOW on a symlink) come first too;
- ENOENT for a call that creates its last component: the last component is missing, which is
  the normal case, so EACCES; unless the parent directory is missing too (ENOENT).

Only the refusal's errno is learnt; nothing the policy refused ever happens, and a probe cannot
change anything. Any other probe result (a filter the agent stacked refusing faccessat2, say)
leaves EACCES. Races are harmless: the answer is the truth at the moment of the probe.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from agentd.kernel.syscall_numbers import SYSCALL_NUMBERS

from . import syscall_table
from .paths import AT_FDCWD

__all__ = ["Probe", "probe_for", "WALK_ERRORS"]

NR_FACCESSAT2 = SYSCALL_NUMBERS["faccessat2"]
NR_FCNTL = SYSCALL_NUMBERS["fcntl"]
F_OK = 0
F_GETFD = 1
_U64 = (1 << 64) - 1

# What the probes can fail with that the refused call would have failed with too.
WALK_ERRORS = frozenset(
    {
        errno.ENOENT,
        errno.ENOTDIR,
        errno.ELOOP,
        errno.ENAMETOOLONG,
        errno.EFAULT,
        errno.EBADF,
        errno.EACCES,
    }
)

# Syscalls that make their last component as a new name, failing with EEXIST when it exists.
_EXCLUSIVE = frozenset({"mkdir", "mkdirat", "mknod", "mknodat", "symlink", "symlinkat"})


@dataclass(frozen=True)
class Probe:
    """A harmless syscall to run in place of a refused one, and how to read its result."""

    nr: int
    args: tuple[int, ...]
    if_exists: int = errno.EACCES  # the answer when the probe succeeds
    creates: bool = False  # ENOENT may only mean "the new name is not there yet"
    parent: str | None = None  # the resolved parent of a created name, when decoded
    open_target: str | None = None  # a refused open's resolved target, for EISDIR & co.
    open_flags: int = 0

    def answer(self, result: int) -> int:
        """The errno the agent gets, from the probe's return value (``rax``: 0 or -errno)."""
        if result > _U64 - 4096:
            error = _U64 + 1 - result
            if error not in WALK_ERRORS:
                return errno.EACCES
            if error == errno.ENOENT and self.creates:
                if self.parent is None or os.path.isdir(self.parent):
                    return errno.EACCES
            return error
        if self.open_target is not None:
            return _open_error(self.open_target, self.open_flags) or self.if_exists
        return self.if_exists


def _open_error(target: str, flags: int) -> int | None:
    """The errors the kernel's open finds in the file itself before any security check."""
    if flags & syscall_table.O_TMPFILE == syscall_table.O_TMPFILE:
        return None
    try:
        st = os.lstat(target)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return (
            errno.ELOOP
            if flags & syscall_table.O_NOFOLLOW and not flags & syscall_table.O_PATH
            else None
        )
    writes = (flags & syscall_table.O_ACCMODE) in (
        syscall_table.O_WRONLY,
        syscall_table.O_RDWR,
    ) or flags & syscall_table.O_CREAT
    if stat.S_ISDIR(st.st_mode) and writes:
        return errno.EISDIR
    if flags & syscall_table.O_DIRECTORY and not stat.S_ISDIR(st.st_mode):
        return errno.ENOTDIR
    return None


def _how_flags(read_how, address: int) -> int:
    if read_how is None:
        return 0
    try:
        return int.from_bytes(read_how(address, 8), "little")
    except Exception:  # noqa: BLE001 - unreadable: the probe's EFAULT tells
        return 0


def _s32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _access(dirfd: int | None, path: int, follow: bool, empty_ok: bool = False, **more) -> Probe:
    at_flags = (0 if follow else syscall_table.AT_SYMLINK_NOFOLLOW) | (
        syscall_table.AT_EMPTY_PATH if empty_ok else 0
    )
    return Probe(
        NR_FACCESSAT2,
        ((AT_FDCWD if dirfd is None else dirfd) & _U64, path, F_OK, at_flags, 0, 0),
        **more,
    )


def _fd(fd: int) -> Probe:
    return Probe(NR_FCNTL, (fd & _U64, F_GETFD, 0, 0, 0, 0))


def probe_for(
    name: str, args: tuple[int, ...], targets: tuple[str, ...] = (), read_how=None
) -> Probe | None:
    """The probe for refused syscall ``name`` with register arguments ``args`` (as the kernel
    would read them: after pinning), or None when there is none (sockets, signals).

    ``targets``: the decoded targets of the syscall's actions, when decoding succeeded (to tell
    a missing parent from a missing name, and for an open's own errors). ``read_how(address)``
    reads 8 bytes of the tracee (openat2's flags live in its ``struct open_how``).
    """
    spec = syscall_table.TABLE.get(name)
    if spec is None:
        return None
    decoder = spec.decoder
    if decoder not in ("open", "path", "chmod", "move", "link", "exec"):
        return None
    dirfd = None if spec.dirfd is None else _s32(args[spec.dirfd])
    if decoder == "open":
        if spec.flags is not None:
            flags = args[spec.flags] & 0xFFFFFFFF
        elif spec.how is None:
            flags = spec.fixed_flags
        else:
            flags = _how_flags(read_how, args[spec.how])
        creating = (
            bool(flags & syscall_table.O_CREAT)
            and flags & syscall_table.O_TMPFILE != syscall_table.O_TMPFILE
        )
        exclusive = creating and bool(flags & syscall_table.O_EXCL)
        follow = not flags & syscall_table.O_NOFOLLOW and not exclusive
        target = targets[0] if targets else None
        return _access(
            dirfd,
            args[syscall_table.operand(spec.path)],
            follow,
            if_exists=errno.EEXIST if exclusive else errno.EACCES,
            creates=creating,
            parent=os.path.dirname(target) if target and creating else None,
            open_target=None if exclusive else target,
            open_flags=flags,
        )
    flags = 0 if spec.flags is None else args[spec.flags] & 0xFFFFFFFF
    if spec.fd is not None and spec.path is None:
        return _fd(_s32(args[spec.fd]))
    if decoder == "path" and spec.dirfd is not None and args[syscall_table.operand(spec.path)] == 0:
        return _fd(dirfd if dirfd is not None else AT_FDCWD)  # utimensat(fd, NULL, ...)
    follow = spec.follow_last
    if spec.nofollow_mask and flags & spec.nofollow_mask:
        follow = False
    if spec.follow_mask and flags & spec.follow_mask:
        follow = True
    empty_ok = bool(spec.empty_path_mask and flags & spec.empty_path_mask)
    if name in _EXCLUSIVE:
        target = targets[0] if targets else None
        return _access(
            dirfd,
            args[syscall_table.operand(spec.path)],
            False,
            if_exists=errno.EEXIST,
            creates=True,
            parent=os.path.dirname(target) if target else None,
        )
    # Everything else needs its (first) path to exist: the file to change, remove, move, link
    # or run. A second path (the new name of a move or link) is not probed: its errors are
    # reported as EACCES (docs/security.md).
    return _access(dirfd, args[syscall_table.operand(spec.path)], follow, empty_ok)
