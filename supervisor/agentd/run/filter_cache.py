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

from .policy_cache import cache_dir, cache_enabled, evict, private_dir, read_private, write_private

__all__ = ["load", "store", "MAX_ENTRIES"]

MAX_ENTRIES = 16
_MAGIC = b"agentd-seccomp-program 1 "
_SUFFIX = ".bpf"


def _path(directory: str, fingerprint: str) -> str:
    return os.path.join(directory, fingerprint[:32] + _SUFFIX)


def load(fingerprint: str) -> bytes | None:
    """The encoded program stored for ``fingerprint``, or None."""
    if not cache_enabled():
        return None
    directory = cache_dir()
    try:
        if not private_dir(directory, create=False):
            return None
        data = read_private(_path(directory, fingerprint))
    except OSError:
        return None
    if data is None:
        return None
    header, _, blob = data.partition(b"\n")
    if header != _MAGIC + fingerprint.encode():
        return None
    return blob or None


def store(fingerprint: str, blob: bytes) -> None:
    """Keep ``blob`` for ``fingerprint`` (and at most MAX_ENTRIES programs in all)."""
    if not cache_enabled():
        return
    directory = cache_dir()
    try:
        if private_dir(directory, create=True):
            write_private(
                _path(directory, fingerprint), _MAGIC + fingerprint.encode() + b"\n" + blob
            )
            evict(directory, _SUFFIX, MAX_ENTRIES)
    except OSError:
        pass
