"""The syscall ledger: every syscall number the kernel headers know, and what agentd does with it.

Owns ``docs/syscalls.md``. The classification is computed, never restated: ``filter_spec`` of
``run.supervise`` builds the same ``FilterSpec`` an ``agentd run`` installs (the default profile,
the tracer's traced names, the untraced rules), ``seccomp.build_filter`` compiles it with
``TRACER_INVARIANTS``, and every number of the x86_64, ia32 and x32 headers is run through that
program (``bpf.execute``), so a change of the filter changes the ledger. A syscall is *traced*
(the action types ``trace.syscall_table`` gives it), *refused* in the kernel (the errno or a
kill, with the profile's comment), *argument-filtered* (each argument rule with its outcome), or
*allowed*: then a hand-written reason from ``ledger_reasons`` must say why it cannot reach outside
the agent, or mark it OPEN. A number with none of these is *unclassified*, which
``tests/test_syscall_ledger.py`` refuses. The ``prctl`` and ``fcntl`` command ledgers do the same
for every ``PR_*`` / ``F_*`` constant of their headers, each command run through the filter as
that syscall's argument. Regenerate with ``scripts/syscall-ledger``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from agentd.kernel import bpf, ioctl_ledger, seccomp
from agentd.kernel.consts import (
    AUDIT_ARCH_I386,
    AUDIT_ARCH_X86_64,
    SECCOMP_RET_ACTION_FULL,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_DATA,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_KILL_PROCESS,
    SECCOMP_RET_TRACE,
    X32_SYSCALL_BIT,
)
from agentd.kernel.syscall_numbers import SYSCALL_NAMES, SYSCALL_NUMBERS
from agentd.run import ledger_reasons
from agentd.run.ledger_reasons import OPEN, Reason
from agentd.run.supervise import DEFAULT_PROFILE, filter_spec
from agentd.trace.syscall_table import TABLE, traced_syscalls

__all__ = [
    "HEADERS",
    "TRACED",
    "REFUSED",
    "ARG_FILTERED",
    "ALLOWED",
    "UNCLASSIFIED",
    "SyscallRow",
    "CommandRow",
    "Ledger",
    "build_ledger",
    "render",
    "main",
]

_INCLUDE = "/usr/include"
_ARCH_INCLUDE = "/usr/include/x86_64-linux-gnu"
HEADERS: Mapping[str, str | tuple[str, ...]] = {
    "x86_64": f"{_ARCH_INCLUDE}/asm/unistd_64.h",
    "ia32": f"{_ARCH_INCLUDE}/asm/unistd_32.h",
    "x32": f"{_ARCH_INCLUDE}/asm/unistd_x32.h",
    "prctl": (f"{_INCLUDE}/linux/prctl.h",),
    "fcntl": (
        f"{_ARCH_INCLUDE}/bits/fcntl-linux.h",
        f"{_INCLUDE}/asm-generic/fcntl.h",
        f"{_INCLUDE}/linux/fcntl.h",
    ),
}
ABIS = ("x86_64", "ia32", "x32")
OUTPUT = "docs/syscalls.md"
REGENERATE = "scripts/syscall-ledger"

TRACED = "traced"
REFUSED = "refused"
ARG_FILTERED = "argument-filtered"
ALLOWED = "allowed"
UNCLASSIFIED = "UNCLASSIFIED"
CLASSES = (TRACED, REFUSED, ARG_FILTERED, ALLOWED, UNCLASSIFIED)
LISTED_VALUES = 4  # more one-value tests of one argument than this are counted, not listed
# The other arguments a command is tried with: when the outcome differs, the rules look at them.
OTHER_ARGUMENTS = (0, 1, 0xFFFFFFFF)


@dataclass(frozen=True, slots=True)
class SyscallRow:
    """One syscall number of one ABI and what the filter does with it.

    ``detail``: the action types (traced), the denial and its reason (refused), the argument
    rules (argument-filtered) or why it is unclassified. ``reason``: the hand-written reason of
    an allowed syscall, or of the ALLOW remainder of an argument-filtered one."""

    abi: str
    nr: int
    name: str
    cls: str
    detail: str
    reason: Reason | None = None


@dataclass(frozen=True, slots=True)
class CommandRow:
    """One ``PR_*`` / ``F_*`` constant: a command with its reason and what the filter does with
    it (``handling``), an argument of another command (``argument_of``), or unclassified."""

    syscall: str
    name: str
    values: tuple[int, ...]
    handling: str = ""
    reason: Reason | None = None
    argument_of: str = ""

    @property
    def unclassified(self) -> bool:
        return self.reason is None and not self.argument_of


@dataclass(frozen=True)
class Ledger:
    """The whole ledger: syscall rows of the three ABIs and the two command ledgers."""

    syscalls: tuple[SyscallRow, ...]
    commands: Mapping[str, tuple[CommandRow, ...]]
    problems: tuple[str, ...] = field(default=())
    # (request, what the filter answers for it as ioctl's command), kernel/ioctl_ledger.py
    ioctls: tuple[tuple[ioctl_ledger.IoctlRequest, str], ...] = ()

    def rows(self, abi: str) -> list[SyscallRow]:
        return [row for row in self.syscalls if row.abi == abi]

    def unclassified(self) -> list[str]:
        """Every number or command nobody classified, one line each (the test's complaint)."""
        lines = [
            f"{row.abi} {row.nr} {row.name}: {row.detail}"
            for row in self.syscalls
            if row.cls == UNCLASSIFIED
        ]
        lines += [
            f"{syscall} {row.name} = {_values(row.values)}: not in ledger_reasons"
            for syscall, rows in self.commands.items()
            for row in rows
            if row.unclassified
        ]
        return lines + list(self.problems)

    def open_entries(self) -> list[str]:
        """The names whose status is OPEN (syscalls and commands)."""
        names = [
            row.name for row in self.rows("x86_64") if row.reason and row.reason.status == OPEN
        ]
        names += [
            row.name
            for rows in self.commands.values()
            for row in rows
            if row.reason is not None and row.reason.status == OPEN
        ]
        return names


# --- the headers --------------------------------------------------------------------------------

_DEFINE = re.compile(r"^\s*#\s*define\s+([A-Za-z_][A-Za-z0-9_]*)\s+(.+?)\s*(?:/\*.*)?$")
_NUMBER = re.compile(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]*\b")
_EXPRESSION_NODES = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.Constant,
    ast.Name,
    ast.Load,
    ast.Add,
    ast.Sub,
    ast.BitOr,
    ast.BitAnd,
    ast.LShift,
    ast.USub,
    ast.Invert,
)


