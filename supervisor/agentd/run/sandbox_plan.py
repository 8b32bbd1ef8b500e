"""Which layer enforces which part of a policy: the tracer, Landlock, or the seccomp baseline.

This module owns one question: given a compiled ``agent_os`` policy, which of its rules can the
kernel enforce by itself through Landlock, soundly? Landlock is an allow-list ("deny these rights
except beneath these hierarchies"), so it may only ever refuse what the policy refuses: a Landlock
rule that refused something the policy allows would break the agent. ``plan_sandbox`` therefore
proves, per access class, that the policy is "deny by default, allow only targets that start with
these literal directory prefixes" (``agent_os.prefixes.match_prefixes`` reads each regex and takes
only literal prefixes; anything it does not understand ends the prefix, so the bound it returns
always contains every string the regex can match), and puts the class under Landlock only when the
proof holds and the kernel's ABI can express it without refusing more. Everything it cannot prove
stays with the tracer alone, and the plan says why. The result, a ``SandboxPlan``, carries the
Landlock ``RulesetSpec`` (fitted to the kernel's ABI), one ``ClassPlan`` per access class (layers
and reason), warnings for what the kernel lacks, and the known caveats; ``explain()`` is the text
of ``agentd run --explain-sandbox``. The rules of the proof are written out in docs/landlock.md.
"""

from __future__ import annotations

import os
import re
import stat
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from agent_os.matcher import engine_regex_source
from agent_os.policy import Pattern, ViolationMode
from agent_os.prefixes import (
    EXACT_OR_NEWLINE,
    PREFIX,
    Prefix,
    match_prefixes,
    may_match_starting_with,
)
from agent_os.stack import policy_layers
from agentd.kernel import landlock as ll

# --- what a regex can match: agent_os.prefixes ----------------------------------------------------

# --- policy analysis: is an action type an allow-list, and of what? -------------------------------

# Deny modes under which the action may still happen: SIGWARN and LOG_ONLY let it through, and
# SIGSTOP holds it for a reviewer who may allow it (``agentd resume --allow``).
_LETS_THROUGH = (ViolationMode.SIGWARN, ViolationMode.LOG_ONLY, ViolationMode.SIGSTOP)


@dataclass(frozen=True)
class AllowList:
    """Proof that everything of one action type is refused except what these patterns allow."""

    action_type: str
    allowing: tuple[tuple[Pattern, tuple[Prefix, ...]], ...]
    basis: str  # why everything else is refused, e.g. "catch-all deny 'block_other_writes'"

    @property
    def pattern_ids(self) -> tuple[str, ...]:
        return tuple(p.id for p, _ in self.allowing)


@dataclass(frozen=True)
class NotProvable:
    action_type: str
    reason: str


def _blocks(pattern: Pattern, layer: Any) -> bool:
    """A deny pattern that always refuses (not SIGWARN, LOG_ONLY or SIGSTOP)."""
    mode = pattern.violation_mode or layer.violation_mode
    return pattern.action == "deny" and mode not in _LETS_THROUGH


