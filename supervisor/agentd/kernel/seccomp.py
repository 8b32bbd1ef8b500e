"""The seccomp-bpf filter of ``agentd run``: data, compiled to BPF, installed in the child.

This module owns the question the kernel answers on every syscall of the agent before the tracer
sees anything: refuse it here (a baseline denial), stop for the tracer (SECCOMP_RET_TRACE), or let
it run. A ``FilterSpec`` (traced names, denied names, argument rules) is data; ``build_filter``
compiles it with the assembler of ``agentd.kernel.bpf`` into a program that checks the architecture
first
(ia32 and x32 are killed), then finds the syscall number in a binary search tree of JGE over
number ranges. ``TRACER_INVARIANTS`` are denials every filter carries whatever the profile says,
because without them a process escapes the tracer. ``load_profile`` reads the OCI/Docker seccomp
profile JSON subset we support. ``prepare`` compiles in the parent; ``PreparedFilter.install``
applies it in the freshly forked child (no_new_privs, then seccomp(2)). ``probe_kernel`` says what
the kernel lacks. Why a builder of our own rather than libseccomp: docs/architecture.md.
"""

from __future__ import annotations

import errno as errno_codes
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeGuard

from agentd.kernel import bpf, ioctl_ledger
from agentd.kernel.consts import (
    AUDIT_ARCH_X86_64,
    CLONE_UNTRACED,
    PER_LINUX,
    PERSONALITY_QUERY,
    SECCOMP_DATA_ARCH_OFFSET,
    SECCOMP_DATA_NR_OFFSET,
    SECCOMP_FILTER_FLAG_NEW_LISTENER,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_KILL_PROCESS,
    SECCOMP_RET_TRACE,
    TIOCLINUX,
    TIOCSTI,
    X32_SYSCALL_BIT,
)
from agentd.kernel.seccomp_install import InstallableFilter, probe_kernel
from agentd.kernel.syscall_numbers import MAX_SYSCALL_NR, SYSCALL_NAMES, SYSCALL_NUMBERS

U64_MASK = 0xFFFFFFFFFFFFFFFF
MAX_ERRNO = 4095  # SECCOMP_RET_DATA holds 16 bits, but the kernel only honours -4095..-1


# --- the filter as data --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Denial:
    """How the kernel refuses a syscall: fail it with ``errno``; errno None kills the process."""

    errno: int | None

    def __post_init__(self) -> None:
        if self.errno is not None and not 1 <= self.errno <= MAX_ERRNO:
            raise ValueError(f"errno {self.errno} is not in 1..{MAX_ERRNO}")

    @property
    def action(self) -> int:
        if self.errno is None:
            return SECCOMP_RET_KILL_PROCESS
        return SECCOMP_RET_ERRNO | self.errno

    def __str__(self) -> str:
        if self.errno is None:
            return "KILL_PROCESS"
        return f"ERRNO({errno_codes.errorcode.get(self.errno, self.errno)})"


KILL_PROCESS = Denial(None)
EPERM = Denial(errno_codes.EPERM)

# socket(2): the type's low nibble (SOCK_TYPE_MASK) is the type, the rest are flags.
AF_INET, AF_INET6, AF_PACKET = 2, 10, 17
SOCK_RAW = 3
SOCK_PACKET = 10
SOCK_TYPE_MASK = 0xF
ENOSYS = Denial(errno_codes.ENOSYS)

# mknod(2)'s mode: the file type is S_IFMT of it (the kernel truncates mode to umode_t).
S_IFMT, S_IFCHR, S_IFBLK = 0o170000, 0o020000, 0o060000
F_SETOWN_EX = 15  # fcntl: struct f_owner_ex {type, pid} *, in memory
F_SETFL, O_ASYNC = 4, 0o20000  # fcntl(fd, F_SETFL, flags): O_ASYNC turns SIGIO on
F_SETLEASE, F_UNLCK = 1024, 2  # fcntl(fd, F_SETLEASE, type): F_UNLCK drops a lease


@dataclass(frozen=True, slots=True)
class Untraced:
    """The outcome of an argument rule that lets a traced syscall run without a tracer stop, e.g.
    ``sendto`` with no destination address (a connected socket: its connect was already checked)."""

    @property
    def action(self) -> int:
        return SECCOMP_RET_ALLOW

    def __str__(self) -> str:
        return "ALLOW (untraced)"


UNTRACED = Untraced()

ARG_OPS = frozenset({"eq", "ne", "masked_eq", "any_bits"})


