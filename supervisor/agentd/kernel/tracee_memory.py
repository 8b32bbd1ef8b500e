"""Bounded reads of a tracee's memory (and the writes of the scratch copies).

Owns how the supervisor copies syscall arguments (paths, argv arrays, sockaddrs, msghdrs) out of a
stopped tracee: ``process_vm_readv(2)`` page by page, so that a string ending just before an
unmapped page is still read, with ``/proc/PID/mem`` as the fallback when the syscall is refused.
``TraceeMemory`` keeps ``/proc/PID/mem`` open for one task (one ``pread`` per read, no ctypes on
the hot path; reopened after exec, which replaces the address space); ``read_bytes`` reads once
from any task. Every read has an upper bound; ``TraceeMemory.read_cstring`` says whether it
stopped at the bound (``truncated``) so the caller can deny what it could not read completely.
"""

from __future__ import annotations

import ctypes
import errno
import os

__all__ = ["MemoryReadError", "TraceeMemory", "read_bytes", "PAGE_SIZE", "MAX_PATH_BYTES"]

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MAX_PATH_BYTES = 4096  # PATH_MAX, including the terminating NUL


class MemoryReadError(OSError):
    """The tracee's memory at an address could not be read."""


class _iovec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _Libc:
    """process_vm_readv bound lazily, once per process (a cache, not decision state)."""

    func = None

    @classmethod
    def readv(cls):
        if cls.func is None:
            libc = ctypes.CDLL(None, use_errno=True)
            f = libc.process_vm_readv
            f.argtypes = (
                ctypes.c_int,
                ctypes.POINTER(_iovec),
                ctypes.c_ulong,
                ctypes.POINTER(_iovec),
                ctypes.c_ulong,
                ctypes.c_ulong,
            )
            f.restype = ctypes.c_ssize_t
            cls.func = f
        return cls.func


def _readv_once(pid: int, addr: int, length: int) -> bytes:
    buf = ctypes.create_string_buffer(length)
    local = _iovec(ctypes.cast(buf, ctypes.c_void_p), length)
    remote = _iovec(addr, length)
    n = _Libc.readv()(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if n < 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EPERM):
            return _read_proc_mem(pid, addr, length)
        raise MemoryReadError(
            err, f"pid {pid}: cannot read {length} bytes at {addr:#x}: {os.strerror(err)}"
        )
    return buf.raw[:n]


def _read_proc_mem(pid: int, addr: int, length: int) -> bytes:
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise MemoryReadError(
            exc.errno, f"pid {pid}: cannot open /proc/{pid}/mem: {exc.strerror}"
        ) from None
    try:
        return os.pread(fd, length, addr)
    except OSError as exc:
        raise MemoryReadError(
            exc.errno, f"pid {pid}: cannot read {length} bytes at {addr:#x}: {exc.strerror}"
        ) from None
    finally:
        os.close(fd)


def read_bytes(pid: int, addr: int, length: int) -> bytes:
    """Exactly ``length`` bytes at ``addr``; MemoryReadError when any of them is unreadable."""
    if length == 0:
        return b""
    if addr == 0:
        raise MemoryReadError(errno.EFAULT, f"pid {pid}: NULL pointer")
    data = _readv_once(pid, addr, length)
    if len(data) != length:
        raise MemoryReadError(
            errno.EFAULT, f"pid {pid}: only {len(data)} of {length} bytes readable at {addr:#x}"
        )
    return data


_CSTRING_CHUNK_MAX = 16 * PAGE_SIZE  # the largest read of one string's later stretches
_ADDRESS_LIMIT = 1 << 63  # pread offsets are signed; user space ends far below this anyway


