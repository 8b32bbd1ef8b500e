"""Decide on one decoded syscall: every ``Action`` to the policy, plus the supervisor's own
containment checks, combined into one ``Verdict``.

Owns the *decide* step of stop -> decode -> decide -> enforce. The policy engine answers per
action (``policy.evaluate(action_type, target, context) -> EvaluationResult``, the action's facts
such as ``preexisting`` joining the context); a syscall with several actions (rename:
file_move and two file_writes) gets the most restrictive answer: kill > stop > block > warn >
allow. A refusal that confirmation alone would lift asks the operator (a ``stop`` with
``Verdict.confirmation``). Containment is not policy and cannot be configured away: a signal
aimed outside the agent tree, or a write to ``/proc/PID/*`` (or a read of ``/proc/PID/mem`` or
``/proc/PID/environ``) of a process outside it, is blocked. The agent's own network is not an
internal network: its own loopback under a network plane, a loopback port only its tree listens
on without one (``agentd:own_network``). An exception while evaluating denies (fail closed).
Plain data in, plain data out; the agent tree is passed in.
"""

from __future__ import annotations

import enum
import errno
import functools
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal, Protocol, cast

from agent_os.policy import EvaluationResult, Severity, ViolationMode
from agent_os.signals import AgentSignal
from agentd.kernel import procfs

from .decode import Action, DecodedSyscall, SignalTarget

__all__ = [
    "Evaluation",
    "Verdict",
    "Outcome",
    "Decision",
    "PolicyEngine",
    "decide",
    "fail_closed",
    "kernel_refuses",
    "OUTCOME_RANK",
    "AgentTree",
    "containment_of_protected",
    "NetworkView",
    "split_host_port",
    "evaluate_action",
    "connect_evaluations",
]


class Outcome(enum.StrEnum):
    """What happens to a syscall, from the most lenient to the most severe. A ``StrEnum``: an
    outcome is its own name in the audit record (``enforced``) and compares equal to it."""

    ALLOW = "allow"  # let it run
    WARN = "warn"  # let it run, with a line on the agent's stderr (SIGWARN)
    BLOCK = "block"  # skip it; the agent gets EACCES or the kernel's own errno
    STOP = "stop"  # hold the agent for the operator's review (SIGSTOP)
    KILL = "kill"  # skip it and kill the agent's whole tree (SIGKILL)

    @property
    def refuses(self) -> bool:
        return OUTCOME_RANK[self] >= OUTCOME_RANK[Outcome.BLOCK]


OUTCOME_RANK: Mapping[str, int] = MappingProxyType(
    {outcome: rank for rank, outcome in enumerate(Outcome)}
)
Decision = Literal["allow", "deny", "warn"]  # the policy engine's answer (EvaluationResult.action)


class PolicyEngine(Protocol):
    """What the supervisor needs of a policy: agent_os's ``Policy`` and ``PolicyStack`` (and
    anything else that answers like them)."""

    def evaluate(
        self, action_type: str, target: str, context: Mapping[str, Any] | None = None
    ) -> EvaluationResult: ...


_PROC_PID = re.compile(r"/proc/(\d+)(?:/(.*))?\Z", re.DOTALL)
_PROC_MEM = re.compile(r"(?:task/\d+/)?mem")


@dataclass(frozen=True)
class Evaluation:
    """One action and what was decided about it, with the reasons for the audit record."""

    action_type: str
    target: str
    decision: Decision
    outcome: Outcome
    reason: str
    pattern_ids: tuple[str, ...] = ()
    severity: Severity | None = None
    signal: AgentSignal | None = None
    violation_mode: ViolationMode | None = None
    message: str = ""
    confirmable: bool = False  # refused only for want of confirmation (require_confirmation)
    errno: int | None = None  # refused: the kernel's own errno for it (else EACCES / probe)

    def __post_init__(self) -> None:
        if type(self.outcome) is not Outcome:  # a plain word from a caller: one of the five
            object.__setattr__(self, "outcome", Outcome(self.outcome))