@dataclass(frozen=True, slots=True)
class ArgCondition:
    """One test on syscall argument ``index``.

    ``eq`` / ``ne``: the argument equals / differs from ``value``. ``masked_eq``: ``arg & mask ==
    value``. ``any_bits``: ``arg & value != 0``. ``width`` 32 compares only the low 32 bits: use it
    when the kernel reads the argument as a 32-bit int (``ioctl`` cmd, ``personality``, ``clone``
    flags), or the upper half lets a caller walk past an ``eq`` rule the kernel would still match.
    """

    index: int
    op: str
    value: int
    mask: int = U64_MASK
    width: int = 64

    def __post_init__(self) -> None:
        if self.op not in ARG_OPS:
            raise ValueError(f"unknown argument op {self.op!r} (known: {sorted(ARG_OPS)})")
        if not 0 <= self.index < 6:
            raise ValueError(f"argument index {self.index} is not in 0..5")
        if self.width not in (32, 64):
            raise ValueError(f"argument width {self.width} is not 32 or 64")
        if not (0 <= self.value <= U64_MASK and 0 <= self.mask <= U64_MASK):
            raise ValueError(f"argument value {self.value:#x} / mask {self.mask:#x} is not a u64")


@dataclass(frozen=True, slots=True)
class ArgRule:
    """When every condition in ``when`` holds, ``syscall`` gets ``outcome``: a Denial (refused in
    the kernel), or UNTRACED (allowed without a tracer stop, for a syscall the tracer traces)."""

    syscall: str
    when: tuple[ArgCondition, ...]
    outcome: Denial | Untraced
    reason: str = ""


def _frozen_mapping(mapping: Mapping[str, Denial]) -> Mapping[str, Denial]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class FilterSpec:
    """What the filter does, as data.

    Precedence per syscall: an entry in ``denied`` wins; then the denying ``arg_rules`` in order
    (the first whose conditions all hold refuses); then the UNTRACED rules (the first that holds
    allows without a stop); then TRACE if the name is in ``traced``; else ALLOW.
    """

    traced: frozenset[str] = frozenset()
    denied: Mapping[str, Denial] = field(default_factory=dict)
    arg_rules: tuple[ArgRule, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "traced", frozenset(self.traced))
        object.__setattr__(self, "denied", _frozen_mapping(self.denied))
        object.__setattr__(self, "arg_rules", tuple(self.arg_rules))

    def merged(self, other: FilterSpec) -> FilterSpec:
        """This spec with ``other`` added: both sets of denials and rules hold (``other``'s errno
        wins where both deny the same syscall unconditionally)."""
        return FilterSpec(
            traced=self.traced | other.traced,
            denied={**self.denied, **other.denied},
            arg_rules=self.arg_rules + other.arg_rules,
        )

    def names(self) -> set[str]:
        return set(self.traced) | set(self.denied) | {rule.syscall for rule in self.arg_rules}


