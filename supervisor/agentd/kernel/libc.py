"""libc's ``syscall`` and ``prctl``, declared once with their signatures (ctypes).

Owns the two C entry points the kernel bindings call directly: ``syscall(number, a..e)`` (up
to five integer or pointer arguments, unused ones zero) and ``prctl(option, a2..a5)``. They are
declared when this module is imported, so in the supervisor before any fork: a forked child only
calls them. A negative (``syscall``) or non-zero (``prctl``) result means failure, and
``last_errno()`` says why (ctypes keeps errno per thread, right after the call).
"""

from __future__ import annotations

import ctypes

__all__ = ["syscall", "prctl", "last_errno"]

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.argtypes = [
    ctypes.c_long,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]
_syscall.restype = ctypes.c_long
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int


def syscall(number: int, a: int = 0, b: int = 0, c: int = 0, d: int = 0, e: int = 0) -> int:
    """The raw system call ``number``; arguments are integers (addresses included)."""
    return _syscall(
        number,
        a & 0xFFFFFFFFFFFFFFFF,
        b & 0xFFFFFFFFFFFFFFFF,
        c & 0xFFFFFFFFFFFFFFFF,
        d & 0xFFFFFFFFFFFFFFFF,
        e & 0xFFFFFFFFFFFFFFFF,
    )


def prctl(option: int, a2: int = 0, a3: int = 0, a4: int = 0, a5: int = 0) -> int:
    return _prctl(option, a2, a3, a4, a5)


def last_errno() -> int:
    return ctypes.get_errno()
