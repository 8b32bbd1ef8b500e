"""agentd.kernel.bpf: instruction encoding, the label assembler (with long jumps) and the interpreter."""

from __future__ import annotations

import pytest

from agentd.kernel import bpf
from agentd.kernel.bpf import Assembler, BpfError, Instruction, SeccompData

X86_64 = 0xC000003E


def data(nr: int = 0, arch: int = X86_64, args: tuple[int, ...] = (0,) * 6) -> SeccompData:
    return SeccompData(nr, arch, args)


def test_encoding_is_struct_sock_filter():
    instruction = Instruction(bpf.JMP_JEQ_K, 3, 7, 0xC000003E)
    blob = bpf.encode([instruction, Instruction(bpf.RET_K, 0, 0, 0x7FFF0000)])
    assert len(blob) == 16
    # u16 code, u8 jt, u8 jf, u32 k, little endian on x86_64
    assert blob[:8] == bytes([0x15, 0x00, 3, 7, 0x3E, 0x00, 0x00, 0xC0])
    assert bpf.decode(blob) == [instruction, Instruction(bpf.RET_K, 0, 0, 0x7FFF0000)]


def test_instruction_fields_are_range_checked():
    with pytest.raises(BpfError):
        Instruction(bpf.JMP_JEQ_K, 256, 0, 0)
    with pytest.raises(BpfError):
        Instruction(bpf.RET_K, 0, 0, 1 << 32)


def test_seccomp_data_layout():
    record = SeccompData(-1, X86_64, (1, 2, 3, 4, 5, 1 << 63), instruction_pointer=0x401000).pack()
    assert len(record) == 64
    assert record[0:4] == b"\xff\xff\xff\xff"  # nr is an int: -1
    assert int.from_bytes(record[4:8], "little") == X86_64
    assert int.from_bytes(record[8:16], "little") == 0x401000
    assert int.from_bytes(record[16:24], "little") == 1
    assert int.from_bytes(record[56:64], "little") == 1 << 63


def test_labels_and_fall_through():
    asm = Assembler()
    asm.load_abs(0)
    asm.jeq(39, "getpid")  # false: fall through
    asm.jge(100, "big", None)
    asm.ret(1)
    asm.label("getpid")
    asm.ret(2)
    asm.label("big")
    asm.ret(3)
    program = asm.assemble()
    assert bpf.run(program, data(39)) == 2
    assert bpf.run(program, data(5)) == 1
    assert bpf.run(program, data(100)) == 3
    assert bpf.run(program, data(0xFFFFFFFF)) == 3  # unsigned compare
    assert bpf.execute(program, data(5)).executed == 4


def test_and_jset_and_argument_words():
    asm = Assembler()
    asm.load_abs(bpf.arg_offset(0, high=False))
    asm.jset(0x00800000, "hit", None)
    asm.load_abs(bpf.arg_offset(1, high=True))
    asm.and_k(0xF0)
    asm.jeq(0x30, "high", None)
    asm.ret(0)
    asm.label("hit")
    asm.ret(1)
    asm.label("high")
    asm.ret(2)
    program = asm.assemble()
    assert bpf.run(program, data(args=(0x00800011,))) == 1
    assert bpf.run(program, data(args=(0x00800000 << 32,))) == 0  # the high word is another load
    assert bpf.run(program, data(args=(0, 0x3F << 32))) == 2
    assert bpf.run(program, data(args=(0, 0x3F))) == 0


def test_assembler_errors_are_loud():
    asm = Assembler()
    asm.ja("nowhere")
    asm.ret(0)
    with pytest.raises(BpfError, match="undefined label 'nowhere'"):
        asm.assemble()

    asm = Assembler()
    asm.label("top")
    asm.ret(0)
    asm.ja("top")
    asm.ret(0)
    with pytest.raises(BpfError, match="only jumps forward"):
        asm.assemble()

    asm = Assembler()
    asm.label("x")
    asm.ret(0)
    asm.label("x")
    asm.ret(1)
    with pytest.raises(BpfError, match="defined twice"):
        asm.assemble()

    asm = Assembler()
    asm.load_abs(0)
    with pytest.raises(BpfError, match="last instruction must be a ret"):
        asm.assemble()

    asm = Assembler()
    asm.load_abs(2)  # unaligned: the kernel refuses
    asm.ret(0)
    with pytest.raises(BpfError, match="unaligned"):
        asm.assemble()