def analyse(policy: Any, action_type: str) -> AllowList | NotProvable:
    """Whether ``policy`` refuses every ``action_type`` target except those its allowing patterns
    (allow, warn, and denies that let through) can match, and those patterns' prefixes.

    Sound for Policy and PolicyStack: a target no allowing pattern matches is refused, because
    every pattern that could decide it refuses and the fallback (the first unconditional,
    non-exempted blocking catch-all, else the default action) refuses too.
    """
    layers = policy_layers(policy)
    allowing: list[tuple[Pattern, tuple[Prefix, ...]]] = []
    basis = None
    for layer in layers:
        if getattr(layer, "violation_handler", None) is not None:
            return NotProvable(
                action_type,
                f"policy {layer.name!r} has a violation_handler, which may let any denial through",
            )
        exempt = {pid for exc in layer.exceptions for pid in exc.patterns}
        patterns = [p for p in layer.patterns if p.enabled and p.action_type == action_type]
        catch_alls = [p for p in patterns if p.catch_all]
        strong = [
            p for p in catch_alls if _blocks(p, layer) and not p.conditions and p.id not in exempt
        ]
        loose = [
            p for p in catch_alls if not _blocks(p, layer) and (p.action == "deny" or not strong)
        ]
        if loose and basis is None:
            # INVARIANT: a let-through deny catch-all can outrank a blocking one (severity), and
            # an allow/warn catch-all decides whenever no blocking catch-all applies.
            p = loose[0]
            mode = f", {p.violation_mode.value}" if p.violation_mode else ""
            return NotProvable(
                action_type,
                f"catch-all pattern {p.id!r} ({p.action}{mode}) "
                "lets every unmatched target through",
            )
        for pattern in patterns:
            if pattern.catch_all or _blocks(pattern, layer):
                continue
            try:  # bound the regex the engine compiles ('$' is '\Z' there), not the raw text
                prefixes = match_prefixes(engine_regex_source(pattern.pattern))
            except (ValueError, re.error) as error:
                return NotProvable(
                    action_type,
                    f"pattern {pattern.id!r} ({pattern.pattern!r}) cannot be bounded: {error}",
                )
            allowing.append((pattern, prefixes))
        if strong and basis is None:
            basis = f"catch-all deny {strong[0].id!r}"
    if basis is None:
        baseline = layers[-1]
        if baseline.default_action != "deny":
            return NotProvable(
                action_type,
                f"the default action is {baseline.default_action} and "
                "no unconditional catch-all deny covers "
                f"{action_type}: the policy is a deny-list",
            )
        if baseline.violation_mode in _LETS_THROUGH:
            return NotProvable(
                action_type,
                f"the default deny's violation mode "
                f"{baseline.violation_mode.value} may let it through",
            )
        basis = "default action deny"
    return AllowList(action_type, tuple(allowing), basis)


# --- from prefixes to hierarchies -----------------------------------------------------------------

PathKind = Callable[[str], "str | None"]  # path -> "dir" | "file" | None (missing)


def path_kind(path: str) -> str | None:
    """What ``path`` is now, following symlinks as ``open(O_PATH)`` does."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return "dir" if stat.S_ISDIR(mode) else "file"


def _parent(path: str) -> str:
    return os.path.dirname(path) or "/"


def _is_normal(path: str) -> bool:
    return path.startswith("/") and os.path.normpath(path) == path and not path.startswith("//")


@dataclass
class _Grants:
    """Hierarchies (dir -> pattern ids) and exact files that Landlock must allow."""

    dirs: dict[str, set[str]] = field(default_factory=dict)
    files: dict[str, set[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)
    newline_names: dict[str, list[str]] = field(default_factory=dict)  # pattern id -> names


def _path_grants(
    allow_list: AllowList, *, deleting: bool, kind: PathKind, grants: _Grants
) -> str | None:
    """Add what Landlock must allow for ``allow_list`` to ``grants``; a reason if it cannot."""
    for pattern, prefixes in allow_list.allowing:
        for prefix in prefixes:
            text = prefix.text
            if text and not text.startswith("/"):
                grants.notes.append(
                    f"pattern {pattern.id!r} matches no absolute path (it starts with {text!r})"
                )
                continue
            if prefix.kind == PREFIX:
                directory = text[: text.rfind("/")] if "/" in text else ""
                if not directory:
                    return (
                        f"pattern {pattern.id!r} ({pattern.pattern!r}) may allow "
                        f"{allow_list.action_type} anywhere under /"
                    )
                if not _is_normal(directory):
                    return (
                        f"pattern {pattern.id!r}: {directory!r} is not a normalised "
                        "absolute directory"
                    )
                grants.dirs.setdefault(directory, set()).add(pattern.id)
                continue
            # an exact name
            if text.endswith("/") or not _is_normal(text):
                grants.notes.append(
                    f"pattern {pattern.id!r} matches only {text!r}, which is not a normalised path"
                )
                continue
            if prefix.kind == EXACT_OR_NEWLINE:
                grants.newline_names.setdefault(pattern.id, []).append(text)
            what = kind(text)
            if deleting or what is None:
                # removing or creating the name needs a right on its parent directory
                parent = _parent(text)
                if parent == "/":
                    return (
                        f"pattern {pattern.id!r} allows {allow_list.action_type} of {text!r}, "
                        "which Landlock can only allow by allowing it in all of /"
                    )
                grants.dirs.setdefault(parent, set()).add(pattern.id)
            elif what == "file":
                grants.files.setdefault(text, set()).add(pattern.id)
            # an existing directory itself: no write Landlock checks can succeed on it
            # (EEXIST, EISDIR), so it needs no rule
    return None


def _minimal_dirs(dirs: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop every directory that lies beneath another one (its ids move to the ancestor)."""
    out: dict[str, set[str]] = {}
    for directory in sorted(dirs, key=len):
        ancestor = next((a for a in out if directory == a or directory.startswith(a + "/")), None)
        if ancestor is None:
            out[directory] = set(dirs[directory])
        else:
            out[ancestor] |= dirs[directory]
    return out