# Denials that hold whatever profile the user passes: each one closes a way around the tracer or
# out of the sandbox, so a profile may add to them but never lift them (load_profile refuses an
# ALLOW for them). The default profile repeats them, with the same reasons, so that it reads whole.
TRACER_INVARIANTS = FilterSpec(
    denied={
        # clone3 passes its flags in memory (struct clone_args) that a seccomp filter cannot read,
        # so CLONE_UNTRACED cannot be checked; ENOSYS makes glibc fall back to clone(2), whose
        # flags are a register we can check.
        "clone3": ENOSYS,
        # io_uring performs opens, reads, writes and connects from kernel workers: no syscall
        # for the tracer to stop. libuv, tokio and liburing users fall back to plain syscalls.
        "io_uring_setup": EPERM,
        "io_uring_enter": EPERM,
        "io_uring_register": EPERM,
        # A traced process cannot be traced again, but could attach to processes outside the
        # agent tree; process_vm_writev rewrites a sibling's memory between check and use.
        "ptrace": EPERM,
        "process_vm_readv": EPERM,
        "process_vm_writev": EPERM,
        # Opens a file by handle, with no path for the policy to see.
        "open_by_handle_at": EPERM,
        # Takes a descriptor out of another process (the supervisor's audit log, a sibling's
        # socket).
        "pidfd_getfd": EPERM,
    },
    arg_rules=(
        ArgRule(
            "clone",
            (ArgCondition(0, "any_bits", CLONE_UNTRACED, width=32),),
            EPERM,
            "CLONE_UNTRACED would start a child the tracer never sees",
        ),
        ArgRule(
            "personality",
            (
                ArgCondition(0, "ne", PER_LINUX, width=32),
                ArgCondition(0, "ne", PERSONALITY_QUERY, width=32),
            ),
            EPERM,
            "only PER_LINUX and the query are allowed: other personas change how the kernel "
            "treats the process behind the tracer's back (READ_IMPLIES_EXEC makes data "
            "executable, ADDR_NO_RANDOMIZE drops ASLR, MMAP_PAGE_ZERO, STICKY_TIMEOUTS)",
        ),
        ArgRule(
            "ioctl",
            (ArgCondition(1, "eq", TIOCSTI, width=32),),
            EPERM,
            "TIOCSTI types into the user's terminal: commands that run outside the sandbox",
        ),
        ArgRule(
            "ioctl",
            (ArgCondition(1, "eq", TIOCLINUX, width=32),),
            EPERM,
            "TIOCLINUX pastes the console selection into its input, like TIOCSTI",
        ),
        # A raw or packet socket writes its own headers: the sockaddr the tracer judges does not
        # say where the packet goes (IP_HDRINCL names 127.0.0.2 in the sockaddr and 127.0.0.1 in
        # the header). The type's low nibble is the type (SOCK_NONBLOCK|SOCK_CLOEXEC masked off);
        # ping sockets (SOCK_DGRAM, IPPROTO_ICMP) stay allowed.
        # Only IP families: netlink uses SOCK_RAW too (glibc's getifaddrs, getaddrinfo).
        *(
            ArgRule(
                "socket",
                (
                    ArgCondition(0, "eq", family, width=32),
                    ArgCondition(1, "masked_eq", SOCK_RAW, mask=SOCK_TYPE_MASK, width=32),
                ),
                EPERM,
                "a raw IP socket's packets carry their own addresses, which no rule sees",
            )
            for family in (AF_INET, AF_INET6)
        ),
        # (AF_INET, SOCK_PACKET) is turned into a packet socket by the kernel (__sock_create).
        ArgRule(
            "socket",
            (ArgCondition(1, "masked_eq", SOCK_PACKET, mask=SOCK_TYPE_MASK, width=32),),
            EPERM,
            "SOCK_PACKET (obsolete packet socket): raw frames, addresses unseen",
        ),
        ArgRule(
            "socket",
            (ArgCondition(0, "eq", AF_PACKET, width=32),),
            EPERM,
            "a packet socket sends raw frames whose addresses no rule sees",
        ),
        # Device nodes: as root, mknod of a character or block device in the workspace is a
        # second name for a real device (a disk, a terminal, /dev/mem): a write to it is a write
        # to the device. FIFOs, sockets and regular files made by mknod stay traced file_writes.
        *(
            ArgRule(
                name,
                (ArgCondition(index, "masked_eq", kind, mask=S_IFMT, width=32),),
                EPERM,
                f"{name} of a {what} device: a second name for a device outside the workspace",
            )
            for name, index in (("mknod", 1), ("mknodat", 2))
            for kind, what in ((S_IFCHR, "character"), (S_IFBLK, "block"))
        ),
        # ioctls that change a whole file system, a shared keyring or another process's
        # signals: no file for a policy to name (kernel/ioctl_ledger.py says why for each).
        *(
            ArgRule(
                "ioctl",
                (ArgCondition(1, "eq", request.code, width=32),),
                EPERM,
                f"{request.name}: {request.reason}",
            )
            for request in ioctl_ledger.LEDGER
            if request.handling == ioctl_ledger.REFUSED
        ),
        ArgRule(
            "fcntl",
            (ArgCondition(1, "eq", F_SETOWN_EX, width=32),),
            EPERM,
            "F_SETOWN_EX names the process SIGIO goes to in memory the tracer cannot pin; "
            "F_SETOWN (a register) is traced and judged instead",
        ),
        ArgRule(
            "fcntl",
            (
                ArgCondition(1, "eq", F_SETFL, width=32),
                ArgCondition(2, "any_bits", O_ASYNC, width=32),
            ),
            EPERM,
            "O_ASYNC on a terminal sends SIGIO (which kills by default) to the terminal's "
            "foreground process group, where the supervisor and the user's other commands are; "
            "the ioctl FIOASYNC is refused for the same reason",
        ),
        ArgRule(
            "fcntl",
            (
                ArgCondition(1, "eq", F_SETLEASE, width=32),
                ArgCondition(2, "ne", F_UNLCK, width=32),
            ),
            EPERM,
            "a lease holds up every other process that opens the file for writing (or, a "
            "write lease, at all) for lease-break-time seconds, again and again; a root agent "
            "may lease any file it can read",
        ),
        ArgRule(
            "seccomp",
            (ArgCondition(1, "any_bits", SECCOMP_FILTER_FLAG_NEW_LISTENER),),
            EPERM,
            "a nested filter's USER_NOTIF outranks our TRACE; with a listener of its own the "
            "agent could answer CONTINUE and run the syscall without a tracer stop",
        ),
    ),
)


# Arguments the kernel declares as 32-bit ints (or truncates with lower_32_bits): profile rules on
# them compare the low word only, so the upper half cannot carry a value past an `eq` rule.
KERNEL_INT_ARGS: Mapping[str, frozenset[int]] = MappingProxyType(
    {
        "clone": frozenset({0}),
        "ioctl": frozenset({0, 1}),
        "personality": frozenset({0}),
        "fcntl": frozenset({0, 1}),
        "prctl": frozenset({0}),
        "socket": frozenset({0, 1, 2}),
        "unshare": frozenset({0}),
        "setns": frozenset({0, 1}),
        "kill": frozenset({0, 1}),
        "tgkill": frozenset({0, 1, 2}),
        "mknod": frozenset({1}),
        "mknodat": frozenset({2}),
    }
)


# --- compiling ------------------------------------------------------------------------------------


def _check_names(names: Iterable[str], what: str) -> None:
    unknown = sorted(name for name in names if name not in SYSCALL_NUMBERS)
    if unknown:
        raise ValueError(f"{what}: unknown x86_64 syscall name(s): {', '.join(unknown)}")