@dataclass(frozen=True)
class Verdict:
    """What to do with the stopped syscall, and every evaluation that led there.
    ``confirmation``: a ``stop`` that asks the operator to confirm what the policy allows with
    confirmation (every refusal among the evaluations is confirmable)."""

    outcome: Outcome
    reason: str
    evaluations: tuple[Evaluation, ...] = field(default_factory=tuple)
    confirmation: bool = False

    @property
    def errno(self) -> int | None:
        """The errno a refusal answers when every refusing evaluation names the kernel's own
        (a connect to a port nobody listens on: ECONNREFUSED); else None."""
        refusing = [e for e in self.evaluations if e.outcome.refuses]
        errors = {e.errno for e in refusing}
        return errors.pop() if len(errors) == 1 and refusing else None

    @property
    def deciding(self) -> Evaluation | None:
        for evaluation in self.evaluations:
            if self.confirmation and evaluation.confirmable:
                return evaluation
            if evaluation.outcome == self.outcome and self.outcome != Outcome.ALLOW:
                return evaluation
        return None


class AgentTree:
    """Membership test for the agent's processes and threads (a view of the tracer's tasks)."""

    def __init__(self, contains: Callable[[int], bool], members: Callable[[], Iterable[int]]):
        self.contains = contains
        self.members = members


def _outcome(result: EvaluationResult) -> Outcome:
    mode = result.violation_mode
    if not result.allowed:
        if mode is ViolationMode.SIGKILL:
            return Outcome.KILL
        return Outcome.STOP if mode is ViolationMode.SIGSTOP else Outcome.BLOCK
    return Outcome.WARN if mode is ViolationMode.SIGWARN else Outcome.ALLOW


def _pattern_ids(result) -> tuple[str, ...]:
    ids = [result.pattern_id] if result.pattern_id else []
    ids += [pid for pid in (result.matched or ()) if pid not in ids]
    return tuple(ids)


def evaluate_action(policy: PolicyEngine, action: Action, context: dict) -> Evaluation:
    """The policy's answer on one action, as an ``Evaluation``; an exception denies. The
    action's facts (``preexisting``, ...) join the context."""
    if action.facts:
        context = {**context, **dict(action.facts)}
    try:
        result = policy.evaluate(action.action_type, action.target, context)
        outcome = _outcome(result)
    except Exception as exc:  # INVARIANT: an error while deciding denies (fail closed)
        return Evaluation(
            action.action_type,
            action.target,
            "deny",
            Outcome.BLOCK,
            f"error while evaluating: {exc!r}",
        )
    return Evaluation(
        action.action_type,
        action.target,
        cast(Decision, result.action),
        outcome,
        result.reason,
        _pattern_ids(result),
        result.severity,
        result.signal,
        result.violation_mode,
        getattr(result, "message", "") or "",
        bool(getattr(result, "confirmable", False)) and outcome.refuses,
    )


def _containment_of_signal(target: SignalTarget, tree: AgentTree) -> Evaluation:
    what = {
        "pid": f"pid {target.ident}",
        "pgrp": f"process group {target.ident}",
        "all": "every process (kill -1)",
    }[target.kind]
    if target.kind == "pid":
        inside = tree.contains(target.ident)
    elif target.kind == "pgrp":
        inside = _pgrp_inside(target.ident, tree)
    else:
        inside = False
    if inside:
        return Evaluation(
            "process_signal", what, "allow", Outcome.ALLOW, "target is inside the agent tree"
        )
    return Evaluation(
        "process_signal",
        what,
        "deny",
        Outcome.BLOCK,
        "containment: the agent may only signal its own processes",
        ("agentd:containment",),
    )


def _containment_of_process(syscall: str, target: SignalTarget, tree: AgentTree) -> Evaluation:
    """Another process's limits, scheduling, memory placement or SIGIO: the agent may change
    its own tree's only. The refusal answers as the kernel does for a process one may not
    touch (EPERM), or for a pid that names nothing (ESRCH)."""
    verdict = _containment_of_signal(target, tree)
    what = f"{syscall} of {verdict.target}"
    if verdict.outcome is Outcome.ALLOW:
        return replace(verdict, action_type="process_control", target=what)
    missing = target.kind == "pid" and procfs.stat(target.ident) is None
    return replace(
        verdict,
        action_type="process_control",
        target=what,
        reason="containment: the agent may only change its own processes",
        errno=errno.ESRCH if missing else errno.EPERM,
    )


def _pgrp_inside(pgid: int, tree: AgentTree) -> bool:
    """True when every process of group ``pgid`` belongs to the agent (and the group exists)."""
    found = False
    for pid in procfs.pids():
        info = procfs.stat(pid)
        if info is None or info.pgrp != pgid:
            continue
        found = True
        if not tree.contains(pid):
            return False
    return found