# --- the plan -------------------------------------------------------------------------------------

TRACER = "tracer"
LANDLOCK = "landlock"
SECCOMP = "seccomp baseline"

_MAKE = (
    ll.LANDLOCK_ACCESS_FS_MAKE_CHAR
    | ll.LANDLOCK_ACCESS_FS_MAKE_DIR
    | ll.LANDLOCK_ACCESS_FS_MAKE_REG
    | ll.LANDLOCK_ACCESS_FS_MAKE_SOCK
    | ll.LANDLOCK_ACCESS_FS_MAKE_FIFO
    | ll.LANDLOCK_ACCESS_FS_MAKE_BLOCK
    | ll.LANDLOCK_ACCESS_FS_MAKE_SYM
)
WRITE_RIGHTS = (
    ll.LANDLOCK_ACCESS_FS_WRITE_FILE
    | ll.LANDLOCK_ACCESS_FS_TRUNCATE
    | _MAKE
    | ll.LANDLOCK_ACCESS_FS_REFER
)
# Handled (so refused everywhere) and granted nowhere: device nodes (docs/security.md).
DEVICE_RIGHTS = ll.LANDLOCK_ACCESS_FS_MAKE_CHAR | ll.LANDLOCK_ACCESS_FS_MAKE_BLOCK
REMOVE_RIGHTS = ll.LANDLOCK_ACCESS_FS_REMOVE_DIR | ll.LANDLOCK_ACCESS_FS_REMOVE_FILE
FILE_WRITE_RIGHTS = ll.LANDLOCK_ACCESS_FS_WRITE_FILE | ll.LANDLOCK_ACCESS_FS_TRUNCATE
REFER_ABI = 2
ABSTRACT_PREFIX = "unix:@"  # network_connect target of an abstract unix socket (contracts.md)


@dataclass(frozen=True)
class ClassPlan:
    """One access class, the layers that enforce it, and why."""

    name: str
    layers: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class SandboxPlan:
    policy: str
    mode: str
    support: ll.LandlockSupport
    classes: tuple[ClassPlan, ...]
    ruleset: ll.RulesetSpec  # fitted to ``support.abi``; empty when Landlock adds nothing
    warnings: tuple[str, ...] = ()
    caveats: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def layers_for(self, name: str) -> tuple[str, ...]:
        for item in self.classes:
            if item.name == name:
                return item.layers
        raise KeyError(name)

    def prepare_landlock(self, **options: Any) -> tuple[ll.PreparedRuleset | None, tuple[str, ...]]:
        """Build the kernel ruleset in the parent (see ``landlock.prepare``)."""
        if self.ruleset.empty:
            return None, ()
        return ll.prepare(self.ruleset, self.support, **options)

    def explain(self) -> str:
        lines = [
            f"Sandbox for policy {self.policy!r} (mode {self.mode}); kernel: "
            f"{self.support.describe()}",
            "",
        ]
        width = max(len(c.name) for c in self.classes)
        for item in self.classes:
            lines.append(f"  {item.name:<{width}}  {' + '.join(item.layers)}")
            lines.extend(
                textwrap.wrap(item.reason, 100, initial_indent=" " * 6, subsequent_indent=" " * 6)
            )
        lines.append("")
        if self.ruleset.empty:
            lines.append("Landlock ruleset: none")
        else:
            lines.append("Landlock ruleset (applied in the agent before exec):")
            lines.extend(f"  {line}" for line in ll.describe_spec(self.ruleset))
        for title, items in (
            ("Warnings", self.warnings),
            ("Caveats", self.caveats),
            ("Notes", self.notes),
        ):
            if items:
                lines.append(f"{title}:")
                for text in items:
                    lines.extend(
                        textwrap.wrap(text, 100, initial_indent="  - ", subsequent_indent="    ")
                    )
        return "\n".join(lines)