def _defines(paths: Iterable[str]) -> list[tuple[str, str]]:
    """Every ``#define NAME BODY`` of the files, in order (a name may come more than once)."""
    found = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                match = _DEFINE.match(line)
                if match:
                    found.append((match.group(1), match.group(2)))
    return found


def _c_number(match: re.Match[str]) -> str:
    text = match.group(1)
    if len(text) > 1 and text.startswith("0") and text[1] not in "xX":
        return str(int(text, 8))  # a C octal literal
    return str(int(text, 0))


def _evaluate(body: str, known: Mapping[str, set[int]]) -> int | None:
    """The integer a macro body stands for: numbers, names already known (one value), + - | & <<
    ~ and parentheses; None for anything else (a string, a function-like macro, a type)."""
    try:
        tree = ast.parse(_NUMBER.sub(_c_number, body), mode="eval")
    except SyntaxError:
        return None
    if not all(isinstance(node, _EXPRESSION_NODES) for node in ast.walk(tree)):
        return None
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    if any(len(known.get(name, ())) != 1 for name in names):
        return None
    scope = {name: next(iter(known[name])) for name in names}
    value = eval(compile(tree, "<macro>", "eval"), {"__builtins__": {}}, scope)  # noqa: S307
    return value if isinstance(value, int) else None