def _containment_of_path(action: Action, tree: AgentTree) -> Evaluation | None:
    """Another process's /proc entries are out of bounds for writing (and mem for reading)."""
    match = _PROC_PID.match(action.target)
    if not match:
        return None
    rest = match.group(2) or ""
    if action.action_type == "file_write" and _PROC_MEM.fullmatch(rest):
        # Even the agent's own memory: /proc/PID/mem writes read-only pages, and the scratch
        # copies the decisions are made on are read-only pages (pinning.py, TOCTOU).
        return Evaluation(
            action.action_type,
            action.target,
            "deny",
            Outcome.BLOCK,
            "containment: the agent may not write process memory through /proc",
            ("agentd:containment",),
        )
    if tree.contains(int(match.group(1))):
        return None
    # Reading: only the memory and the environment (which may hold the very variables
    # env_read removed from the agent's own) of a process outside the tree are off limits.
    if action.action_type == "file_read" and rest.rsplit("/", 1)[-1] not in ("mem", "environ"):
        return None
    return Evaluation(
        action.action_type,
        action.target,
        "deny",
        Outcome.BLOCK,
        "containment: the agent may not change, or read the memory or environment "
        "of, processes outside its tree",
        ("agentd:containment",),
    )


def _socket_fd(decoded: DecodedSyscall) -> int | None:
    """The socket descriptor of a connect, sendto or sendmsg (their first argument)."""
    if decoded.syscall not in ("connect", "sendto", "sendmsg", "sendmmsg") or not decoded.args:
        return None
    value = decoded.args[0] & 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _process_facts(action: Action, tree: AgentTree) -> Action:
    """A read under ``/proc/PID/`` of one of the agent's own processes carries
    ``created_by_agent: true``: the agent made that process (its cgroup, limits, mount table and
    environment are its own to read)."""
    if action.action_type != "file_read" or not action.target.startswith("/proc/"):
        return action
    match = _PROC_PID.match(action.target)
    if not match:
        return action
    return replace(
        action, facts=action.facts + (("created_by_agent", tree.contains(int(match.group(1)))),)
    )


_PROTECTED_FILE_ACTIONS = frozenset({"file_write", "file_delete", "file_move", "file_chmod"})
# Syscalls whose file_write of a missing name cannot make it a symlink (anything else, or an
# unknown syscall, is taken to be able to)
_MAKES_NO_SYMLINK = frozenset(
    {"mkdir", "mkdirat", "open", "openat", "openat2", "creat", "mknod", "mknodat", "link", "linkat"}
)


class _Protection:
    """What ``containment_of_protected`` tests a target against, worked out once per set of
    protected paths: the paths (a directory given with its trailing slash), the directories
    themselves without it, and every directory strictly above one of them (with a slash)."""

    def __init__(self, protected_paths: tuple[str, ...]):
        self.prefixes = protected_paths
        self.directories = frozenset(p[:-1] for p in protected_paths if len(p) > 1 and p[-1] == "/")
        above: set[str] = set()
        for path in protected_paths:
            cut = path.rstrip("/")
            while "/" in cut:
                cut = cut[: cut.rindex("/")]
                above.add(cut + "/")
        self.above = frozenset(above)

    def inside(self, target: str) -> bool:
        """``target`` is a protected path, in one, or a protected directory itself."""
        return target.startswith(self.prefixes) or target in self.directories

    def carries_away(self, action: str, target: str, syscall: str | None) -> bool:
        """Is ``target`` a directory above a protected path that ``action`` could move, remove
        or replace with a symlink (see ``containment_of_protected``)?"""
        if target.rstrip("/") + "/" not in self.above:
            return False
        if action in ("file_move", "file_delete"):
            return True
        # A write or chmod of a directory above: harmless on one that exists (nothing replaces
        # an existing name but a rename, which is a file_move). A missing one may be made as a
        # directory (`mkdir ~/.cache`: the protected path below stays protected), not as a
        # symlink, which would redirect the path to a directory of the agent's.
        return syscall not in _MAKES_NO_SYMLINK and not os.path.lexists(target)


@functools.lru_cache(maxsize=8)
def _protection(protected_paths: tuple[str, ...]) -> _Protection:
    return _Protection(protected_paths)