def _ids(ids: Iterable[str]) -> str:
    return ", ".join(repr(i) for i in sorted(ids))


def _write_rules(grants: _Grants, handled: int, kind: PathKind) -> list[ll.PathRule]:
    """The Landlock rules for the writable hierarchies and single files in ``grants``; what
    Landlock cannot express goes into its notes and caveats."""
    dirs = _minimal_dirs(grants.dirs)
    rules: list[ll.PathRule] = []
    for directory, ids in dirs.items():
        what = kind(directory)
        if what != "dir":
            grants.notes.append(
                f"{directory} {'is not a directory' if what else 'does not exist'}"
                f" now: no Landlock rule for it (patterns {_ids(ids)})"
            )
            grants.caveats.append(
                f"{directory} is not there at start: if someone outside the "
                f"agent creates it later, Landlock refuses writes in it"
            )
            continue
        # INVARIANT: no hierarchy gets MAKE_CHAR/MAKE_BLOCK: a device node is a second name
        # for a device outside it (the seccomp baseline refuses them too).
        rules.append(ll.PathRule(directory, handled & ~DEVICE_RIGHTS, f"patterns {_ids(ids)}"))
    single_files = []
    for path, ids in sorted(grants.files.items()):
        if not any(path.startswith(d + "/") for d in dirs):
            rules.append(ll.PathRule(path, FILE_WRITE_RIGHTS, f"patterns {_ids(ids)}"))
            single_files.append(path)
    if single_files:
        grants.caveats.append(
            f"{', '.join(single_files)}: allowed as single files; Landlock "
            "allows writing them but not replacing them by a rename"
        )
    allowed_dirs = [r.path for r in rules if r.path not in single_files]
    for pattern_id, names in grants.newline_names.items():
        names = [
            n
            for n in names
            if not any(_parent(n) == d or _parent(n).startswith(d + "/") for d in allowed_dirs)
        ]
        if names:
            grants.caveats.append(
                f"pattern {pattern_id!r} ends in '$', which also matches "
                f"{', '.join(names)} followed by a newline; Landlock does not "
                "allow creating such a name (write '\\Z' to be exact)"
            )
    return rules