def header_values(paths: Iterable[str]) -> dict[str, set[int]]:
    """Every macro of the files that evaluates to an integer, with all the values it is given
    (``F_GETLK`` is 5, or ``F_GETLK64`` when the headers are read for 32-bit offsets)."""
    defines = _defines(paths)
    known: dict[str, set[int]] = {}
    while True:  # until no definition yields anything new: macros may refer to later ones
        grown = False
        for name, body in defines:
            value = _evaluate(body, known)
            if value is not None and value not in known.setdefault(name, set()):
                known[name].add(value)
                grown = True
        if not grown:
            break
    # A name defined as a number and as another name (F_GETLK is 5, or F_GETLK64 for 32-bit
    # offsets) keeps the number: the other is an alias for another ABI.
    literal: dict[str, set[int]] = {name: set() for name, _ in defines}
    for name, body in defines:
        if not re.search(r"[A-Za-z_]", _NUMBER.sub("0", body)):
            value = _evaluate(body, {})
            if value is not None:
                literal[name].add(value)
    return {name: literal[name] or values for name, values in known.items() if values}


def syscall_header(path: str) -> dict[int, str]:
    """number -> name of a ``unistd_*.h`` (x32 numbers carry ``__X32_SYSCALL_BIT``)."""
    values = header_values([path])
    values["__X32_SYSCALL_BIT"] = {X32_SYSCALL_BIT}
    numbers: dict[int, str] = {}
    for name, body in _defines([path]):
        if name.startswith("__NR_"):
            nr = _evaluate(body, values)
            if nr is None:
                raise ValueError(f"{path}: {name} {body!r} is not a number")
            numbers[nr] = name.removeprefix("__NR_")
    return numbers


# --- the filter ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Filter:
    """The spec a run installs (with the invariants) and the program compiled from it."""

    full: seccomp.FilterSpec
    program: list[bpf.Instruction]
    comments: Mapping[str, str]

    def run(self, nr: int, arch: int = AUDIT_ARCH_X86_64, args: Sequence[int] = ()) -> int:
        padded = tuple(args) + (0,) * (6 - len(args))
        return bpf.run(self.program, bpf.SeccompData(nr, arch, padded))

    def rules(self, name: str) -> list[seccomp.ArgRule]:
        """The argument rules that can matter for ``name``, denials first (their precedence)."""
        if name in self.full.denied:
            return []
        rules = [
            rule
            for rule in self.full.arg_rules
            if rule.syscall == name
            and (isinstance(rule.outcome, seccomp.Denial) or name in self.full.traced)
        ]
        return sorted(rules, key=lambda rule: isinstance(rule.outcome, seccomp.Untraced))


def _profile_comments(path: str) -> dict[str, str]:
    """name -> the comment of the profile entry that denies it without arguments."""
    with open(path, encoding="utf-8") as handle:
        document = json.load(handle)
    comments: dict[str, str] = {}
    for entry in document.get("syscalls", []):
        if not entry.get("args"):
            for name in entry.get("names", [entry.get("name")]):
                comments.setdefault(name, str(entry.get("comment", "")))
    return comments


def run_filter() -> _Filter:
    spec = filter_spec(None, traced_syscalls())
    return _Filter(
        seccomp.TRACER_INVARIANTS.merged(spec),
        seccomp.build_filter(spec),
        _profile_comments(DEFAULT_PROFILE),
    )


def describe_action(action: int) -> str:
    """A SECCOMP_RET_* value in words: ALLOW, TRACE, ERRNO(EPERM), KILL_PROCESS."""
    kind = action & SECCOMP_RET_ACTION_FULL
    if kind == SECCOMP_RET_ERRNO:
        return str(seccomp.Denial(action & SECCOMP_RET_DATA))
    names = {
        SECCOMP_RET_ALLOW: "ALLOW",
        SECCOMP_RET_TRACE: "TRACE",
        SECCOMP_RET_KILL_PROCESS: "KILL_PROCESS",
    }
    return names.get(kind, f"{action:#010x}")


def describe_condition(condition: seccomp.ArgCondition) -> str:
    """``arg1 == 0x5412``; a one-bit mask reads as ``arg0 has 0x800000``."""
    where = f"arg{condition.index}" + ("" if condition.width == 64 else " (low 32 bits)")
    full_mask = (1 << condition.width) - 1
    single_bit = condition.value and condition.value & (condition.value - 1) == 0
    if condition.op == "any_bits" or (
        condition.op == "masked_eq" and condition.mask == condition.value and single_bit
    ):
        return f"{where} has any of {condition.value:#x}"
    if condition.op == "masked_eq" and condition.mask & full_mask != full_mask:
        return f"{where} & {condition.mask:#x} == {condition.value:#x}"
    return f"{where} {'!=' if condition.op == 'ne' else '=='} {condition.value:#x}"