def _canonical(condition: ArgCondition) -> ArgCondition:
    """One spelling per test: a ``masked_eq`` whose mask covers the compared width is an ``eq``
    (the libseccomp idiom for 32-bit arguments), and a 32-bit test forgets the upper half."""
    width_mask = bpf.U32_MASK if condition.width == 32 else U64_MASK
    value = condition.value & width_mask
    if condition.op == "masked_eq":
        mask = condition.mask & width_mask
        if mask == width_mask:
            return ArgCondition(condition.index, "eq", value, width=condition.width)
        return ArgCondition(condition.index, "masked_eq", value, mask=mask, width=condition.width)
    if condition.op == "any_bits" or condition.value != value:
        return ArgCondition(condition.index, condition.op, value, width=condition.width)
    return condition


def _normalise_rules(rules: Sequence[ArgRule]) -> list[ArgRule]:
    """Canonicalise, drop repeated rules (a profile restating an invariant), and merge
    neighbouring single-bit rules with the same denial into one ``any_bits`` test, so that e.g.
    CLONE_UNTRACED and the namespace flags cost one JSET on every clone."""
    unique: list[ArgRule] = []
    seen: set[tuple] = set()
    for rule in rules:
        when = tuple(_canonical(condition) for condition in rule.when)
        if (when, rule.outcome) not in seen:
            seen.add((when, rule.outcome))
            unique.append(ArgRule(rule.syscall, when, rule.outcome, rule.reason))
    merged: list[ArgRule] = []
    for rule in unique:
        single = _as_bit_test(rule)
        previous = _as_bit_test(merged[-1]) if merged else None
        if (
            single is not None
            and previous is not None
            and merged[-1].outcome == rule.outcome
            and (single.index, single.width) == (previous.index, previous.width)
        ):
            bits = previous.value | single.value
            reason = "; ".join(filter(None, (merged[-1].reason, rule.reason)))
            merged[-1] = ArgRule(
                rule.syscall,
                (ArgCondition(single.index, "any_bits", bits, width=single.width),),
                rule.outcome,
                reason,
            )
        else:
            merged.append(rule)
    return merged


def _as_bit_test(rule: ArgRule) -> ArgCondition | None:
    if len(rule.when) != 1:
        return None
    condition = rule.when[0]
    if condition.op == "any_bits":
        return condition
    if (
        condition.op == "masked_eq"
        and condition.mask == condition.value
        and condition.value
        and condition.value & (condition.value - 1) == 0
    ):
        return ArgCondition(condition.index, "any_bits", condition.value, width=condition.width)
    return None


class _FilterAssembler:
    """Emits one FilterSpec. Return instructions are shared: one ``ret`` per distinct action."""

    def __init__(self) -> None:
        self.asm = bpf.Assembler()
        self.returns: dict[int, str] = {}

    def ret_label(self, action: int) -> str:
        if action not in self.returns:
            self.returns[action] = self.asm.new_label(f"ret_{action:08x}")
        return self.returns[action]

    def emit_condition(
        self, condition: ArgCondition, on_fail: str, holding: int | None = None
    ) -> int | None:
        """Fall through when ``condition`` holds, jump to ``on_fail`` when it does not.

        ``holding``: the seccomp_data offset the accumulator is known to hold on entry (its load
        is skipped). Returns the offset the accumulator holds at both exits when that is certain
        (one load, no mask), else None.
        """
        asm = self.asm
        matched = asm.new_label("cond_ok")
        halves = [False] if condition.width == 32 else [True, False]  # high word first
        loads: list[int] = []
        masked = False

        def load(offset: int) -> None:
            if not (offset == holding and not loads):
                asm.load_abs(offset)
            loads.append(offset)

        def word(value: int, high: bool) -> int:
            return (value >> 32) & bpf.U32_MASK if high else value & bpf.U32_MASK

        if condition.op == "any_bits":
            tests = [(high, word(condition.value, high)) for high in halves]
            tests = [(high, bits) for high, bits in tests if bits]
            if not tests:
                asm.ja(on_fail)
            for position, (high, bits) in enumerate(tests):
                load(bpf.arg_offset(condition.index, high))
                last = position == len(tests) - 1
                asm.jset(bits, matched, on_fail if last else None)
        elif condition.op == "ne":
            for position, high in enumerate(halves):
                load(bpf.arg_offset(condition.index, high))
                last = position == len(halves) - 1
                # The halves differ in either word: a difference matches at once.
                asm.jeq(word(condition.value, high), on_fail if last else None, matched)
        else:  # eq, masked_eq
            mask = U64_MASK if condition.op == "eq" else condition.mask
            for high in halves:
                half_mask, half_value = word(mask, high), word(condition.value, high)
                if half_value & ~half_mask:
                    asm.ja(on_fail)  # can never hold
                    break
                if half_mask == 0:
                    continue
                load(bpf.arg_offset(condition.index, high))
                if half_mask != bpf.U32_MASK:
                    asm.and_k(half_mask)
                    masked = True
                asm.jeq(half_value, None, on_fail)
        # INVARIANT: every path above jumps to on_fail or reaches `matched`. A condition that
        # can never hold leaves `matched` unreachable, which the kernel's checker tolerates.
        asm.label(matched)
        return loads[0] if len(loads) == 1 and not masked else None

    def emit_set_test(self, test: _SetTest, on_in: str, on_out: str, holding: int | None) -> int:
        """Jump to ``on_in`` when the argument word is one of ``test.values``, else to
        ``on_out``: a binary search of JGE with JEQ leaves, so that a long list of request
        codes (ioctl) costs a handful of instructions. Returns the offset the accumulator
        holds at both exits."""
        offset = bpf.arg_offset(test.index, False)
        if holding != offset:
            self.asm.load_abs(offset)
        self._set_tree(sorted(test.values), on_in, on_out)
        return offset

    def _set_tree(self, values: list[int], on_in: str, on_out: str) -> None:
        if len(values) <= SET_LEAF:
            for value in values:
                self.asm.jeq(value, on_in, None)
            self.asm.ja(on_out)
            return
        middle = len(values) // 2
        upper = self.asm.new_label("set_upper")
        self.asm.jge(values[middle], upper, None)
        self._set_tree(values[:middle], on_in, on_out)
        self.asm.label(upper)
        self._set_tree(values[middle:], on_in, on_out)

    def emit_rules_block(self, rules: Sequence[ArgRule], otherwise: int) -> None:
        holding: int | None = None  # offset the accumulator holds when the previous rule failed
        for rule in _set_tests(rules):
            next_rule = self.asm.new_label("next_rule")
            if isinstance(rule, _SetTest):
                outcome = self.ret_label(rule.outcome.action)
                on_in, on_out = (outcome, next_rule) if rule.inside else (next_rule, outcome)
                holding = self.emit_set_test(rule, on_in, on_out, holding)
                self.asm.label(next_rule)
                continue
            left_behind = set()
            for condition in rule.when:
                holding = self.emit_condition(condition, next_rule, holding)
                left_behind.add(holding)
            # At next_rule the accumulator holds what any one of the conditions left in it.
            holding = left_behind.pop() if len(left_behind) == 1 else None
            self.asm.ja(self.ret_label(rule.outcome.action))
            self.asm.label(next_rule)
        self.asm.ja(self.ret_label(otherwise))