def containment_of_protected(
    evaluation: Evaluation, protected_paths: Iterable[str], syscall: str | None = None
) -> Evaluation | None:
    """The supervisor's own files (audit log, runs directory, policy cache) are not the agent's
    to change, and its control socket is not the agent's to talk to (it would answer its own
    hold).

    Nor are the directories above them: renaming one (or exchanging it, or removing it) would
    carry the protected path away, and the agent could put a directory of its own where the
    supervisor, or the next run's, looks: a runs file naming a pid for ``agentd kill``, a
    policy cache entry that is unpickled. A directory above that does not exist yet may be made
    as a directory, not as a symlink (which would redirect the path; ``syscall`` says which, None
    counts as able to). Writing to one that exists (mkdir, utime, chmod) replaces nothing and
    stays the policy's to decide."""
    action = evaluation.action_type
    target = evaluation.target
    protection = _protection(tuple(protected_paths))
    if action in _PROTECTED_FILE_ACTIONS:
        reason = "containment: the supervisor's own files"
        ends = target.split(" -> ") if action == "file_move" else (target,)
        hit = any(
            protection.inside(end) or protection.carries_away(action, end, syscall) for end in ends
        )
    elif action == "network_connect" and target.startswith("unix:"):
        target = target[len("unix:") :]
        reason = "containment: the supervisor's control socket is the operator's, not the agent's"
        hit = protection.inside(target)
    else:
        return None
    if not hit:
        return None
    return Evaluation(
        evaluation.action_type,
        evaluation.target,
        "deny",
        Outcome.BLOCK,
        reason,
        ("agentd:containment",),
    )


@dataclass(frozen=True)
class NetworkView:
    """What the run's network plane knows, for judging a connect (netplane/plane.py).

    ``names_for(ip)`` gives the names the run's DNS stub resolved to that address;
    ``endpoints`` are the plane's own listeners (``ip:port`` targets: the DNS stub and the
    proxy), which the agent reaches by design whatever the policy says about their addresses.
    """

    names_for: Callable[[str], tuple[str, ...]]
    endpoints: frozenset[str] = frozenset()
    # The agent has a network namespace of its own: its loopback holds only the agent's own
    # servers (and the plane's), nothing of the host.
    own_loopback: bool = False


def split_host_port(target: str) -> tuple[str, int] | None:
    """``1.2.3.4:80`` -> ("1.2.3.4", 80), ``[::1]:22`` -> ("::1", 22); None for a name, a unix
    socket or anything malformed (``agent_os.netaddr.split_connect_target``, addresses only)."""
    from agent_os.netaddr import split_connect_target

    parsed = split_connect_target(target)
    if parsed is None:
        return None
    try:
        ipaddress.ip_address(parsed[0])
    except ValueError:
        return None
    return parsed


def _own(action: Action, reason: str) -> Evaluation:
    return Evaluation(
        action.action_type, action.target, "allow", Outcome.ALLOW, reason, ("agentd:own_network",)
    )


def connect_evaluations(
    policy: PolicyEngine,
    action: Action,
    context: dict,
    network: NetworkView | None,
    tree: AgentTree | None = None,
    fd: int | None = None,
) -> list[Evaluation]:
    """A connect to an address is judged as that address and, when the run's DNS stub resolved
    names to it, as each ``name:port`` too, with ``dest_ip`` in the context (the address-set
    conditions read it); the most restrictive answer wins.

    The agent's own network is not an internal network (``agentd:own_network``): under a network
    plane its loopback is its own namespace's; without one, a loopback port on which only the
    agent's own tree listens (``procfs.listeners``) is let through when the policy refused it. A
    refused
    loopback connect of a stream socket ``fd`` to a port nobody listens on answers the kernel's
    own ECONNREFUSED."""
    parsed = split_host_port(action.target)
    if parsed is None:
        return [evaluate_action(policy, action, context)]
    ip, port = parsed
    if network is not None and action.target in network.endpoints:
        return [
            Evaluation(
                action.action_type,
                action.target,
                "allow",
                Outcome.ALLOW,
                "the run's own network plane (DNS stub or proxy)",
                ("agentd:network_plane",),
            )
        ]
    loopback = _is_loopback(ip)
    if loopback and network is not None and network.own_loopback:
        return [
            _own(
                action, "the agent's own loopback: its network namespace holds nothing of the host"
            )
        ]
    context = {**context, "dest_ip": ip}
    evaluations = [evaluate_action(policy, action, context)]
    if network is not None:
        for name in network.names_for(ip):
            evaluations.append(
                evaluate_action(policy, Action(action.action_type, f"{name}:{port}"), context)
            )
    pid = context.get("pid")
    if (
        loopback
        and tree is not None
        and isinstance(pid, int)
        and any(e.outcome == Outcome.BLOCK for e in evaluations)
        and all(OUTCOME_RANK[e.outcome] <= OUTCOME_RANK[Outcome.BLOCK] for e in evaluations)
    ):
        listening = procfs.listeners(pid, ip, port)
        if listening and listening <= procfs.held_sockets(tuple(tree.members())):
            return [_own(action, f"a port only the agent's own processes listen on ({port})")]
        if not listening and fd is not None and procfs.is_stream_socket(pid, fd):
            # the kernel refuses it anyway: the agent learns the truth, nothing of the host
            return [
                replace(
                    e,
                    errno=errno.ECONNREFUSED,
                    reason=f"{e.reason}; nothing listens there: ECONNREFUSED",
                )
                if e.outcome == Outcome.BLOCK
                else e
                for e in evaluations
            ]
    return evaluations