def _describe_when(rule: seccomp.ArgRule) -> str:
    """The conditions of a rule; many ``ne`` tests of one argument read as "none of N values"."""
    ops = {(condition.index, condition.width, condition.op) for condition in rule.when}
    if len(rule.when) > LISTED_VALUES and len(ops) == 1 and next(iter(ops))[2] == "ne":
        where = describe_condition(rule.when[0]).split(" !=")[0]
        return f"{where} is none of {len(rule.when)} values"
    return " and ".join(describe_condition(condition) for condition in rule.when)


def _single_eq(rule: seccomp.ArgRule) -> tuple | None:
    """(index, width, outcome) of a rule that compares one argument with one value, else None
    (a ``masked_eq`` whose mask covers the compared width is such a rule)."""
    if len(rule.when) != 1:
        return None
    condition = rule.when[0]
    full_mask = (1 << condition.width) - 1
    if condition.op == "eq" or (
        condition.op == "masked_eq" and condition.mask & full_mask == full_mask
    ):
        return (condition.index, condition.width, str(rule.outcome))
    return None


def _bit_test(rule: seccomp.ArgRule) -> tuple | None:
    """(index, width, outcome) of a rule that tests one bit of one argument, else None."""
    if len(rule.when) != 1:
        return None
    condition = rule.when[0]
    bits = condition.value
    one_bit = condition.op == "masked_eq" and condition.mask == bits and bits & (bits - 1) == 0
    if condition.op != "any_bits" and not one_bit:
        return None
    return (condition.index, condition.width, str(rule.outcome))


def _with_reasons(head: str, rules: Sequence[seccomp.ArgRule]) -> str:
    reasons = list(dict.fromkeys(_first_sentence(rule.reason) for rule in rules if rule.reason))
    return head + (f" ({'; '.join(reasons)})" if reasons else "")


def describe_rules(rules: Sequence[seccomp.ArgRule]) -> list[str]:
    """One line per distinct rule: ``arg1 == 0x5412: ERRNO(EPERM) (reason)``. Neighbouring
    one-bit tests of one argument with one outcome read as one (``has any of 0x7e020000``), as
    the filter compiles them; more than LISTED_VALUES one-value tests read as "is one of N"."""
    lines: list[str] = []
    seen: set[str] = set()
    position = 0
    while position < len(rules):
        rule = rules[position]
        for group_key in (_single_eq, _bit_test):
            key = group_key(rule)
            end = position + 1
            while key is not None and end < len(rules) and group_key(rules[end]) == key:
                end += 1
            if group_key is _bit_test and end - position > 1:
                bits = 0
                for member in rules[position:end]:
                    bits |= member.when[0].value
                where = describe_condition(rule.when[0]).split(" has")[0]
                head = f"{where} has any of {bits:#x}: {rule.outcome}"
                break
            if group_key is _single_eq and end - position > LISTED_VALUES:
                where = describe_condition(rule.when[0]).split(" ==")[0]
                values = {member.when[0].value for member in rules[position:end]}
                lines.append(f"{where} is one of {len(values)} values: {rule.outcome}")
                head = ""
                break
        else:
            end = position + 1
            head = f"{_describe_when(rule)}: {rule.outcome}"
        if head and head not in seen:
            seen.add(head)
            lines.append(_with_reasons(head, rules[position:end]))
        position = end
    return lines


def _first_sentence(text: str) -> str:
    """The first sentence that says something: a short heading such as "Tracer evasion." or
    "Namespaces: CLONE_NEWNS." (the profile's comments start with one) is skipped."""
    sentences = re.split(r"(?<=\.) ", " ".join(text.split()))
    said = [sentence for sentence in sentences if len(sentence.split()) > 3]
    return (said or sentences)[0]


# --- classifying --------------------------------------------------------------------------------