class TraceeMemory:
    """Reads of one task's memory through a kept-open ``/proc/PID/mem`` (process_vm_readv when
    that cannot be opened). ``close()`` it when the task exits or execs."""

    def __init__(self, pid: int):
        self.pid = pid
        self._fd: int | None = None
        self._wfd: int | None = None
        self._use_readv = False

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._wfd is not None:
            os.close(self._wfd)
            self._wfd = None

    def write_bytes(self, addr: int, data: bytes) -> None:
        """Write ``data`` at ``addr`` through ``/proc/PID/mem``, which writes read-only pages
        too (as a debugger does): the scratch copies and the install stubs (``scratch``).
        MemoryReadError (an OSError) when not all of it could be written."""
        if addr == 0 or addr >= _ADDRESS_LIMIT or addr + len(data) > _ADDRESS_LIMIT:
            raise MemoryReadError(errno.EFAULT, f"pid {self.pid}: bad address {addr:#x}")
        if self._wfd is None:
            try:
                self._wfd = os.open(f"/proc/{self.pid}/mem", os.O_WRONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise MemoryReadError(
                    exc.errno,
                    f"pid {self.pid}: cannot open /proc/{self.pid}/mem for writing: {exc.strerror}",
                ) from None
        view = memoryview(data)
        done = 0
        while done < len(data):
            try:
                n = os.pwrite(self._wfd, view[done:], addr + done)
            except OSError as exc:
                raise MemoryReadError(
                    exc.errno, f"pid {self.pid}: cannot write at {addr + done:#x}: {exc.strerror}"
                ) from None
            if n <= 0:
                raise MemoryReadError(
                    errno.EFAULT, f"pid {self.pid}: short write at {addr + done:#x}"
                )
            done += n

    def __del__(self) -> None:
        self.close()

    def _read_upto(self, addr: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``addr``: fewer when the mapping ends, MemoryReadError when
        ``addr`` itself is unreadable."""
        if addr == 0 or addr >= _ADDRESS_LIMIT or addr + length > _ADDRESS_LIMIT:
            raise MemoryReadError(errno.EFAULT, f"pid {self.pid}: bad address {addr:#x}")
        if self._use_readv:
            return _readv_once(self.pid, addr, min(length, PAGE_SIZE - addr % PAGE_SIZE))
        if self._fd is None:
            try:
                self._fd = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._use_readv = True
                return self._read_upto(addr, length)
        try:
            data = os.pread(self._fd, length, addr)
        except OSError as exc:
            raise MemoryReadError(
                exc.errno, f"pid {self.pid}: cannot read at {addr:#x}: {exc.strerror}"
            ) from None
        if not data:
            raise MemoryReadError(errno.EFAULT, f"pid {self.pid}: nothing readable at {addr:#x}")
        return data

    def read_bytes(self, addr: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``addr``; MemoryReadError when any of them is unreadable."""
        if length == 0:
            return b""
        data = b""
        while len(data) < length:
            chunk = self._read_upto(addr + len(data), length - len(data))
            data += chunk
        return data

    def read_cstring(self, addr: int, max_bytes: int = MAX_PATH_BYTES) -> tuple[bytes, bool]:
        """The NUL-terminated string at ``addr``, without the NUL: ``(data, truncated)``, where
        ``truncated`` says no NUL came within ``max_bytes``; MemoryReadError for NULL or
        unreadable memory before the NUL."""
        chunks: list[bytes] = []
        total = 0
        # Read to the end of the first page, then a growing stretch of pages: the NUL nearly
        # always comes early, and the kernel copies every byte asked for when the memory is
        # mapped: read with the 128 KiB limit of an argument, every argument of an exec cost
        # 128 KiB of copying (rustc's execs in a cargo build: a third of the supervisor's time).
        chunk = PAGE_SIZE - addr % PAGE_SIZE
        while total < max_bytes:
            data = self._read_upto(addr + total, min(chunk, max_bytes - total))
            chunk = min(max(chunk * 4, PAGE_SIZE), _CSTRING_CHUNK_MAX)
            nul = data.find(b"\0")
            if nul >= 0:
                chunks.append(data[:nul])
                return b"".join(chunks), False
            chunks.append(data)
            total += len(data)
        return b"".join(chunks), True

    def read_pointer_array(self, addr: int, max_items: int) -> tuple[list[int], bool]:
        """``(pointers, truncated)`` for the NULL-terminated pointer array at ``addr``."""
        if addr == 0:
            return [], False
        pointers: list[int] = []
        cursor = addr
        while len(pointers) < max_items:
            data = self._read_upto(cursor, min(PAGE_SIZE, (max_items - len(pointers)) * 8))
            data = data[: len(data) - len(data) % 8] or self.read_bytes(cursor, 8)
            for i in range(0, len(data), 8):
                ptr = int.from_bytes(data[i : i + 8], "little")
                if ptr == 0:
                    return pointers, False
                pointers.append(ptr)
            cursor += len(data)
        return pointers, True
