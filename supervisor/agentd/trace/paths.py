"""Resolve a path the way the kernel will, as seen by a tracee.

Owns the one function every path-taking syscall decoder uses: ``resolve_tracee_path(pid, dirfd,
path, follow_last)``. A relative path starts at the tracee's cwd (``/proc/PID/cwd``) or at the
directory behind ``dirfd`` (``/proc/PID/fd/N``); components are walked one by one, ``..``
normalised against what has been resolved so far, and every symlink met is followed as the kernel
would (up to 40), except the last component when ``follow_last`` is False (O_NOFOLLOW,
AT_SYMLINK_NOFOLLOW, unlink, rename, creation of a new name). ``/proc/self`` and
``/proc/thread-self`` are rewritten to the tracee's own pid (the supervisor would otherwise see
itself), so ``/proc/self/root``, ``/proc/self/cwd``, ``/proc/self/fd/N``, ``/dev/fd/N`` and
``/dev/std*`` all end at their real targets. A descriptor that is not a file (``pipe:[..]``,
``socket:[..]``) resolves to that text. Missing components are kept lexically (a file about to be
created). Errors raise ``PathResolutionError``; callers deny on it. Stateless.
"""

from __future__ import annotations

import errno
import os
import stat

from agentd.kernel import procfs

__all__ = ["PathResolutionError", "resolve_tracee_path", "AT_FDCWD", "MAX_SYMLINKS"]

AT_FDCWD = -100
MAX_SYMLINKS = 40  # the kernel's MAXSYMLINKS: ELOOP beyond this
PATH_MAX = 4096


class PathResolutionError(OSError):
    """The path could not be resolved the way the kernel would resolve it."""


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError as exc:
        raise PathResolutionError(exc.errno, f"cannot read link {path}: {exc.strerror}") from None


def _fd_errno(exc: OSError) -> int:
    """What the kernel says of a descriptor /proc does not show: not open (EBADF)."""
    return errno.EBADF if exc.errno in (None, errno.ENOENT) else exc.errno


def _start_dir(pid: int, dirfd: int) -> str:
    """The absolute directory a relative path starts from."""
    if dirfd == AT_FDCWD:
        return _readlink(f"/proc/{pid}/cwd")
    return fd_target(pid, dirfd)


def fd_target(pid: int, fd: int) -> str:
    """What descriptor ``fd`` of ``pid`` refers to: a path, or ``pipe:[..]``-like text."""
    if fd < 0:
        raise PathResolutionError(errno.EBADF, f"pid {pid}: bad descriptor {fd}")
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError as exc:
        raise PathResolutionError(
            _fd_errno(exc), f"pid {pid}: descriptor {fd} is not open: {exc.strerror}"
        ) from None


def _walk_start(pid: int, dirfd: int, path: str, in_root: bool) -> tuple[list[str], list[str]]:
    """``(root, start)`` of a walk, as component lists: the root ``..`` cannot climb above (the
    dirfd's directory under RESOLVE_IN_ROOT, else ``/``) and where the walk begins (the root
    for an absolute path, else the cwd or the dirfd's directory)."""
    root: list[str] = []
    if in_root:
        root = _directory_components(pid, dirfd)
    if path.startswith("/") or in_root:
        return root, list(root)
    return root, _directory_components(pid, dirfd)


def _directory_components(pid: int, dirfd: int) -> list[str]:
    start = _start_dir(pid, dirfd)
    if not start.startswith("/"):
        # the dirfd is a pipe/socket/anon inode: the kernel says ENOTDIR
        raise PathResolutionError(errno.ENOTDIR, f"pid {pid}: descriptor {dirfd} is {start}")
    return [c for c in start.split("/") if c]


def resolve_tracee_path(
    pid: int,
    dirfd: int,
    path: str | bytes,
    follow_last: bool = True,
    empty_ok: bool = False,
    tgid: int | None = None,
    in_root: bool = False,
) -> str:
    """The absolute, normalised, symlink-resolved path ``path`` names for task ``pid``.

    ``dirfd`` is AT_FDCWD or a descriptor number of the tracee. ``empty_ok`` (AT_EMPTY_PATH)
    makes an empty path mean the descriptor itself. ``tgid`` (the thread group of ``pid``)
    is looked up in /proc when not given. ``in_root`` (openat2's RESOLVE_IN_ROOT) makes the
    directory behind ``dirfd`` the root of the walk: ``/``, absolute symlinks and ``..`` stay
    inside it.
    """
    # One walk on purpose: the symlink budget, the root of the walk and the component queue are
    # the state of a single loop, which pieces would have to pass back and forth.
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if "\0" in path:
        raise PathResolutionError(errno.EINVAL, "path contains a NUL byte")
    if path == "":
        if empty_ok:
            return fd_target(pid, dirfd) if dirfd != AT_FDCWD else _readlink(f"/proc/{pid}/cwd")
        raise PathResolutionError(errno.ENOENT, "empty path")
    if len(path) >= PATH_MAX:
        raise PathResolutionError(errno.ENAMETOOLONG, f"path of {len(path)} bytes")
    root, resolved = _walk_start(pid, dirfd, path, in_root)
    pending = [c for c in path.split("/") if c]
    must_be_dir = path.endswith("/")
    links = 0
    # Components are consumed from the front of `pending`; a symlink's target is pushed back
    # onto the front (and restarts at / when absolute), exactly the kernel's walk.
    pending.reverse()
    while pending:
        component = pending.pop()
        if component == ".":
            continue
        if component == "..":
            if len(resolved) > len(root):
                resolved.pop()
            continue
        resolved.append(component)
        is_last = not pending
        current = "/" + "/".join(resolved)
        # /proc/self and /proc/thread-self name the *caller*: substitute the tracee.
        if (
            not root
            and len(resolved) == 2
            and resolved[0] == "proc"
            and component in ("self", "thread-self")
        ):
            if tgid is None:
                tgid = procfs.tgid_of(pid)  # a thread's /proc/self is its process
            if component == "self":
                resolved[1] = str(tgid)
                continue
            if component == "thread-self":
                resolved[1:] = [str(tgid), "task", str(pid)]
                continue
        if is_last and not follow_last and not must_be_dir:
            break
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            continue  # created by this call, or ENOENT: either way the name is what it is
        except NotADirectoryError:
            continue
        except OSError as exc:
            raise PathResolutionError(
                exc.errno, f"cannot inspect {current}: {exc.strerror}"
            ) from None
        if not stat.S_ISLNK(st.st_mode):
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise PathResolutionError(
                errno.ELOOP, f"too many levels of symbolic links at {current}"
            )
        target = _readlink(current)
        resolved.pop()
        if root and (_is_magic_target(current, target) or current.startswith("/proc/")):
            # RESOLVE_IN_ROOT also refuses magic links (the kernel says EXDEV/ELOOP)
            raise PathResolutionError(errno.EXDEV, f"magic link {current} under RESOLVE_IN_ROOT")
        if not target.startswith("/"):
            if _is_magic_target(current, target):
                # /proc/PID/fd/N naming a pipe or socket: nothing further to walk
                if pending:
                    raise PathResolutionError(errno.ENOTDIR, f"{current} is {target}")
                return target
        else:
            resolved = list(root)
        pending.extend(reversed([c for c in target.split("/") if c]))
    result = "/" + "/".join(resolved)
    return result


def _is_magic_target(link: str, target: str) -> bool:
    """A /proc magic link whose target is not a path (``pipe:[123]``, ``anon_inode:[..]``)."""
    return link.startswith("/proc/") and (":" in target.split("/", 1)[0])