@pytest.mark.parametrize("distance", [254, 255, 256, 300, 1000])
def test_long_conditional_jumps_get_trampolines(distance):
    asm = Assembler()
    asm.load_abs(0)
    asm.jeq(1, "far_true", None)
    asm.jeq(2, "far_true", None)
    for filler in range(distance):
        asm.jeq(1000 + filler, "far_false", None)  # reachable, distinct: nothing folds
    asm.ret(0xAAAA)
    asm.label("far_false")
    asm.ret(0xFA15E)
    asm.label("far_true")
    asm.ret(0x7E5)
    program = asm.assemble()
    assert all(instruction.jt <= 255 and instruction.jf <= 255 for instruction in program)
    assert bpf.run(program, data(1)) == 0x7E5
    assert bpf.run(program, data(0)) == 0xAAAA
    assert bpf.run(program, data(2)) == 0x7E5
    assert bpf.run(program, data(1000 + distance - 1)) == 0xFA15E
    if distance > 255:
        assert any(instruction.code == bpf.JMP_JA for instruction in program)


def test_one_jump_over_3000_instructions():
    asm = Assembler()
    asm.load_abs(0)
    asm.jeq(7, "end", None)
    for _ in range(3000):
        asm.load_abs(4)  # straight-line filler
    asm.ret(1)
    asm.label("end")
    asm.ret(2)
    program = asm.assemble()
    assert len(program) == 3005  # one JA trampoline
    assert bpf.execute(program, data(7)) == bpf.Execution(2, 4)
    assert bpf.execute(program, data(8)).result == 1


def test_jump_threading_and_dead_code():
    asm = Assembler()
    asm.load_abs(0)
    asm.jeq(1, "via", "deny")
    asm.label("via")
    asm.ja("allow")
    asm.ret(0xDEAD)  # unreachable
    asm.label("deny")
    asm.ret(0x50001)
    asm.label("allow")
    asm.ret(0x7FFF0000)
    program = asm.assemble()
    assert 0xDEAD not in [instruction.k for instruction in program]
    assert not any(instruction.code == bpf.JMP_JA for instruction in program)
    assert bpf.execute(program, data(1)) == bpf.Execution(0x7FFF0000, 3)
    assert bpf.run(program, data(2)) == 0x50001


def test_interpreter_rejects_unknown_instructions():
    ldx_imm = Instruction(0x01, 0, 0, 5)  # BPF_LDX | BPF_IMM: valid BPF, not ours
    program = [ldx_imm, Instruction(bpf.RET_K, 0, 0, 0)]
    with pytest.raises(BpfError, match="unsupported opcode"):
        bpf.execute(program, data())
    with pytest.raises(BpfError, match="unsupported opcode"):
        bpf.validate(program)
    with pytest.raises(BpfError, match="outside seccomp_data"):
        bpf.execute([Instruction(bpf.LD_W_ABS, 0, 0, 64), Instruction(bpf.RET_K, 0, 0, 0)], data())
    with pytest.raises(BpfError, match="fell off the end"):
        bpf.execute([Instruction(bpf.LD_W_ABS, 0, 0, 0)], data())
    with pytest.raises(BpfError, match="jumps past the end"):
        bpf.validate([Instruction(bpf.JMP_JA, 0, 0, 5), Instruction(bpf.RET_K, 0, 0, 0)])
    with pytest.raises(BpfError, match="1..4096"):
        bpf.validate([Instruction(bpf.RET_K, 0, 0, 0)] * 4097)


def test_disassemble_names_targets():
    program = bpf.assemble([("load_abs", 4), ("jeq", X86_64, None, "kill"), ("ret", 0x7FFF0000),
                            ("label", "kill"), ("ret", 0x80000000)])
    text = bpf.disassemble(program)
    assert "jeq 0xc000003e -> 2 else 3" in text
    assert text.splitlines()[0] == "   0: ld 0x4"