def _traced_detail(name: str) -> str:
    spec = TABLE.get(name)
    if spec is None:
        return "traced by the profile (SCMP_ACT_TRACE): no decoder, the tracer refuses it"
    types = ", ".join(spec.action_types) or "no action: the target must be in the agent's tree"
    return f"{types} (decoder {spec.decoder})"


def classify_x86_64(nr: int, header_name: str, flt: _Filter) -> SyscallRow:
    """One x86_64 number: what the compiled program returns for it, read back as a class."""
    name = SYSCALL_NAMES.get(nr)
    if name != header_name:
        return SyscallRow(
            "x86_64",
            nr,
            header_name,
            UNCLASSIFIED,
            f"agentd.kernel.syscall_numbers names {nr} {name!r}, the header {header_name!r}",
        )
    rules = flt.rules(name)
    reason = ledger_reasons.ALLOWED.get(name)
    if rules:
        base = SECCOMP_RET_TRACE if name in flt.full.traced else SECCOMP_RET_ALLOW
        detail = "; ".join(describe_rules(rules)) + f"; otherwise {describe_action(base)}"
        if base == SECCOMP_RET_TRACE:
            detail = f"{detail}: {_traced_detail(name)}"
            return SyscallRow("x86_64", nr, name, ARG_FILTERED, detail, reason)
        if reason is None:
            return SyscallRow("x86_64", nr, name, UNCLASSIFIED, f"{detail}, with no reason")
        return SyscallRow("x86_64", nr, name, ARG_FILTERED, detail, reason)
    action = flt.run(nr)
    if action == SECCOMP_RET_TRACE:
        return SyscallRow("x86_64", nr, name, TRACED, _traced_detail(name))
    if action != SECCOMP_RET_ALLOW:
        comment = _first_sentence(flt.comments.get(name, ""))
        return SyscallRow("x86_64", nr, name, REFUSED, f"{describe_action(action)}: {comment}")
    if reason is None:
        return SyscallRow("x86_64", nr, name, UNCLASSIFIED, "allowed, with no reason")
    return SyscallRow("x86_64", nr, name, ALLOWED, "", reason)


def classify_foreign(abi: str, nr: int, name: str, flt: _Filter) -> SyscallRow:
    """An ia32 or x32 number: the filter must kill it before it looks at the number."""
    if abi == "ia32":
        action = flt.run(nr, AUDIT_ARCH_I386)
        why = "arch AUDIT_ARCH_I386 (int 0x80)"
    else:
        action = flt.run(nr)
        why = "nr has __X32_SYSCALL_BIT"
    if action != SECCOMP_RET_KILL_PROCESS:
        return SyscallRow(abi, nr, name, UNCLASSIFIED, f"{why}, yet {describe_action(action)}")
    return SyscallRow(abi, nr, name, REFUSED, f"KILL_PROCESS: {why}, killed before the number")


def command_rows(
    syscall: str,
    arg_index: int,
    values: Mapping[str, set[int]],
    commands: Mapping[str, Reason],
    arguments: Mapping[str, str],
    flt: _Filter,
) -> tuple[CommandRow, ...]:
    """One row per header constant of ``syscall`` (``PR_`` or ``F_``)."""
    prefix = "PR_" if syscall == "prctl" else "F_"
    nr = SYSCALL_NUMBERS[syscall]
    rows = []
    for name in sorted(values, key=lambda name: (min(values[name]), name)):
        if not name.startswith(prefix):
            continue
        numbers = tuple(sorted(values[name]))
        if name in commands:
            outcomes = {
                describe_action(flt.run(nr, args=[other] * arg_index + [value] + [other] * 4))
                for value in numbers
                for other in OTHER_ARGUMENTS
            }
            handling = " or ".join(sorted(outcomes))
            if len(outcomes) > 1:
                handling += " (by the other arguments)"
            rows.append(CommandRow(syscall, name, numbers, handling, commands[name]))
            continue
        owner = next((arguments[p] for p in arguments if name.startswith(p)), "")
        rows.append(CommandRow(syscall, name, numbers, argument_of=owner))
    return tuple(rows)


def _unstopped(row: SyscallRow) -> bool:
    """Whether some call of this syscall runs without a tracer stop (what a reason is for)."""
    return row.cls == ALLOWED or (
        row.cls == ARG_FILTERED and ("otherwise ALLOW" in row.detail or "(untraced)" in row.detail)
    )