SET_MIN = 5  # this many values on one argument word or more: a search tree, not a chain
SET_LEAF = 3  # values tested one by one at a leaf of the tree


@dataclass(frozen=True, slots=True)
class _SetTest:
    """Rules that ask one question of one 32-bit argument word: is it one of ``values``?
    ``inside``: the outcome applies when it is (consecutive ``eq`` rules with one outcome);
    else when it is not (one rule whose conditions are all ``ne``)."""

    index: int
    values: frozenset[int]
    inside: bool
    outcome: Denial | Untraced


def _set_tests(rules: Sequence[ArgRule]) -> list[ArgRule | _SetTest]:
    """``rules`` with each long run of one-value tests on one 32-bit word folded into a
    ``_SetTest`` (same precedence: an ``eq`` run shares its outcome, so which of them matches
    first does not matter)."""
    out: list[ArgRule | _SetTest] = []
    run: list[ArgRule] = []

    def key(rule: ArgRule) -> tuple | None:
        if len(rule.when) != 1:
            return None
        condition = rule.when[0]
        if condition.op != "eq" or condition.width != 32:
            return None
        return (condition.index, rule.outcome)

    def flush() -> None:
        if len(run) >= SET_MIN:
            index, outcome = key(run[0])  # type: ignore[misc]
            values = frozenset(rule.when[0].value for rule in run)
            out.append(_SetTest(index, values, True, outcome))
        else:
            out.extend(run)
        run.clear()

    for rule in rules:
        this = key(rule)
        if run and this != key(run[0]):
            flush()
        if this is not None:
            run.append(rule)
            continue
        indexes = {(c.index, c.op, c.width) for c in rule.when}
        if len(rule.when) >= SET_MIN and len(indexes) == 1 and indexes.pop()[1:] == ("ne", 32):
            values = frozenset(c.value for c in rule.when)
            out.append(_SetTest(rule.when[0].index, values, False, rule.outcome))
        else:
            out.append(rule)
    flush()
    return out


def _rules_by_name(full: FilterSpec) -> dict[str, list[ArgRule]]:
    """Each syscall's argument rules that can matter: denying rules first, then UNTRACED ones
    (which only matter for a traced syscall); an unconditional denial makes its rules moot."""
    rules_by_name: dict[str, list[ArgRule]] = {}
    ordered = sorted(full.arg_rules, key=lambda rule: isinstance(rule.outcome, Untraced))
    for rule in ordered:
        if rule.syscall in full.denied:
            continue
        if isinstance(rule.outcome, Untraced) and rule.syscall not in full.traced:
            continue
        rules_by_name.setdefault(rule.syscall, []).append(rule)
    return rules_by_name