def _file_classes(
    policy: Any, support: ll.LandlockSupport, kind: PathKind
) -> tuple[list[ClassPlan], list[ll.PathRule], int, _Grants, list[str]]:
    """file_write, file_delete, file_move: one Landlock group (see docs/landlock.md)."""
    # One decision chain on purpose: each early return says why Landlock cannot take these
    # classes, and the reasons read best in the order they are tested.
    grants = _Grants()
    warnings: list[str] = []
    tracer_only = "enforced by the tracer only"
    write, delete = analyse(policy, "file_write"), analyse(policy, "file_delete")

    def all_tracer(reason: str, delete_reason: str | None = None) -> tuple:
        classes = [
            ClassPlan("file_write", (TRACER,), reason),
            ClassPlan("file_delete", (TRACER,), delete_reason or reason),
            ClassPlan("file_move", (TRACER,), delete_reason or reason),
        ]
        return classes, [], 0, grants, warnings

    if isinstance(write, NotProvable):
        return all_tracer(
            f"{tracer_only}: file_write is not an allow-list of hierarchies ({write.reason})",
            f"{tracer_only}: Landlock could only take deletes and moves together "
            f"with writes, and file_write is not an allow-list ({write.reason})",
        )
    problem = _path_grants(write, deleting=False, kind=kind, grants=grants)
    if problem:
        return all_tracer(f"{tracer_only}: {problem}")
    handled = WRITE_RIGHTS
    if isinstance(delete, AllowList):
        problem = _path_grants(delete, deleting=True, kind=kind, grants=grants)
        if problem:
            return all_tracer(f"{tracer_only}: {problem}")
        handled |= REMOVE_RIGHTS
        delete_reason = (
            f"Landlock refuses removing anything outside the hierarchies it "
            f"allows for writing (policy: {delete.basis}"
            + (
                f"; allow patterns {_ids(delete.pattern_ids)})"
                if delete.allowing
                else "; nothing allowed)"
            )
        )
    else:
        # Removal stays unhandled: Landlock then never asks for a remove right, and a rename the
        # policy allows has both names in the writable hierarchies (the tracer checks a rename
        # as a write of both), where Landlock grants what the rename needs.
        delete_reason = (
            f"{tracer_only}: {delete.reason}; Landlock leaves removal alone and "
            "checks renames as writes of both names, as the tracer does"
        )
    if support.available and support.abi < REFER_ABI:
        warnings.append(
            f"Landlock ABI {support.abi} refuses every rename and link across "
            f"directories (it has no 'refer' right): file writes are enforced by "
            f"the tracer only; Landlock needs ABI {REFER_ABI} or later for them"
        )
        return all_tracer(f"{tracer_only}: Landlock ABI {support.abi} is too old (see warnings)")
    rules = _write_rules(grants, handled, kind)
    where = (
        f"allows writing only beneath {', '.join(r.path for r in rules)}"
        if rules
        else "refuses every write (no allowed hierarchy exists now)"
    )
    write_reason = (
        f"Landlock {where} (policy: {write.basis}"
        + (
            f"; allow patterns {_ids(write.pattern_ids)})"
            if write.allowing
            else "; nothing allowed)"
        )
        + "; chown, xattrs and timestamps are checked by the tracer only"
    )
    layers = (TRACER, LANDLOCK)
    delete_layers = layers if handled & REMOVE_RIGHTS else (TRACER,)
    classes = [
        ClassPlan("file_write", layers, write_reason),
        ClassPlan("file_delete", delete_layers, delete_reason),
        ClassPlan(
            "file_move",
            layers,
            "the tracer checks file_move and file_write of both names; Landlock "
            "refuses renames and links into or out of the allowed hierarchies",
        ),
    ]
    grants.caveats.append(
        "a hard link from outside the writable hierarchies into them is "
        "refused by Landlock (EXDEV) even where the policy allows it: such a "
        "link would make that file writable through an allowed name"
    )
    return classes, rules, handled, grants, warnings


def _network_classes(
    policy: Any, support: ll.LandlockSupport
) -> tuple[list[ClassPlan], int, int, list[str]]:
    connect = analyse(policy, "network_connect")
    warnings: list[str] = []
    handled_net = scoped = 0
    if isinstance(connect, NotProvable):
        tcp = ClassPlan(
            "network_connect (tcp)", (TRACER,), f"enforced by the tracer only: {connect.reason}"
        )
        abstract = ClassPlan(
            "network_connect (abstract unix)",
            (TRACER,),
            f"enforced by the tracer only: {connect.reason}",
        )
        return [tcp, abstract], 0, 0, warnings
    tcp_allowers = [
        p.id
        for p, prefixes in connect.allowing
        if any(not (pre.text.startswith("unix:")) for pre in prefixes)
    ]
    if tcp_allowers:
        tcp = ClassPlan(
            "network_connect (tcp)",
            (TRACER,),
            "enforced by the tracer only: Landlock filters TCP by port alone and the "
            f"policy allows destinations by address (patterns {_ids(tcp_allowers)})",
        )
    elif support.abi >= ll.NET_RIGHTS_ABI:
        handled_net = ll.LANDLOCK_ACCESS_NET_CONNECT_TCP
        tcp = ClassPlan(
            "network_connect (tcp)",
            (TRACER, LANDLOCK),
            f"the policy allows no TCP destination ({connect.basis}): Landlock "
            "refuses every TCP connect",
        )
    else:
        tcp = ClassPlan(
            "network_connect (tcp)",
            (TRACER,),
            f"enforced by the tracer only: Landlock needs ABI {ll.NET_RIGHTS_ABI} for TCP rights",
        )
        if support.available:
            warnings.append(
                f"Landlock ABI {support.abi} has no network rights (ABI "
                f"{ll.NET_RIGHTS_ABI}): TCP connects are enforced by the tracer only"
            )
    abstract_allowers = [
        p.id
        for p, _ in connect.allowing
        if may_match_starting_with(engine_regex_source(p.pattern), ABSTRACT_PREFIX)
    ]
    if abstract_allowers:
        abstract = ClassPlan(
            "network_connect (abstract unix)",
            (TRACER,),
            "enforced by the tracer only: the policy allows abstract sockets "
            f"(patterns {_ids(abstract_allowers)})",
        )
    elif support.abi >= ll.SCOPES_ABI:
        scoped = ll.LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET
        abstract = ClassPlan(
            "network_connect (abstract unix)",
            (TRACER, LANDLOCK),
            "the policy allows no abstract unix socket: Landlock refuses "
            "connecting to one created outside the agent",
        )
    else:
        abstract = ClassPlan(
            "network_connect (abstract unix)",
            (TRACER,),
            f"enforced by the tracer only: Landlock scopes need ABI {ll.SCOPES_ABI}",
        )
    return [tcp, abstract], handled_net, scoped, warnings