def _stale(ledger_rows: Sequence[SyscallRow], commands: Mapping[str, Sequence[CommandRow]]):
    """Hand-written data the filter or the headers no longer bear out, one line each."""
    with_reason = {row.name for row in ledger_rows if row.reason is not None and _unstopped(row)}
    problems = [
        f"ledger_reasons.ALLOWED[{name!r}]: no call of {name} runs without a tracer stop "
        f"(traced, refused, or unknown): remove the reason"
        for name in sorted(set(ledger_reasons.ALLOWED) - with_reason)
    ]
    for syscall, data in (
        ("prctl", ledger_reasons.PRCTL_COMMANDS),
        ("fcntl", ledger_reasons.FCNTL_COMMANDS),
    ):
        seen = {row.name for row in commands[syscall]}
        problems += [
            f"ledger_reasons: {name} is not in the {syscall} headers: remove it"
            for name in sorted(set(data) - seen)
        ]
        problems += [
            f"ledger_reasons: {row.name} is OPEN but the filter now answers {row.handling}: "
            f"update its reason"
            for row in commands[syscall]
            if row.reason is not None and row.reason.status == OPEN and row.handling != "ALLOW"
        ]
    return problems


def build_ledger(headers: Mapping[str, str | tuple[str, ...]] = HEADERS) -> Ledger:
    """Classify every number of the three ABIs' headers and every PR_*/F_* constant."""
    flt = run_filter()
    # Numbers of the running kernel newer than the headers are in syscall_numbers (by hand).
    x86_64 = {**SYSCALL_NAMES, **syscall_header(str(headers["x86_64"]))}
    rows = [classify_x86_64(nr, name, flt) for nr, name in sorted(x86_64.items())]
    for abi in ("ia32", "x32"):
        numbers = syscall_header(str(headers[abi]))
        rows += [classify_foreign(abi, nr, name, flt) for nr, name in sorted(numbers.items())]
    commands = {
        "prctl": command_rows(
            "prctl",
            0,
            header_values(headers["prctl"]),
            ledger_reasons.PRCTL_COMMANDS,
            ledger_reasons.PRCTL_ARGUMENTS,
            flt,
        ),
        "fcntl": command_rows(
            "fcntl",
            1,
            header_values(headers["fcntl"]),
            ledger_reasons.FCNTL_COMMANDS,
            ledger_reasons.FCNTL_ARGUMENTS,
            flt,
        ),
    }
    nr = SYSCALL_NUMBERS["ioctl"]
    ioctls = tuple(
        (request, describe_action(flt.run(nr, args=[0, request.code, 0, 0, 0, 0])))
        for request in ioctl_ledger.LEDGER
    )
    return Ledger(tuple(rows), commands, tuple(_stale(rows, commands)), ioctls)


# --- rendering ----------------------------------------------------------------------------------


def _values(values: Sequence[int]) -> str:
    return " / ".join(str(value) if value < 4096 else f"{value:#x}" for value in values)


def compact_ranges(numbers: Iterable[int]) -> str:
    """``0-3, 5, 7-9``: a sorted list of numbers as runs."""
    runs: list[list[int]] = []
    for number in sorted(numbers):
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


