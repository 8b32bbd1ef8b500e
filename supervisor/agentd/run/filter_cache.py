"""A per-user cache of compiled seccomp programs, so that ``agentd run`` compiles its filter once.

Owns ``load(fingerprint)`` and ``store(fingerprint, blob)``. Compiling the filter means
importing the compiler and its BPF assembler and running them (~12 ms of a ~100 ms start-up);
a hit reads a few kilobytes. The ``fingerprint`` (``run/supervise.filter_fingerprint``) is a
SHA-256 over everything the program is made from: the profile's bytes, the traced names, the IPC
setting, and the size and mtime of every source file of ``agentd.kernel`` and of the modules
that add rules (the syscall table, ``run/supervise``). A changed input is another entry.

The entries live beside the policy cache's (``policy_cache.cache_dir``) and are trusted the same
way, because a program is the sandbox: read only from a directory owned by us and closed to
others, from a regular file owned by us that no one else may write, opened without following a
symlink; ``agentd run`` protects the directory (and the directories above it) from the agent
(``decide.containment_of_protected``). An entry holds a header line with the fingerprint, then
the encoded program (``struct sock_filter[]``); anything else is a miss. ``AGENTD_POLICY_CACHE=0``
turns this cache off with the policy cache. Errors of the cache are never raised: a miss
compiles.
"""

from __future__ import annotations

import os
import stat

from .policy_cache import cache_dir, private_dir

__all__ = ["load", "store", "MAX_ENTRIES"]

MAX_ENTRIES = 16
_MAGIC = b"agentd-seccomp-program 1 "
_SUFFIX = ".bpf"


def enabled() -> bool:
    return os.environ.get("AGENTD_POLICY_CACHE", "1") != "0"


def _path(directory: str, fingerprint: str) -> str:
    return os.path.join(directory, fingerprint[:32] + _SUFFIX)


def load(fingerprint: str) -> bytes | None:
    """The encoded program stored for ``fingerprint``, or None."""
    if not enabled():
        return None
    directory = cache_dir()
    try:
        if not private_dir(directory, create=False):
            return None
        fd = os.open(_path(directory, fingerprint), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if (
                info.st_uid != os.geteuid()
                or info.st_mode & 0o022
                or not stat.S_ISREG(info.st_mode)
            ):
                return None
            data = handle.read(1 << 20)
    except OSError:
        return None
    header, _, blob = data.partition(b"\n")
    if header != _MAGIC + fingerprint.encode():
        return None
    return blob or None


def store(fingerprint: str, blob: bytes) -> None:
    """Keep ``blob`` for ``fingerprint`` (and at most MAX_ENTRIES programs in all)."""
    if not enabled():
        return
    directory = cache_dir()
    path = _path(directory, fingerprint)
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        if not private_dir(directory, create=True):
            return
        fd = os.open(
            temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        with os.fdopen(fd, "wb") as handle:
            handle.write(_MAGIC + fingerprint.encode() + b"\n" + blob)
        os.replace(temporary, path)
        _evict(directory)
    except OSError:
        try:
            os.unlink(temporary)
        except OSError:
            pass


def _evict(directory: str) -> None:
    entries = [entry for entry in os.scandir(directory) if entry.name.endswith(_SUFFIX)]
    if len(entries) <= MAX_ENTRIES:
        return
    entries.sort(key=lambda entry: entry.stat(follow_symlinks=False).st_mtime_ns)
    for entry in entries[: len(entries) - MAX_ENTRIES]:
        os.unlink(entry.path)