# The classes no policy changes: who enforces them is agentd's design, not a plan's choice.
_FIXED_CLASSES = (
    ClassPlan(
        "file_read",
        (TRACER,),
        "enforced by the tracer only: Landlock is an allow-list and its read right also "
        "governs execve (the kernel opens the program and its ELF interpreter for "
        "reading), which the policy judges as process_spawn, not file_read",
    ),
    ClassPlan(
        "file_chmod", (TRACER,), "enforced by the tracer only: Landlock cannot restrict chmod"
    ),
    ClassPlan(
        "shell_execute / process_spawn",
        (TRACER,),
        "enforced by the tracer only: decided on the command line and the resolved "
        "executable, which Landlock cannot see",
    ),
    ClassPlan(
        "memory_access / env_read",
        (TRACER,),
        "enforced by the tracer (env_read: denied variables are removed before exec)",
    ),
    ClassPlan(
        "kernel side doors",
        (SECCOMP,),
        "io_uring, ptrace, bpf, mount, kexec, modules, userfaultfd, CLONE_UNTRACED, device "
        "nodes, whole-file-system ioctls, O_ASYNC, leases: refused in the kernel by the "
        "seccomp baseline; ia32 and x32 calls and numbers with no name are refused too "
        "(docs/syscalls.md)",
    ),
    ClassPlan(
        "other processes, IPC, core dumps",
        (TRACER, SECCOMP),
        "agentd's containment (not a policy rule): limits, priorities, affinity, scheduling "
        "and SIGIO owners of processes outside the agent are refused by the tracer; System "
        "V IPC and POSIX queues live in an IPC namespace of the agent's own (refused where "
        "it cannot have one); RLIMIT_CORE is 0; a root agent loses CAP_MKNOD, "
        "CAP_SYS_CHROOT, CAP_SYS_NICE, CAP_SYS_RESOURCE and the network plane's capabilities",
    ),
)


def _audit_plan(name: str, support: ll.LandlockSupport) -> SandboxPlan:
    """The plan of ``--mode audit``: it blocks nothing, so every class is the tracer's."""
    classes = [
        ClassPlan(n, (TRACER,), "--mode audit blocks nothing, so Landlock is not used")
        for n in (
            "file_write",
            "file_delete",
            "file_move",
            "network_connect (tcp)",
            "network_connect (abstract unix)",
            "signals outside the agent",
        )
    ]
    return SandboxPlan(
        name,
        "audit",
        support,
        (*_FIXED_CLASSES[:1], *classes, *_FIXED_CLASSES[1:]),
        ll.RulesetSpec(),
        (),
        (),
        (),
    )