_INTRO = """\
# The syscall ledger

Generated by `{regenerate}` from the filter an `agentd run` installs
(`run.supervise.filter_spec`: the default profile `seccomp_profiles/default.json`, the tracer's
table `trace/syscall_table.py`, `TRACER_INVARIANTS`), compiled and run number by number, and from
the reasons in `supervisor/agentd/run/ledger_reasons.py`. Do not edit by hand: change the filter
or the reasons and run `{regenerate}`. `tests/test_syscall_ledger.py` fails when a number of the
kernel headers on the test machine (or a `PR_*`/`F_*` command) is unclassified, when a reason
names a syscall no call of which runs without a tracer stop, when an OPEN entry is new or gone
(its `KNOWN_OPEN`), and when this file differs from what the generator writes. The ioctl request
codes that change files or devices are the last table, from `kernel/ioctl_ledger.py`.

Every syscall number of the headers is in exactly one class:

- **traced**: the filter stops for the tracer (SECCOMP_RET_TRACE); the decoder turns the call into
  the action types shown, which the policy decides.
- **refused**: the kernel refuses it before the tracer sees it, with the errno shown or by killing
  the process; the reason is the profile's comment.
- **argument-filtered**: the outcome depends on the arguments: each rule with its outcome, then
  what every other call gets. An ALLOW remainder carries a reason, like an allowed syscall.
- **allowed**: runs without a stop. Its reason says why it cannot reach outside the agent, with a
  status: `contained` (cannot reach outside), `reads` (may read state outside, changes nothing),
  `bounded` (may hold up processes outside, no longer than the agent lives), `commands` (see the
  command ledgers) or **`OPEN`**: it may change something outside the agent and is not closed yet.

The ia32 ABI (`int 0x80`, AUDIT_ARCH_I386) and the x32 ABI (numbers with `__X32_SYSCALL_BIT`,
0x40000000) are killed (SECCOMP_RET_KILL_PROCESS) before any number is looked at; their numbers
are listed so that each is accounted for, and each was run through the filter.
Numbers above {max_nr}, the highest agentd knows (`kernel/syscall_numbers.py`), and the
numbers below it that have no name there (the table's holes) get ENOSYS from the filter.
"""


def _summary(ledger: Ledger) -> list[str]:
    lines = ["## Summary", "", "| ABI | " + " | ".join(CLASSES) + " | total |"]
    lines.append("|---" * (len(CLASSES) + 2) + "|")
    for abi in ABIS:
        rows = ledger.rows(abi)
        counts = [sum(1 for row in rows if row.cls == cls) for cls in CLASSES]
        lines.append(f"| {abi} | " + " | ".join(map(str, counts)) + f" | {len(rows)} |")
    statuses = [row.reason.status for row in ledger.rows("x86_64") if row.reason is not None]
    by_status = ", ".join(
        f"{status} {statuses.count(status)}"
        for status in ledger_reasons.STATUSES
        if statuses.count(status)
    )
    lines += ["", f"Reasons of x86_64 syscalls that run without a stop: {by_status}."]
    open_names = ledger.open_entries()
    listed = ", ".join(f"`{n}`" for n in open_names) or "none"
    lines += ["", f"**OPEN** ({len(open_names)}): {listed}."]
    return lines + [""]


def _syscall_table(rows: Sequence[SyscallRow], cls: str) -> list[str]:
    chosen = [row for row in rows if row.cls == cls]
    if not chosen:
        return []
    title = {TRACED: "Traced", REFUSED: "Refused in the kernel", ARG_FILTERED: "Argument-filtered"}
    lines = [f"## x86_64: {title.get(cls, cls.capitalize())} ({len(chosen)})", ""]
    with_reason = cls in (ALLOWED, ARG_FILTERED)
    lines.append("| nr | syscall | " + ("status | reason |" if with_reason else "what |"))
    lines.append("|---|---|" + ("---|---|" if with_reason else "---|"))
    for row in chosen:
        cells = [str(row.nr), f"`{row.name}`"]
        if with_reason:
            cells += _reason_cells(row)
        else:
            cells.append(_cell(row.detail))
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _reason_cells(row: SyscallRow) -> list[str]:
    """status and text of a row that may carry a reason (an ALLOW remainder follows the rules)."""
    if row.reason is None:
        return ["", _cell(row.detail)]
    status = f"**{OPEN}**" if row.reason.status == OPEN else row.reason.status
    if not row.detail:
        return [status, _cell(row.reason.text)]
    return [status, _cell(f"{row.detail}. The rest: {row.reason.text}")]


def _foreign(ledger: Ledger) -> list[str]:
    lines = ["## ia32 and x32: killed before any number is looked at", ""]
    lines += ["| ABI | numbers | outcome |", "|---|---|---|"]
    for abi in ("ia32", "x32"):
        rows = ledger.rows(abi)
        killed = [row.nr for row in rows if row.cls == REFUSED]
        numbers = [nr & ~X32_SYSCALL_BIT for nr in killed] if abi == "x32" else killed
        shown = compact_ranges(numbers)
        if abi == "x32":
            shown = f"0x40000000 + ({shown})"
        lines.append(f"| {abi} ({len(killed)} of {len(rows)}) | {shown} | {rows[0].detail} |")
    return lines + [""]