def _is_loopback(ip: str) -> bool:
    """A loopback address, or the unspecified one, which the kernel sends to loopback."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def decide(
    decoded: DecodedSyscall,
    policy: PolicyEngine,
    context: dict,
    tree: AgentTree,
    network: NetworkView | None = None,
    confirmed: frozenset[str] = frozenset(),
    declined: frozenset[str] = frozenset(),
) -> Verdict:
    """The verdict on ``decoded``: the most restrictive outcome over all its evaluations.

    A refusal that confirmation alone would lift becomes a ``stop`` asking the operator for it
    (``Verdict.confirmation``), unless something else is refused too. ``confirmed`` and
    ``declined`` are the action types of batches the operator answered: a confirmed one's
    evaluations carry ``confirmed=true``; a declined one's are refused without asking again.
    """
    evaluations: list[Evaluation] = []
    for target in decoded.signal_targets:
        evaluations.append(_containment_of_signal(target, tree))
    for target in decoded.process_targets:
        evaluations.append(_containment_of_process(decoded.syscall, target, tree))
    for action in decoded.actions:
        contained = _containment_of_path(action, tree)
        asked = {**context, "confirmed": True} if action.action_type in confirmed else context
        if contained is not None:
            evaluations.append(contained)
        elif action.action_type == "network_connect":
            evaluations.extend(
                connect_evaluations(policy, action, asked, network, tree, _socket_fd(decoded))
            )
        else:
            evaluations.append(evaluate_action(policy, _process_facts(action, tree), asked))
    if not evaluations:
        return Verdict(Outcome.ALLOW, "nothing to decide", ())
    worst = max(evaluations, key=lambda e: OUTCOME_RANK[e.outcome])
    refusals = [e for e in evaluations if e.outcome.refuses]
    if refusals and all(e.confirmable for e in refusals):
        if all(e.action_type in declined for e in refusals):
            # recorded as such: the audit record alone says why nobody was asked
            marked = tuple(
                replace(e, reason=f"the operator declined this batch: {e.reason}")
                if e.confirmable
                else e
                for e in evaluations
            )
            return Verdict(
                Outcome.BLOCK, f"the operator declined this batch: {worst.reason}", marked
            )
        return Verdict(
            Outcome.STOP,
            f"confirmation required: {worst.reason}",
            tuple(evaluations),
            confirmation=True,
        )
    return Verdict(worst.outcome, worst.reason, tuple(evaluations))


def kernel_refuses(syscall: str, error: int, reason: str) -> Verdict:
    """The verdict when the call is one the kernel itself would fail (decoding found a bad
    pointer, a closed descriptor, an empty or looping path): refused without running it, and
    no policy matter; the agent gets the kernel's errno (errno_probe)."""
    name = _errno_name(error)
    return Verdict(
        Outcome.BLOCK,
        f"the kernel fails this call ({name}): {reason}",
        (
            Evaluation(
                "",
                "",
                "deny",
                Outcome.BLOCK,
                f"the kernel fails this call ({name}): {reason}; not run",
                ("agentd:kernel_refuses",),
            ),
        ),
    )


def _errno_name(error: int) -> str:
    return errno.errorcode.get(error, str(error))


def fail_closed(syscall: str, reason: str) -> Verdict:
    """The verdict when decoding failed: refuse the syscall and say why."""
    return Verdict(
        Outcome.BLOCK,
        reason,
        (
            Evaluation(
                "", "", "deny", Outcome.BLOCK, f"fail closed: {reason}", ("agentd:fail_closed",)
            ),
        ),
    )