def plan_sandbox(
    policy: Any,
    *,
    support: ll.LandlockSupport | None = None,
    mode: str = "enforce",
    kind: PathKind = path_kind,
) -> SandboxPlan:
    """Decide which layer enforces what for ``policy``.

    ``support`` defaults to probing the running kernel (inject one to plan for another kernel);
    ``mode`` "audit" blocks nothing, so it uses no Landlock; ``kind`` says what a path is now.
    """
    # Long because it assembles the plan from its pieces (_file_classes, _network_classes) and
    # states what a missing or older Landlock changes; each step is a few lines.
    if mode not in ("enforce", "audit"):
        raise ValueError(f"mode must be enforce or audit, got {mode!r}")
    support = support if support is not None else ll.probe()
    name = getattr(policy, "name", "policy")
    warnings: list[str] = []
    caveats: list[str] = []
    notes: list[str] = []
    if mode == "audit":
        return _audit_plan(name, support)
    # Plan for the kernel we have; without Landlock, plan for the newest one and then say what
    # that kernel would have enforced that this one does not.
    target = support if support.available else ll.LandlockSupport(ll.LATEST_ABI)
    file_classes, rules, handled_fs, grants, file_warnings = _file_classes(policy, target, kind)
    net_classes, handled_net, scoped, net_warnings = _network_classes(policy, target)
    if target.abi >= ll.SCOPES_ABI:
        scoped |= ll.LANDLOCK_SCOPE_SIGNAL
        signals = ClassPlan(
            "signals outside the agent",
            (TRACER, LANDLOCK),
            "agentd's containment rule (not a policy rule): Landlock refuses "
            "signals to processes outside the agent's domain",
        )
    else:
        signals = ClassPlan(
            "signals outside the agent",
            (TRACER,),
            "agentd's containment rule, enforced by the tracer only: Landlock "
            f"scopes need ABI {ll.SCOPES_ABI}",
        )
    classes = [_FIXED_CLASSES[0], *file_classes, *net_classes, signals, *_FIXED_CLASSES[1:]]
    spec = ll.RulesetSpec(handled_fs, handled_net, scoped, tuple(rules))
    notes += grants.notes
    if not support.available:
        lost = [c.name for c in classes if LANDLOCK in c.layers]
        classes = [
            ClassPlan(
                c.name,
                (TRACER,),
                f"{c.reason} -- but Landlock is not available, so the tracer alone enforces it",
            )
            if LANDLOCK in c.layers
            else c
            for c in classes
        ]
        warnings.append(
            f"{support.describe()}; "
            + (
                f"{', '.join(lost)} would also be enforced by Landlock and are "
                "enforced by the tracer only"
                if lost
                else "this policy gains nothing from it"
            )
        )
        spec = ll.RulesetSpec()
    else:
        warnings += file_warnings + net_warnings
        spec, dropped = ll.fit_to_abi(spec, support.abi)
        if handled_fs and not spec.handled_fs & ll.LANDLOCK_ACCESS_FS_TRUNCATE:
            dropped = tuple(d for d in dropped if "truncate" not in d) + (
                f"Landlock ABI {support.abi} cannot restrict truncate(2) (needs ABI 3): "
                "truncation is enforced by the tracer only",
            )
        warnings += dropped
        if spec.handled_fs:
            caveats += grants.caveats
    return SandboxPlan(
        name,
        mode,
        support,
        tuple(classes),
        spec,
        tuple(warnings),
        tuple(dict.fromkeys(caveats)),
        tuple(dict.fromkeys(notes)),
    )


def explain_sandbox(
    policy: Any, *, mode: str = "enforce", support: ll.LandlockSupport | None = None
) -> str:
    """The text of ``agentd run --explain-sandbox``."""
    return plan_sandbox(policy, support=support, mode=mode).explain()


__all__ = [
    "AllowList",
    "NotProvable",
    "analyse",
    "ClassPlan",
    "SandboxPlan",
    "plan_sandbox",
    "explain_sandbox",
    "path_kind",
    "TRACER",
    "LANDLOCK",
    "SECCOMP",
    "WRITE_RIGHTS",
    "REMOVE_RIGHTS",
]
