"""statx(2) through ctypes: the birth time of a file, which ``os.stat`` does not give.

Owns one question the supervisor asks the kernel: when was this inode created, and what is it
(``birth_and_mode``)? agentd uses it to tell the files an agent made during its run from the files
that were there before (``trace.decode``: the ``created_by_agent`` and ``preexisting``
conditions). The kernel keeps a birth time on ext4, XFS, btrfs, tmpfs and overlayfs over those;
where the file system keeps none (NFS, 9p, FAT), the answer is None and the caller treats the file
as older than the run.
"""

from __future__ import annotations

import ctypes
import os
import struct
import time

__all__ = ["birth_and_mode", "birth_time_ns", "coarse_now_ns"]

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_STATX_DONT_SYNC = 0x4000  # a network file system may answer from its cache
STATX_TYPE = 0x1
STATX_MODE = 0x2
STATX_BTIME = 0x800
CLOCK_REALTIME_COARSE = 5  # <linux/time.h>; Python's time module does not name it
STATX_SIZE = 256  # sizeof(struct statx)
_MASK = struct.Struct("<I")
_BTIME = struct.Struct("<qI")  # struct statx_timestamp at offset 80: tv_sec, tv_nsec
_BTIME_OFFSET = 80
_MODE = struct.Struct("<H")  # stx_mode at offset 28
_MODE_OFFSET = 28

_libc = ctypes.CDLL(None, use_errno=True)
_statx = _libc.statx
_statx.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p)
_statx.restype = ctypes.c_int


def birth_and_mode(path: str, follow: bool = False) -> tuple[int | None, int]:
    """``(birth time, st_mode)`` of ``path``: the birth time in nanoseconds since the epoch, or
    None when the file system keeps none. Raises ``OSError`` when the file cannot be inspected
    (ENOENT, ...)."""
    buffer = ctypes.create_string_buffer(STATX_SIZE)
    flags = AT_STATX_DONT_SYNC | (0 if follow else AT_SYMLINK_NOFOLLOW)
    if (
        _statx(AT_FDCWD, os.fsencode(path), flags, STATX_BTIME | STATX_TYPE | STATX_MODE, buffer)
        != 0
    ):
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error), path)
    (mask,) = _MASK.unpack_from(buffer, 0)
    (mode,) = _MODE.unpack_from(buffer, _MODE_OFFSET)
    if not mask & STATX_BTIME:
        return None, mode
    seconds, nanoseconds = _BTIME.unpack_from(buffer, _BTIME_OFFSET)
    return seconds * 1_000_000_000 + nanoseconds, mode


def birth_time_ns(path: str, follow: bool = False) -> int | None:
    """The birth time of ``path`` (``birth_and_mode``)."""
    return birth_and_mode(path, follow)[0]


def coarse_now_ns() -> int:
    """Now, on the coarse clock the kernel stamps most new inodes with (fine-grained stamps are
    never earlier): a file created after this call has a birth time at or after its value."""
    return time.clock_gettime_ns(CLOCK_REALTIME_COARSE)
