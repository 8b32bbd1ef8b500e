"""Classic BPF as seccomp uses it: instruction encoding, a label assembler and an interpreter.

This module owns the mechanism under the seccomp filter and nothing of its policy: the
``struct sock_filter`` encoding (u16 code, u8 jt, u8 jf, u32 k), an ``Assembler`` whose jumps name
labels (offsets are computed, conditional jumps farther than 255 instructions get JA trampolines),
the checks the kernel's loader applies, and ``execute`` / ``run``: an interpreter over a
``seccomp_data`` record, so a filter is tested as data without a kernel (gVisor's
``seccomp_test.go``). It knows only the instructions the filter builder emits (LD W ABS, ALU AND K,
JA, JEQ/JGT/JGE/JSET K, RET K) and rejects anything else loudly, in the assembler, the validator
and the interpreter alike.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from agentd.kernel.consts import (
    BPF_MAXINSNS,
    SECCOMP_DATA_ARGS_OFFSET,
    SECCOMP_DATA_SIZE,
)

# Opcode fields (linux/bpf_common.h, linux/filter.h).
BPF_LD = 0x00
BPF_ALU = 0x04
BPF_JMP = 0x05
BPF_RET = 0x06
BPF_W = 0x00
BPF_ABS = 0x20
BPF_AND = 0x50
BPF_JA = 0x00
BPF_JEQ = 0x10
BPF_JGT = 0x20
BPF_JGE = 0x30
BPF_JSET = 0x40
BPF_K = 0x00

LD_W_ABS = BPF_LD | BPF_W | BPF_ABS
ALU_AND_K = BPF_ALU | BPF_AND | BPF_K
JMP_JA = BPF_JMP | BPF_JA
JMP_JEQ_K = BPF_JMP | BPF_JEQ | BPF_K
JMP_JGT_K = BPF_JMP | BPF_JGT | BPF_K
JMP_JGE_K = BPF_JMP | BPF_JGE | BPF_K
JMP_JSET_K = BPF_JMP | BPF_JSET | BPF_K
RET_K = BPF_RET | BPF_K

CONDITIONAL_JUMPS = frozenset({JMP_JEQ_K, JMP_JGT_K, JMP_JGE_K, JMP_JSET_K})
SUPPORTED_OPCODES = frozenset({LD_W_ABS, ALU_AND_K, JMP_JA, RET_K} | CONDITIONAL_JUMPS)
MNEMONICS = {
    LD_W_ABS: "ld",
    ALU_AND_K: "and",
    JMP_JA: "ja",
    JMP_JEQ_K: "jeq",
    JMP_JGT_K: "jgt",
    JMP_JGE_K: "jge",
    JMP_JSET_K: "jset",
    RET_K: "ret",
}

U32_MASK = 0xFFFFFFFF
MAX_SHORT_JUMP = 255  # jt / jf are u8
SOCK_FILTER = struct.Struct("=HBBI")  # struct sock_filter, native byte order, 8 bytes
SECCOMP_DATA = struct.Struct("=IIQ6Q")  # struct seccomp_data, 64 bytes


class BpfError(ValueError):
    """A program the kernel would refuse, or one this module does not know how to run."""


@dataclass(frozen=True, slots=True)
class Instruction:
    """One ``struct sock_filter``."""

    code: int
    jt: int
    jf: int
    k: int

    def __post_init__(self) -> None:
        if not (
            0 <= self.code <= 0xFFFF
            and 0 <= self.jt <= 0xFF
            and 0 <= self.jf <= 0xFF
            and 0 <= self.k <= U32_MASK
        ):
            raise BpfError(f"field out of range in {self!r}")

    def pack(self) -> bytes:
        return SOCK_FILTER.pack(self.code, self.jt, self.jf, self.k)

    def __str__(self) -> str:
        name = MNEMONICS.get(self.code, f"op{self.code:#06x}")
        if self.code in CONDITIONAL_JUMPS:
            return f"{name} {self.k:#x} jt+{self.jt} jf+{self.jf}"
        if self.code == JMP_JA:
            return f"{name} +{self.k}"
        return f"{name} {self.k:#x}"


def encode(program: Sequence[Instruction]) -> bytes:
    """The bytes of a ``struct sock_filter[]`` the kernel reads through ``struct sock_fprog``."""
    return b"".join(instruction.pack() for instruction in program)


def decode(blob: bytes) -> list[Instruction]:
    """The inverse of ``encode``."""
    if len(blob) % SOCK_FILTER.size:
        raise BpfError(f"{len(blob)} bytes is not a whole number of instructions")
    return [Instruction(*fields) for fields in SOCK_FILTER.iter_unpack(blob)]


def disassemble(program: Sequence[Instruction]) -> str:
    """One line per instruction, with absolute jump targets: for reading a filter, not parsing."""
    lines = []
    for pc, instruction in enumerate(program):
        text = str(instruction)
        if instruction.code in CONDITIONAL_JUMPS:
            text = (
                f"{MNEMONICS[instruction.code]} {instruction.k:#x} "
                f"-> {pc + 1 + instruction.jt} else {pc + 1 + instruction.jf}"
            )
        elif instruction.code == JMP_JA:
            text = f"ja -> {pc + 1 + instruction.k}"
        lines.append(f"{pc:4d}: {text}")
    return "\n".join(lines)


def validate(program: Sequence[Instruction]) -> None:
    """Apply the checks of the kernel's ``bpf_check_classic`` and ``seccomp_check_filter`` that
    matter for the subset we emit; raise BpfError naming the instruction otherwise."""
    if not 1 <= len(program) <= BPF_MAXINSNS:
        raise BpfError(
            f"program has {len(program)} instructions; the kernel takes 1..{BPF_MAXINSNS}"
        )
    for pc, instruction in enumerate(program):
        code = instruction.code
        if code not in SUPPORTED_OPCODES:
            raise BpfError(f"instruction {pc}: unsupported opcode {code:#06x} ({instruction})")
        if code == LD_W_ABS and (instruction.k % 4 or instruction.k + 4 > SECCOMP_DATA_SIZE):
            raise BpfError(
                f"instruction {pc}: load at offset {instruction.k} is outside "
                f"seccomp_data or unaligned"
            )
        if code == JMP_JA and pc + 1 + instruction.k >= len(program):
            raise BpfError(f"instruction {pc}: ja +{instruction.k} jumps past the end")
        if code in CONDITIONAL_JUMPS and pc + 1 + max(instruction.jt, instruction.jf) >= len(
            program
        ):
            raise BpfError(f"instruction {pc}: {instruction} jumps past the end")
    if program[-1].code != RET_K:
        raise BpfError(
            "the last instruction must be a ret (the kernel refuses the program otherwise)"
        )


# --- seccomp_data and the interpreter -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SeccompData:
    """The record a seccomp filter reads: syscall number, audit arch, instruction pointer, args."""

    nr: int
    arch: int
    args: tuple[int, ...] = (0, 0, 0, 0, 0, 0)
    instruction_pointer: int = 0

    def pack(self) -> bytes:
        args = tuple(self.args) + (0,) * (6 - len(self.args))
        if len(args) != 6:
            raise BpfError(f"seccomp_data has 6 args, got {len(self.args)}")
        # nr is a C int: accept -1 as well as 0xffffffff.
        return SECCOMP_DATA.pack(
            self.nr & U32_MASK,
            self.arch & U32_MASK,
            self.instruction_pointer,
            *(arg & 0xFFFFFFFFFFFFFFFF for arg in args),
        )


@dataclass(frozen=True, slots=True)
class Execution:
    """What one run of a program did: the value it returned and how many instructions it ran."""

    result: int
    executed: int


def execute(program: Sequence[Instruction], data: SeccompData | bytes) -> Execution:
    """Run ``program`` on one ``seccomp_data`` record as the kernel would."""
    record = data.pack() if isinstance(data, SeccompData) else bytes(data)
    if len(record) != SECCOMP_DATA_SIZE:
        raise BpfError(f"seccomp_data is {SECCOMP_DATA_SIZE} bytes, got {len(record)}")
    accumulator = 0
    pc = 0
    executed = 0
    while True:
        if pc >= len(program):
            raise BpfError(f"fell off the end of the program at {pc}")
        instruction = program[pc]
        executed += 1
        code, k = instruction.code, instruction.k
        if code == LD_W_ABS:
            if k % 4 or k + 4 > SECCOMP_DATA_SIZE:
                raise BpfError(f"instruction {pc}: load at offset {k} outside seccomp_data")
            accumulator = int.from_bytes(record[k : k + 4], "little")
            pc += 1
        elif code == ALU_AND_K:
            accumulator &= k
            pc += 1
        elif code == JMP_JA:
            pc += 1 + k
        elif code in CONDITIONAL_JUMPS:
            if code == JMP_JEQ_K:
                taken = accumulator == k
            elif code == JMP_JGT_K:
                taken = accumulator > k
            elif code == JMP_JGE_K:
                taken = accumulator >= k
            else:
                taken = bool(accumulator & k)
            pc += 1 + (instruction.jt if taken else instruction.jf)
        elif code == RET_K:
            return Execution(k, executed)
        else:
            raise BpfError(f"instruction {pc}: unsupported opcode {code:#06x} ({instruction})")


def run(program: Sequence[Instruction], data: SeccompData | bytes) -> int:
    """The value ``program`` returns for ``data`` (a SECCOMP_RET_* action with its data)."""
    return execute(program, data).result


def arg_offset(index: int, high: bool) -> int:
    """Offset in seccomp_data of the low or high 32-bit word of ``args[index]`` (little endian)."""
    if not 0 <= index < 6:
        raise BpfError(f"syscall argument index {index} is not in 0..5")
    return SECCOMP_DATA_ARGS_OFFSET + 8 * index + (4 if high else 0)


# --- the assembler --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Label:
    name: str


@dataclass(frozen=True, slots=True)
class _Plain:
    code: int
    k: int


@dataclass(frozen=True, slots=True)
class _Goto:
    target: str


@dataclass(frozen=True, slots=True)
class _Branch:
    code: int
    k: int
    if_true: str
    if_false: str


_Item = _Label | _Plain | _Goto | _Branch


@dataclass
class Assembler:
    """Builds a program whose jumps name labels; ``assemble`` computes every offset.

    Conditional jumps carry labels for both outcomes (``None`` means the next instruction). BPF
    only jumps forward, so a label must be placed after every jump to it. A conditional jump that
    lands more than 255 instructions away is rewritten to jump to a nearby ``ja`` (32-bit offset).
    """

    _items: list[_Item] = field(default_factory=list)
    _label_count: int = 0

    def new_label(self, hint: str = "L") -> str:
        self._label_count += 1
        return f".{hint}.{self._label_count}"

    def label(self, name: str) -> None:
        self._items.append(_Label(name))

    def load_abs(self, offset: int) -> None:
        self._items.append(_Plain(LD_W_ABS, offset))

    def and_k(self, mask: int) -> None:
        self._items.append(_Plain(ALU_AND_K, mask & U32_MASK))

    def ret(self, value: int) -> None:
        self._items.append(_Plain(RET_K, value))

    def ja(self, target: str) -> None:
        self._items.append(_Goto(target))

    def jeq(self, k: int, if_true: str | None = None, if_false: str | None = None) -> None:
        self._branch(JMP_JEQ_K, k, if_true, if_false)

    def jgt(self, k: int, if_true: str | None = None, if_false: str | None = None) -> None:
        self._branch(JMP_JGT_K, k, if_true, if_false)

    def jge(self, k: int, if_true: str | None = None, if_false: str | None = None) -> None:
        self._branch(JMP_JGE_K, k, if_true, if_false)

    def jset(self, k: int, if_true: str | None = None, if_false: str | None = None) -> None:
        self._branch(JMP_JSET_K, k, if_true, if_false)

    def _branch(self, code: int, k: int, if_true: str | None, if_false: str | None) -> None:
        if not 0 <= k <= U32_MASK:
            raise BpfError(f"jump constant {k:#x} does not fit in 32 bits")
        if if_true is None or if_false is None:
            following = self.new_label("next")
            self._items.append(_Branch(code, k, if_true or following, if_false or following))
            self._items.append(_Label(following))
        else:
            self._items.append(_Branch(code, k, if_true, if_false))

    def assemble(self) -> list[Instruction]:
        self._check_jumps(self._items)  # on the program as written, before any rewriting
        items = self._thread_jumps(list(self._items))
        while True:
            positions = self._positions(items)
            far = self._far_branches(items, positions)
            if not far:
                break
            items = self._add_trampolines(items, positions, far)
        program = self._encode(items, self._positions(items))
        validate(program)
        return program

    def _check_jumps(self, items: list[_Item]) -> None:
        positions = self._positions(items)
        pc = 0
        for item in items:
            if isinstance(item, _Branch):
                self._offset(positions, pc, item.if_true)
                self._offset(positions, pc, item.if_false)
            elif isinstance(item, _Goto):
                self._offset(positions, pc, item.target)
            if not isinstance(item, _Label):
                pc += 1

    @staticmethod
    def _thread_jumps(items: list[_Item]) -> list[_Item]:
        """Peephole pass: a jump to a ``ja X`` goes straight to X, and a ``ja`` to a ``ret k``
        becomes that ``ret k``; each saves one executed instruction on that path."""
        landing: dict[str, _Item] = {}  # label -> the first instruction after it
        pending: list[str] = []
        for item in items:
            if isinstance(item, _Label):
                pending.append(item.name)
            else:
                landing.update(dict.fromkeys(pending, item))
                pending = []

        def final(target: str) -> str:
            seen = set()
            while isinstance(landing.get(target), _Goto) and target not in seen:
                seen.add(target)
                target = landing[target].target  # type: ignore[union-attr]
            return target

        threaded: list[_Item] = []
        for item in items:
            if isinstance(item, _Branch):
                item = _Branch(item.code, item.k, final(item.if_true), final(item.if_false))
            elif isinstance(item, _Goto):
                target = final(item.target)
                landed = landing.get(target)
                if isinstance(landed, _Plain) and landed.code == RET_K:
                    item = landed
                else:
                    item = _Goto(target)
            threaded.append(item)
        # Drop labels no jump names any more, then what no jump reaches: an instruction right
        # after a ret, a ja or a branch (both outcomes of a branch name labels) with no label
        # before it. Repeat: dropping a jump can orphan its label.
        while True:
            referenced = {
                target
                for item in threaded
                if isinstance(item, _Branch)
                for target in (item.if_true, item.if_false)
            }
            referenced |= {item.target for item in threaded if isinstance(item, _Goto)}
            reachable: list[_Item] = []
            for item in threaded:
                if isinstance(item, _Label):
                    if item.name in referenced:
                        reachable.append(item)
                    continue
                previous = reachable[-1] if reachable else None
                if isinstance(previous, (_Goto, _Branch)) or (
                    isinstance(previous, _Plain) and previous.code == RET_K
                ):
                    continue
                reachable.append(item)
            if reachable == threaded:
                return reachable
            threaded = reachable

    @staticmethod
    def _positions(items: list[_Item]) -> dict[str, int]:
        positions: dict[str, int] = {}
        pc = 0
        for item in items:
            if isinstance(item, _Label):
                if item.name in positions:
                    raise BpfError(f"label {item.name!r} defined twice")
                positions[item.name] = pc
            else:
                pc += 1
        for name, position in positions.items():
            if position >= pc:
                raise BpfError(f"label {name!r} is not followed by an instruction")
        return positions

    @staticmethod
    def _offset(positions: dict[str, int], pc: int, target: str) -> int:
        if target not in positions:
            raise BpfError(f"jump to undefined label {target!r}")
        offset = positions[target] - (pc + 1)
        if offset < 0:
            raise BpfError(f"backward jump to {target!r}: classic BPF only jumps forward")
        return offset

    def _far_branches(self, items: list[_Item], positions: dict[str, int]) -> set[int]:
        far = set()
        pc = 0
        for index, item in enumerate(items):
            if isinstance(item, _Label):
                continue
            if isinstance(item, _Branch):
                if (
                    self._offset(positions, pc, item.if_true) > MAX_SHORT_JUMP
                    or self._offset(positions, pc, item.if_false) > MAX_SHORT_JUMP
                ):
                    far.add(index)
            pc += 1
        return far

    def _add_trampolines(
        self, items: list[_Item], positions: dict[str, int], far: set[int]
    ) -> list[_Item]:
        rewritten: list[_Item] = []
        pc = 0
        for index, item in enumerate(items):
            if index not in far:
                rewritten.append(item)
                if not isinstance(item, _Label):
                    pc += 1
                continue
            assert isinstance(item, _Branch)
            trampolines: list[_Item] = []
            targets = []
            for target in (item.if_true, item.if_false):
                if self._offset(positions, pc, target) > MAX_SHORT_JUMP:
                    hop = self.new_label("hop")
                    trampolines += [_Label(hop), _Goto(target)]
                    targets.append(hop)
                else:
                    targets.append(target)
            # A near target stays valid: the trampolines (at most two) only move it further by
            # two, and a later pass rewrites the branch again if that pushed it past 255.
            rewritten.append(_Branch(item.code, item.k, targets[0], targets[1]))
            rewritten += trampolines
            pc += 1
        return rewritten

    def _encode(self, items: list[_Item], positions: dict[str, int]) -> list[Instruction]:
        program: list[Instruction] = []
        for item in items:
            if isinstance(item, _Label):
                continue
            pc = len(program)
            if isinstance(item, _Plain):
                program.append(Instruction(item.code, 0, 0, item.k))
            elif isinstance(item, _Goto):
                program.append(Instruction(JMP_JA, 0, 0, self._offset(positions, pc, item.target)))
            else:
                program.append(
                    Instruction(
                        item.code,
                        self._offset(positions, pc, item.if_true),
                        self._offset(positions, pc, item.if_false),
                        item.k,
                    )
                )
        return program


def assemble(build: Iterable[tuple]) -> list[Instruction]:
    """Assemble a list of ``(method, *args)`` tuples, e.g. ``[("ret", 0)]``: handy in tests."""
    assembler = Assembler()
    for method, *args in build:
        getattr(assembler, method)(*args)
    return assembler.assemble()