def _outcome_ranges(
    full: FilterSpec, rules_by_name: dict[str, list[ArgRule]]
) -> list[tuple[int, tuple[str, object]]]:
    """The syscall numbers cut into ranges of one outcome each: ``(first number, outcome)``,
    sorted, where an outcome is ``("ret", action)`` or ``("rules", name)``."""

    def outcome(nr: int) -> tuple[str, object]:
        name = SYSCALL_NAMES.get(nr)
        if nr > MAX_SYSCALL_NR:
            return ("ret", ENOSYS.action)
        if name is None:
            # A hole of the table (337-423 today): the kernel answers ENOSYS itself, and so does
            # the filter, so that a number a later kernel assigns never runs unnamed.
            return ("ret", ENOSYS.action)
        if name in full.denied:
            return ("ret", full.denied[name].action)
        if name in rules_by_name:
            return ("rules", name)
        return ("ret", SECCOMP_RET_TRACE if name in full.traced else SECCOMP_RET_ALLOW)

    ranges: list[tuple[int, tuple[str, object]]] = []
    for nr in range(MAX_SYSCALL_NR + 2):
        this = outcome(nr)
        if not ranges or ranges[-1][1] != this:
            ranges.append((nr, this))
    return ranges


def build_filter(spec: FilterSpec) -> list[bpf.Instruction]:
    """Compile ``spec`` plus ``TRACER_INVARIANTS`` into a seccomp BPF program.

    Layout: (1) arch != AUDIT_ARCH_X86_64 -> KILL_PROCESS (ia32 ``int 0x80`` reports
    AUDIT_ARCH_I386); (2) nr >= __X32_SYSCALL_BIT -> KILL_PROCESS (x32); (3) a binary search
    tree of JGE over the ranges of syscall numbers that share one outcome; a leaf is a shared
    ``ret`` (ALLOW, TRACE, ERRNO(e), KILL) or the argument-rules block of one syscall. Numbers
    above the highest known syscall get ENOSYS: a syscall newer than our table is one the tracer
    cannot name, so it is refused rather than run unseen.
    """
    full = TRACER_INVARIANTS.merged(spec)
    _check_names(full.traced, "traced syscalls")
    _check_names(full.denied, "denied syscalls")
    _check_names((rule.syscall for rule in full.arg_rules), "argument rules")
    rules_by_name = _rules_by_name(full)
    ranges = _outcome_ranges(full, rules_by_name)

    out = _FilterAssembler()
    asm = out.asm
    kill = out.ret_label(SECCOMP_RET_KILL_PROCESS)
    asm.load_abs(SECCOMP_DATA_ARCH_OFFSET)
    asm.jeq(AUDIT_ARCH_X86_64, None, kill)
    asm.load_abs(SECCOMP_DATA_NR_OFFSET)
    asm.jge(X32_SYSCALL_BIT, kill, None)

    blocks: dict[str, str] = {}

    def leaf(this: tuple[str, object]) -> str:
        kind, value = this
        if kind == "ret":
            return out.ret_label(value)  # type: ignore[arg-type]
        return blocks.setdefault(value, asm.new_label(f"rules_{value}"))  # type: ignore[arg-type]

    # Breadth-first, so every jump goes forward and the tree's top sits next to the entry.
    pending: list[tuple[str | None, list[tuple[int, tuple[str, object]]]]] = [(None, ranges)]
    while pending:
        node_label, node_ranges = pending.pop(0)
        if node_label is not None:
            asm.label(node_label)
        if len(node_ranges) == 1:
            asm.ja(leaf(node_ranges[0][1]))
            continue
        middle = len(node_ranges) // 2
        sides = []
        for side in (node_ranges[middle:], node_ranges[:middle]):
            if len(side) == 1:
                sides.append(leaf(side[0][1]))
            else:
                label = asm.new_label("tree")
                pending.append((label, side))
                sides.append(label)
        asm.jge(node_ranges[middle][0], sides[0], sides[1])

    for name, label in blocks.items():
        asm.label(label)
        base = SECCOMP_RET_TRACE if name in full.traced else SECCOMP_RET_ALLOW
        out.emit_rules_block(_normalise_rules(rules_by_name[name]), base)

    for action, label in out.returns.items():
        asm.label(label)
        asm.ret(action)
    return asm.assemble()


@dataclass(frozen=True, slots=True)
class FilterCost:
    """Instructions the filter executes per syscall, over every number of the x86_64 table."""

    max_executed: int
    mean_executed: float
    worst_syscall: str
    program_length: int


def measure_cost(program: Sequence[bpf.Instruction]) -> FilterCost:
    costs = {
        name: bpf.execute(program, bpf.SeccompData(nr, AUDIT_ARCH_X86_64)).executed
        for nr, name in SYSCALL_NAMES.items()
    }
    worst = max(costs, key=costs.__getitem__)
    return FilterCost(costs[worst], sum(costs.values()) / len(costs), worst, len(program))


# --- OCI / Docker seccomp profiles ----------------------------------------------------------------


class SeccompProfileError(ValueError):
    """A profile we cannot load; the message names the file and the entry."""


