"""TraceeMemory.read_cstring against this process's own memory (``/proc/<pid>/mem``): the
string and its truncation flag, and how much it asks the kernel to copy, which the kernel
does in full wherever the memory is mapped."""

from __future__ import annotations

import ctypes
import os

import pytest

from agentd.kernel import tracee_memory
from agentd.kernel.tracee_memory import PAGE_SIZE, MemoryReadError, TraceeMemory


def _buffer(size: int) -> tuple[ctypes.Array, int]:
    """A page-aligned buffer of ``size`` bytes (plus a page), and its aligned address."""
    raw = ctypes.create_string_buffer(size + PAGE_SIZE)
    base = ctypes.addressof(raw)
    return raw, base + (-base) % PAGE_SIZE


def _put(address: int, data: bytes) -> None:
    ctypes.memmove(address, data, len(data))


@pytest.fixture
def memory():
    reader = TraceeMemory(os.getpid())
    yield reader
    reader.close()


@pytest.fixture
def asked(monkeypatch):
    """The lengths read_cstring asks ``pread`` for."""
    lengths: list[int] = []
    real = os.pread

    def spy(fd, length, offset):
        lengths.append(length)
        return real(fd, length, offset)

    monkeypatch.setattr(tracee_memory.os, "pread", spy)
    return lengths


def test_a_short_string_costs_one_read_to_the_end_of_its_page(memory, asked):
    raw, page = _buffer(4 * PAGE_SIZE)
    address = page + PAGE_SIZE - 100
    _put(address, b"--crate-name\0")
    assert memory.read_cstring(address, 128 * 1024 + 1) == (b"--crate-name", False)
    assert asked == [100]  # not the 128 KiB limit


def test_a_string_across_pages_is_read_whole(memory, asked):
    raw, page = _buffer(8 * PAGE_SIZE)
    address = page + PAGE_SIZE - 10
    text = bytes(ord("a") + i % 26 for i in range(3 * PAGE_SIZE))
    _put(address, text + b"\0")
    assert memory.read_cstring(address, 128 * 1024 + 1) == (text, False)
    assert asked[0] == 10 and asked[1] == PAGE_SIZE and sum(asked) < 6 * PAGE_SIZE + 10


def test_no_nul_within_the_limit_is_truncated(memory):
    raw, page = _buffer(2 * PAGE_SIZE)
    _put(page, b"x" * (2 * PAGE_SIZE))
    data, truncated = memory.read_cstring(page + 5, 300)
    assert (data, truncated) == (b"x" * 300, True)


def test_unreadable_memory_before_the_nul_is_an_error(memory):
    with pytest.raises(MemoryReadError):
        memory.read_cstring(0, 4096)