def _command_table(syscall: str, rows: Sequence[CommandRow]) -> list[str]:
    commands = [row for row in rows if not row.argument_of]
    lines = [f"## The {syscall} command ledger ({len(commands)} commands)", ""]
    lines += [
        f"Every `{rows[0].name[:2] if syscall == 'fcntl' else 'PR_'}*` constant of the headers. "
        "`filter` is what the compiled filter answers for the command as "
        f"`{syscall}`'s argument.",
        "",
        "| command | value | filter | status | reason |",
        "|---|---|---|---|---|",
    ]
    for row in commands:
        status = "UNCLASSIFIED" if row.reason is None else row.reason.status
        text = "" if row.reason is None else row.reason.text
        status = f"**{status}**" if status in (OPEN, "UNCLASSIFIED") else status
        cells = [f"`{row.name}`", _values(row.values), row.handling, status, _cell(text)]
        lines.append("| " + " | ".join(cells) + " |")
    owners: dict[str, list[str]] = {}
    for row in rows:
        if row.argument_of:
            owners.setdefault(row.argument_of, []).append(f"`{row.name}`")
    lines += ["", "Arguments of a command, not commands: "]
    lines[-1] += "; ".join(f"{owner}: {', '.join(names)}" for owner, names in owners.items())
    return lines + [""]


def _ioctl_table(ioctls: Sequence[tuple[ioctl_ledger.IoctlRequest, str]]) -> list[str]:
    lines = [f"## The ioctl ledger ({len(ioctls)} request codes that change a file or more)", ""]
    lines += [
        "The codes of `supervisor/agentd/kernel/ioctl_ledger.py` (a test compares their values "
        "with the kernel headers). `filter` is what the compiled filter answers for the code as "
        "`ioctl`'s command; TRACE is judged as a `file_write` of the descriptor's path. Every "
        "other code runs without a stop.",
        "",
        "| request | value | changes | filter | reason |",
        "|---|---|---|---|---|",
    ]
    for request, answer in ioctls:
        cells = [
            f"`{request.name}`",
            f"{request.code:#010x}",
            _cell(request.changes),
            answer,
            _cell(request.reason),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def render(ledger: Ledger) -> str:
    """The text of ``docs/syscalls.md``."""
    max_nr = max(SYSCALL_NAMES)
    lines = [_INTRO.format(regenerate=REGENERATE, max_nr=max_nr)]
    lines += _summary(ledger)
    x86_64 = ledger.rows("x86_64")
    for cls in (UNCLASSIFIED, ALLOWED, ARG_FILTERED, REFUSED, TRACED):
        lines += _syscall_table(x86_64, cls)
    lines += _foreign(ledger)
    for syscall, rows in ledger.commands.items():
        lines += _command_table(syscall, rows)
    lines += _ioctl_table(ledger.ioctls)
    return "\n".join(lines).rstrip("\n") + "\n"


def _missing_headers(headers: Mapping[str, str | tuple[str, ...]]) -> list[str]:
    paths: list[str] = []
    for value in headers.values():
        paths += [value] if isinstance(value, str) else list(value)
    return [path for path in paths if not os.path.exists(path)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="syscall-ledger", description="Write (or check) docs/syscalls.md."
    )
    parser.add_argument("--output", default=OUTPUT, help=f"where to write (default {OUTPUT})")
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 if it differs")
    options = parser.parse_args(argv)
    missing = _missing_headers(HEADERS)
    if missing:
        print(
            f"syscall-ledger: missing headers: {', '.join(missing)} "
            "(apt-get install linux-libc-dev libc6-dev)",
            file=sys.stderr,
        )
        return 2
    text = render(build_ledger())
    if options.check:
        with open(options.output, encoding="utf-8") as handle:
            same = handle.read() == text
        if not same:
            print(f"{options.output} is out of date: run {REGENERATE}", file=sys.stderr)
        return 0 if same else 1
    with open(options.output, "w", encoding="utf-8") as handle:
        handle.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