@dataclass(frozen=True)
class ProfileDenials:
    """What a seccomp profile adds to the filter: denials, argument rules, extra traced names."""

    source: str
    denied: Mapping[str, Denial]
    arg_rules: tuple[ArgRule, ...]
    traced: frozenset[str] = frozenset()

    def spec(self, traced: Iterable[str] = ()) -> FilterSpec:
        """The FilterSpec of this profile with the tracer's ``traced`` names."""
        return FilterSpec(
            traced=self.traced | frozenset(traced), denied=self.denied, arg_rules=self.arg_rules
        )


PROFILE_KEYS = frozenset(
    {"defaultAction", "defaultErrnoRet", "architectures", "archMap", "syscalls", "comment"}
)
ENTRY_KEYS = frozenset({"names", "name", "action", "errnoRet", "args", "comment"})
ARG_KEYS = frozenset({"index", "value", "valueTwo", "op", "comment"})
KILL_ACTIONS = frozenset({"SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD"})
SUPPORTED_ACTIONS = KILL_ACTIONS | {"SCMP_ACT_ERRNO", "SCMP_ACT_ALLOW", "SCMP_ACT_TRACE"}
PROFILE_OPS = {"SCMP_CMP_EQ": "eq", "SCMP_CMP_NE": "ne", "SCMP_CMP_MASKED_EQ": "masked_eq"}


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def load_profile(path: str | os.PathLike[str]) -> ProfileDenials:
    """Read an OCI/Docker seccomp profile that is a deny list on an ALLOW default.

    Supported: ``defaultAction`` SCMP_ACT_ALLOW; entries with ``names`` (or ``name``), ``action``
    SCMP_ACT_ERRNO (``errnoRet``, else ``defaultErrnoRet``, else EPERM), SCMP_ACT_KILL /
    KILL_PROCESS / KILL_THREAD (all kill the process), SCMP_ACT_ALLOW (the default already; it
    may not name a syscall agentd always refuses), SCMP_ACT_TRACE (hand the syscall to the
    tracer); ``args`` with ``op`` SCMP_CMP_EQ, NE or MASKED_EQ (``value`` is the mask,
    ``valueTwo`` the datum), all of which must hold. ``comment`` is allowed everywhere. Anything
    else, including Docker's ``includes``/``excludes``, is an error: ignoring a key we do not
    understand could drop a denial the author meant.
    """
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as handle:
            document = json.load(handle)
    except json.JSONDecodeError as error:
        raise SeccompProfileError(
            f"{source}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}"
        ) from None
    except OSError as error:
        raise SeccompProfileError(
            f"{source}: cannot read seccomp profile: {error.strerror}"
        ) from None
    return parse_profile(document, source)


def parse_profile(document: object, source: str = "<profile>") -> ProfileDenials:
    """``load_profile`` on an already parsed JSON document."""
    # Long because it checks a document key by key, each check with its own one-line error.

    def fail(where: str, message: str) -> SeccompProfileError:
        return SeccompProfileError(f"{source}: {where}: {message}")

    if not isinstance(document, dict):
        raise fail("top level", "a seccomp profile is a JSON object")
    unknown = sorted(set(document) - PROFILE_KEYS)
    if unknown:
        raise fail("top level", f"unsupported key(s) {unknown} (supported: {sorted(PROFILE_KEYS)})")
    default_action = document.get("defaultAction")
    if default_action != "SCMP_ACT_ALLOW":
        raise fail(
            "defaultAction",
            f"{default_action!r} is not supported: agentd's profile is a deny "
            "list on top of SCMP_ACT_ALLOW (the tracer decides the rest)",
        )
    default_errno = document.get("defaultErrnoRet", errno_codes.EPERM)
    if not _is_int(default_errno) or not 1 <= default_errno <= MAX_ERRNO:
        raise fail("defaultErrnoRet", f"{default_errno!r} is not an errno in 1..{MAX_ERRNO}")
    architectures = document.get("architectures", ["SCMP_ARCH_X86_64"])
    if not isinstance(architectures, list) or "SCMP_ARCH_X86_64" not in architectures:
        raise fail("architectures", "must include SCMP_ARCH_X86_64 (other ABIs are always killed)")
    entries = document.get("syscalls", [])
    if not isinstance(entries, list):
        raise fail("syscalls", "must be a list")

    denied: dict[str, Denial] = {}
    rules: list[ArgRule] = []
    traced: set[str] = set()
    for position, entry in enumerate(entries):
        names, where = _entry_names(entry, f"syscalls[{position}]", fail)
        action = entry.get("action")
        if action not in SUPPORTED_ACTIONS:
            raise fail(
                where,
                f"action {action!r} is not supported (supported: {sorted(SUPPORTED_ACTIONS)})",
            )
        if "errnoRet" in entry and action != "SCMP_ACT_ERRNO":
            raise fail(where, "errnoRet only goes with SCMP_ACT_ERRNO")
        args = entry.get("args") or []
        if not isinstance(args, list):
            raise fail(where, "args must be a list")
        # Parsed per name: the width of a comparison depends on the syscall (KERNEL_INT_ARGS).
        conditions = {
            name: tuple(
                _parse_arg(arg, name, f"{where}.args[{i}]", fail) for i, arg in enumerate(args)
            )
            for name in names
        }

        if action == "SCMP_ACT_ALLOW":
            restricted = TRACER_INVARIANTS.names() - TRACER_INVARIANTS.traced
            lifted = sorted(name for name in names if name in restricted)
            if lifted:
                raise fail(
                    where,
                    f"cannot allow {', '.join(lifted)}: agentd always refuses "
                    "(or restricts) it, because it leads around the tracer",
                )
            continue  # ALLOW is the default
        if action == "SCMP_ACT_TRACE":
            if args:
                raise fail(
                    where,
                    "SCMP_ACT_TRACE with args is not supported: the tracer sees "
                    "every call of a traced syscall",
                )
            traced.update(names)
            continue
        if action == "SCMP_ACT_ERRNO":
            errno_value = entry.get("errnoRet", default_errno)
            if not _is_int(errno_value) or not 1 <= errno_value <= MAX_ERRNO:
                raise fail(where, f"errnoRet {errno_value!r} is not an errno in 1..{MAX_ERRNO}")
            denial = Denial(errno_value)
        else:
            denial = KILL_PROCESS
        for name in names:
            if args:
                rules.append(ArgRule(name, conditions[name], denial, str(entry.get("comment", ""))))
            elif name in denied and denied[name] != denial:
                raise fail(where, f"{name} is already denied with {denied[name]}, not {denial}")
            else:
                denied[name] = denial
    return ProfileDenials(source, denied, tuple(rules), frozenset(traced))


