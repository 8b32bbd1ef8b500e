"""Fuzz target: what a tracee hands the decoder (``agentd.trace.decode.decode_syscall``): every
syscall of the table with registers and tracee memory chosen by hypothesis.

Feeds: a stand-in ``TraceeMemory`` whose address space is a few regions hypothesis fills: paths
(NUL-terminated or not, running into unmapped memory), argv pointer arrays (NULL-terminated or
not, pointing at strings or at nothing), sockaddrs of every family and length, msghdr/mmsghdr
arrays whose name pointers point anywhere, struct open_how, random bytes; registers that point
into them, at NULL, just before the end of a region, or hold any 64-bit value (fds, flags,
pids). The real bounded readers of ``kernel/tracee_memory`` run on top of it (only the page read
is stood in). Paths resolve against a scratch directory (files, a directory, symlinks, a symlink
loop) in this process's own /proc view; nothing is written.

Asserts the decoder's contract (fail closed): a ``DecodedSyscall`` whose actions are ``Action``
(a known action type, a string target) and whose signal targets are ``SignalTarget``, or a
``DecodeError`` with a message (the session denies with it); never any other exception.
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest
from fuzz_settings import fuzz
from hypothesis import event, given
from hypothesis.control import currently_in_test_context
from hypothesis import strategies as st

from agent_os.action_types import ACTION_TYPES
from agentd.kernel import tracee_memory
from agentd.trace import syscall_table
from agentd.trace.decode import Action, DecodedSyscall, DecodeError, SignalTarget, Tracee, decode_syscall

BASE = 0x7F0000000000
STRIDE = 0x100000
PAGE = tracee_memory.PAGE_SIZE
AT_FDCWD = (1 << 64) - 100
NAMES = sorted(syscall_table.TABLE)


class FakeMemory(tracee_memory.TraceeMemory):
    """A tracee address space of a few regions; everything else is unmapped (EFAULT). Only the
    page read is stood in: ``read_bytes``, ``read_cstring`` and ``read_pointer_array`` are the
    real ones."""

    def __init__(self, regions: list[bytes]):
        super().__init__(os.getpid())
        self.regions = {BASE + i * STRIDE: data for i, data in enumerate(regions)}

    def _read_upto(self, addr: int, length: int) -> bytes:
        for start, data in self.regions.items():
            if start <= addr < start + len(data):
                offset = addr - start
                chunk = min(length, len(data) - offset, PAGE - addr % PAGE)
                return data[offset:offset + chunk]
        raise tracee_memory.MemoryReadError(errno.EFAULT, f"nothing mapped at {addr:#x}")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("decode")
    (root / "dir").mkdir()
    (root / "file").write_text("#!/bin/sh\necho\n")
    (root / "file").chmod(0o755)
    (root / "elf").write_bytes(b"\x7fELF" + b"\x00" * 60)
    (root / "link").symlink_to("file")
    (root / "dangling").symlink_to("nowhere")
    (root / "loop").symlink_to("loop")
    (root / "dir" / "up").symlink_to("../..")
    return root


COMPONENTS = st.sampled_from(["dir", "file", "elf", "link", "dangling", "loop", "up", "..", ".",
                              "", "new", "a" * 300, "x\udcff"])


@st.composite
def paths(draw, root: Path) -> bytes:
    parts = draw(st.lists(COMPONENTS, max_size=5))
    prefix = draw(st.sampled_from([str(root), str(root), "", "/"]))
    text = "/".join([prefix, *parts]) if prefix else "/".join(parts)
    return os.fsencode(text)


def address(index: int, offset: int = 0) -> int:
    return BASE + index * STRIDE + offset


@st.composite
def sockaddrs(draw, root: Path) -> bytes:
    family = draw(st.sampled_from([0, 1, 2, 10, 16, 17, 40, 38, 255, 65535]))
    if family == 1:
        body = draw(st.one_of(paths(root), st.binary(max_size=20)))
        body = draw(st.sampled_from([body, b"\0" + body, body + b"\0junk", b""]))
    else:
        body = draw(st.binary(max_size=30))
    return struct.pack("<H", family) + body


@st.composite
def tracee_input(draw, root: Path):
    """(syscall name, registers, regions, whether a run started)."""
    name = draw(st.sampled_from(NAMES))
    count = draw(st.integers(1, 4))
    regions: list[bytes] = []
    for _ in range(count):
        kind = draw(st.sampled_from(["path", "path", "pointers", "sockaddr", "msghdr", "bytes"]))
        if kind == "path":
            data = draw(paths(root)) + draw(st.sampled_from([b"\0", b"\0", b""]))
        elif kind == "pointers":
            targets = draw(st.lists(st.integers(0, 3), max_size=4))
            data = b"".join(struct.pack("<Q", address(i, draw(st.integers(0, 3)))) for i in targets)
            data += draw(st.sampled_from([b"\0" * 8, b"\0" * 8, b"", b"\0" * 3]))
        elif kind == "sockaddr":
            data = draw(sockaddrs(root))
        elif kind == "msghdr":
            records = []
            for _ in range(draw(st.integers(1, 3))):
                name_ptr = draw(st.sampled_from([0, address(draw(st.integers(0, 3))),
                                                 draw(st.integers(0, 2**64 - 1))]))
                namelen = draw(st.sampled_from([0, 2, 16, 28, 110, 128, 2**32 - 1]))
                stride = draw(st.sampled_from([56, 64]))
                records.append(struct.pack("<QI", name_ptr, namelen).ljust(stride, b"\0"))
            data = b"".join(records)
        else:
            data = draw(st.binary(min_size=1, max_size=64))
        regions.append(data)
    registers = []
    for _ in range(6):
        choice = draw(st.sampled_from(["pointer", "pointer", "end", "small", "fd", "any", "null"]))
        if choice == "pointer":
            registers.append(address(draw(st.integers(0, count - 1))))
        elif choice == "end":
            index = draw(st.integers(0, count - 1))
            registers.append(address(index, max(0, len(regions[index]) - draw(st.integers(0, 8)))))
        elif choice == "small":
            registers.append(draw(st.integers(0, 16)))
        elif choice == "fd":
            registers.append(draw(st.sampled_from([AT_FDCWD, 0, 1, 2, 999, (1 << 64) - 1,
                                                   (1 << 32) - 1])))
        elif choice == "any":
            registers.append(draw(st.integers(0, 2**64 - 1)))
        else:
            registers.append(0)
    return name, tuple(registers), regions, draw(st.booleans())


def check_decode(name: str, registers: tuple[int, ...], regions: list[bytes],
                 started: bool = False) -> None:
    memory = FakeMemory(regions)
    tracee = Tracee(os.getpid(), os.getpid(), memory,
                    run_started_ns=0 if started else None)
    nr = 0
    try:
        decoded = decode_syscall(tracee, name, nr, registers)
    except DecodeError as exc:
        assert str(exc), name
        _note("DecodeError")
        return
    assert isinstance(decoded, DecodedSyscall)
    for action in decoded.actions:
        assert isinstance(action, Action)
        assert action.action_type in ACTION_TYPES, action
        assert isinstance(action.target, str), action
    for target in decoded.signal_targets:
        assert isinstance(target, SignalTarget) and target.kind in ("pid", "pgrp", "all")
    _note("actions" if decoded.actions else "signal targets" if decoded.signal_targets
          else "nothing to judge")


def _note(outcome: str) -> None:
    if currently_in_test_context():  # the plain tests below share check_decode
        event(outcome)


@fuzz(600)
@given(st.data())
def test_fuzz_every_syscall_with_tracee_chosen_memory(scratch, data):
    check_decode(*data.draw(tracee_input(scratch)))


@pytest.mark.parametrize("name", NAMES)
def test_every_syscall_with_unmapped_pointers_fails_closed(name):
    check_decode(name, (BASE, BASE + 8, BASE + 16, BASE + 24, BASE + 32, BASE + 40), [])


@pytest.mark.parametrize("family", [0, 1, 2, 10, 16, 38])
@pytest.mark.parametrize("length", [0, 1, 2, 3, 7, 8, 23, 24, 110, 128, 4096])
def test_sockaddrs_cut_anywhere(scratch, family, length):
    raw = (struct.pack("<H", family) + os.fsencode(str(scratch / "file")) + b"\0" * 200)[:length]
    for name in ("connect", "sendto", "bind"):
        spec = syscall_table.TABLE[name]
        registers = [0] * 6
        registers[syscall_table.operand(spec.addr)] = BASE
        registers[syscall_table.operand(spec.addrlen)] = length
        check_decode(name, tuple(registers), [raw], False)