def _entry_names(entry: object, where: str, fail) -> tuple[list[str], str]:
    """A profile entry's syscall names (checked against the table) and where it stands, for
    every message about it (``syscalls[3] (mount, umount2)``)."""
    if not isinstance(entry, dict):
        raise fail(where, "an entry is a JSON object")
    names = entry.get("names", [entry["name"]] if "name" in entry else None)
    if not (isinstance(names, list) and names and all(isinstance(name, str) for name in names)):
        raise fail(where, "needs 'names', a non-empty list of syscall names")
    where = f"{where} ({', '.join(names)})"
    unknown = sorted(set(entry) - ENTRY_KEYS)
    if unknown:
        raise fail(where, f"unsupported key(s) {unknown} (supported: {sorted(ENTRY_KEYS)})")
    bad_names = [name for name in names if name not in SYSCALL_NUMBERS]
    if bad_names:
        raise fail(where, f"unknown x86_64 syscall name(s): {', '.join(bad_names)}")
    return names, where


def _parse_arg(arg: object, syscall: str, where: str, fail) -> ArgCondition:
    if not isinstance(arg, dict):
        raise fail(where, "an argument test is a JSON object")
    unknown = sorted(set(arg) - ARG_KEYS)
    if unknown:
        raise fail(where, f"unsupported key(s) {unknown} (supported: {sorted(ARG_KEYS)})")
    index, value, value_two, op = (
        arg.get("index"),
        arg.get("value"),
        arg.get("valueTwo", 0),
        arg.get("op"),
    )
    if not _is_int(index) or not 0 <= index < 6:
        raise fail(where, f"index {index!r} is not in 0..5")
    if not _is_int(value) or not 0 <= value <= U64_MASK:
        raise fail(where, f"value {value!r} is not an unsigned 64-bit integer")
    if not _is_int(value_two) or not 0 <= value_two <= U64_MASK:
        raise fail(where, f"valueTwo {value_two!r} is not an unsigned 64-bit integer")
    if op not in PROFILE_OPS:
        raise fail(where, f"op {op!r} is not supported (supported: {sorted(PROFILE_OPS)})")
    width = 32 if index in KERNEL_INT_ARGS.get(syscall, frozenset()) else 64
    if PROFILE_OPS[op] == "masked_eq":
        return ArgCondition(index, "masked_eq", value_two, mask=value, width=width)
    return ArgCondition(index, PROFILE_OPS[op], value, width=width)


# --- installing -----------------------------------------------------------------------------------


class PreparedFilter(InstallableFilter):
    """A filter compiled and laid out in memory by the parent, installed by the forked child
    (``seccomp_install.InstallableFilter``): validated and encoded here."""

    def __init__(self, program: Sequence[bpf.Instruction], flags: int = 0) -> None:
        bpf.validate(program)
        super().__init__(bpf.encode(program), flags)
        self.__dict__["program"] = tuple(program)  # what InstallableFilter.program decodes


def prepare(program: Sequence[bpf.Instruction], flags: int = 0) -> PreparedFilter:
    """Compile step of 'compile in the parent, apply in the child'."""
    return PreparedFilter(program, flags)


__all__ = [
    "ArgCondition",
    "ArgRule",
    "Denial",
    "ENOSYS",
    "EPERM",
    "FilterCost",
    "FilterSpec",
    "KILL_PROCESS",
    "UNTRACED",
    "Untraced",
    "PreparedFilter",
    "ProfileDenials",
    "SeccompProfileError",
    "TRACER_INVARIANTS",
    "build_filter",
    "load_profile",
    "measure_cost",
    "parse_profile",
    "prepare",
    "probe_kernel",
]
