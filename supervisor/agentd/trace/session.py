"""One supervised run: wires stop -> decode -> decide -> enforce and writes the audit record.

Owns the handling of one seccomp stop end to end (``Session.on_syscall``, called by the tracer):
read the registers, name the syscall, ``decode.decode_syscall``, ``decide.decide`` against the
policy, one FlightRecorder record per evaluation, then ``enforce`` — or, in audit mode, let it run
and remember the would-be denial. A SIGSTOP verdict is handed to ``hold`` (the run's
``OperatorReview`` waits for the operator); the operator's answer to a confirmation covers the
rest of that batch (``batches``). A refusal gets the kernel's own errno where the kernel would
fail the call anyway (``errno_probe``). Warnings are printed once per kind and counted. Any
exception on this path refuses the syscall with EACCES and is recorded (fail closed). Per-run
state lives on the Session object.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentd.kernel import ptrace
from agentd.kernel.statx import coarse_now_ns
from agentd.kernel.syscall_numbers import SYSCALL_NAMES

from . import decide, enforce, hold
from .decide import Outcome
from .decode import DecodeError, Tracee, decode_syscall, syscall_args
from .errno_probe import probe_for
from .exec_identity import ExecIdentifier
from .hold import Hold
from .syscall_table import TABLE
from .tracer import Task, Tracer, stop_registers

__all__ = ["Session", "WouldDeny", "AuditRecorder"]


class AuditRecorder(Protocol):
    """Where a session writes its records: agent_os's ``FlightRecorder``, or the daemon's pipe
    to its writer. ``record`` raises when the record could not be written (the caller then
    refuses the syscall, or kills the agent for one already let go)."""

    def record(self, **fields: Any) -> Any: ...


log = logging.getLogger("agentd.trace.session")

# the operator's answer to a hold, as what happens to the held syscall
_OPERATOR_OUTCOMES = {"allow": Outcome.ALLOW, "deny": Outcome.BLOCK, "kill": Outcome.KILL}
BATCH_QUIET = 60.0  # seconds without one of its actions that end a batch the operator answered
# Allowed decisions on these action types change nothing: after the first record of one (action
# type, target, patterns) in a run, its repeats are counted and written as one summary record at
# the end of the run (``flush_repeats``). Changes and denials are always recorded one by one.
SUMMARISED = frozenset(
    {"file_read", "process_spawn", "shell_execute", "env_read", "network_connect", "memory_access"}
)
MAX_SUMMARISED = 200_000  # distinct decisions remembered; past that, every record is written


@dataclass(frozen=True)
class WouldDeny:
    """A denial that audit mode let through (for the end-of-run summary)."""

    pid: int
    syscall: str
    action_type: str
    target: str
    outcome: str
    pattern_ids: tuple[str, ...]


@dataclass
class Session:
    policy: decide.PolicyEngine
    run_id: str
    agent_id: str
    recorder: AuditRecorder | None = None  # agent_os's FlightRecorder, the daemon's pipe
    audit_only: bool = False  # --mode audit
    protected_paths: tuple[str, ...] = ()  # the audit log, the run's control files
    # the operator, asked about a stop verdict once the tree is parked (hold.py): returns
    # (decision, who); None: a stop verdict is refused instead
    review: Callable[[Hold], tuple[str, str]] | None = None
    would_deny: list[WouldDeny] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    killed: bool = False
    exec_identifier: ExecIdentifier | None = None  # made for the policy when not given
    network: decide.NetworkView | None = None  # the run's network plane (names, endpoints)
    # Files born at or after this instant are the agent's own (decode: preexisting).
    started_ns: int = field(default_factory=coarse_now_ns)
    # action type -> (the operator's answer to a batch of these, "allow" or "deny"; monotonic
    # deadline): the answer holds while the batch goes on (each action of the type extends it
    # by BATCH_QUIET seconds), so a recursive delete asks once.
    batches: dict[str, tuple[str, float]] = field(default_factory=dict)
    # (action type, pattern id) -> [count, first target]: a kind of warning is printed once,
    # the rest are counted and summed up at the end (``warning_summary``)
    warnings: dict[tuple[str, str], list] = field(default_factory=dict)

    # None: every decision is recorded (the policy asked for it, ``records_every_decision``);
    # else (action type, target, pattern ids) of an allowed decision recorded -> repeats since
    repeats: dict[tuple[str, str, tuple[str, ...]], int] | None = field(default_factory=dict)

    # Set when policy switches may arrive (the daemon's reload): called before every decision,
    # from the tracer's thread or the network plane's, it applies a pending switch.
    refresh: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        if self.exec_identifier is None:
            self.exec_identifier = ExecIdentifier.for_policy(self.policy)
        if records_every_decision(self.policy):
            self.repeats = None

    def switch_policy(self, policy: decide.PolicyEngine) -> None:
        """Decide with ``policy`` from now on (a reload); what exec identity derives from the
        policy (the directories spawning is refused from) follows. The repeats counted under the
        old policy are written first, so a summary record never spans two policies, and whether
        every decision is recorded follows the new one."""
        self.exec_identifier = ExecIdentifier.for_policy(policy)
        self.flush_repeats(every_decision=records_every_decision(policy))
        self.policy = policy

    def current_policy(self) -> decide.PolicyEngine:
        """The policy to decide with now, a pending switch applied first (the network plane's
        judging asks this; the tracer's stops do the same in ``on_syscall``)."""
        if self.refresh is not None:
            self.refresh()
        return self.policy

    # --- called by the tracer at every seccomp stop --------------------------------------
    def on_syscall(self, tracer: Tracer, task: Task) -> None:
        if self.refresh is not None:
            self.refresh()  # between two decisions, never inside one
        resolved_open, task.resolved_open = task.resolved_open, None
        regs = stop_registers(task)
        nr = regs.orig_rax
        name = SYSCALL_NAMES.get(nr, f"syscall_{nr}")
        args = syscall_args(regs)
        if task.approval is not None:
            approved_nr, approved_args, outcome = task.approval
            task.approval = None
            if (approved_nr, approved_args) == (nr, args):
                self._finish_operator(tracer, task, regs, name, outcome)
                return
        if name not in TABLE:
            # Our filter allowed this number; a filter the agent stacked on ours asked for a
            # tracer (a nested RET_TRACE outranks our ALLOW). Nothing of ours to decide.
            enforce.allow(task.tid)
            return
        decoded = None
        try:
            decoded = decode_syscall(
                Tracee(
                    task.tid,
                    task.tgid,
                    task.memory,
                    self.exec_identifier,
                    self.started_ns,
                    resolved_open,
                ),
                name,
                nr,
                args,
            )
        except DecodeError as exc:
            if exc.errno is not None:
                verdict = decide.kernel_refuses(name, exc.errno, f"{name}: {exc}")
            else:
                _still_stopped(task)
                verdict = decide.fail_closed(name, f"cannot decode {name}: {exc}")
        except Exception as exc:  # INVARIANT: an error while decoding denies (fail closed)
            log.exception("pid %d: error decoding %s", task.tid, name)
            verdict = decide.fail_closed(name, f"error decoding {name}: {exc!r}")
        else:
            try:
                verdict = decide.decide(
                    decoded,
                    self.policy,
                    self._context(task, name),
                    decide.AgentTree(tracer.contains, tracer.thread_groups),
                    self.network,
                    *self._batch_answers(decoded),
                )
                verdict = self._protect(verdict, name)
            except Exception as exc:  # INVARIANT: fail closed
                log.exception("pid %d: error deciding %s", task.tid, name)
                verdict = decide.fail_closed(name, f"error deciding {name}: {exc!r}")
        if not verdict.outcome.refuses:
            # Let the agent go first and write the record while it runs (the two cores work
            # in parallel); the record is still written before we wait for the next stop.
            self._enforce(tracer, task, regs, name, nr, verdict, decoded)
            if not self._record(task, name, verdict):
                # INVARIANT: nothing runs unrecorded; we cannot take this one back, so stop all.
                enforce.notice_line("killing the agent: the audit log cannot be written")
                self.killed = True
                tracer.kill_tree()
            return
        if not self._record(task, name, verdict):
            verdict = decide.fail_closed(name, "the audit record could not be written")
        self._enforce(tracer, task, regs, name, nr, verdict, decoded)

    def _batch_answers(self, decoded) -> tuple[frozenset[str], frozenset[str]]:
        """(confirmed, declined): the action types of answered batches still going on; an
        action of one extends its batch."""
        if not self.batches:
            return frozenset(), frozenset()
        now = time.monotonic()
        answered: dict[str, set[str]] = {"allow": set(), "deny": set()}
        for action in decoded.actions:
            batch = self.batches.get(action.action_type)
            if batch is None:
                continue
            if batch[1] < now:
                del self.batches[action.action_type]
                continue
            self.batches[action.action_type] = (batch[0], now + BATCH_QUIET)
            answered[batch[0]].add(action.action_type)
        return frozenset(answered["allow"]), frozenset(answered["deny"])

    def _context(self, task: Task, name: str) -> dict:
        return {"agent_id": self.agent_id, "pid": task.tgid, "syscall": name}

    def _protect(self, verdict: decide.Verdict, syscall: str | None = None) -> decide.Verdict:
        """The supervisor's own files (audit log, control socket) are not the agent's to touch."""
        if not self.protected_paths:
            return verdict
        changed = list(verdict.evaluations)
        hit = False
        for i, evaluation in enumerate(changed):
            protected = decide.containment_of_protected(evaluation, self.protected_paths, syscall)
            if protected is not None:
                changed[i] = protected
                hit = True
        if not hit:
            return verdict
        worst = max(changed, key=lambda e: decide.OUTCOME_RANK[e.outcome])
        return decide.Verdict(worst.outcome, worst.reason, tuple(changed))

    def _enforce(
        self,
        tracer: Tracer,
        task: Task,
        regs,
        name: str,
        nr: int,
        verdict: decide.Verdict,
        decoded=None,
    ) -> None:
        outcome = verdict.outcome
        self.stats[outcome] = self.stats.get(outcome, 0) + 1
        if self.audit_only and outcome.refuses:
            for evaluation in verdict.evaluations:
                if evaluation.outcome.refuses:
                    self.would_deny.append(
                        WouldDeny(
                            task.tgid,
                            name,
                            evaluation.action_type,
                            evaluation.target,
                            evaluation.outcome,
                            evaluation.pattern_ids,
                        )
                    )
            outcome = Outcome.ALLOW
        if outcome == Outcome.ALLOW:
            enforce.allow(task.tid, regs)
        elif outcome == Outcome.WARN:
            self._warn(task, name, verdict)
            enforce.allow(task.tid, regs)
        elif outcome == Outcome.BLOCK:
            self._refuse(task, regs, name, decoded, verdict)
        elif outcome == Outcome.KILL:
            self.killed = True
            deciding = verdict.deciding
            what = f"{deciding.action_type} {deciding.target}" if deciding else name
            enforce.notice_line(
                f"killing the agent: {what}: {verdict.reason} (pid {task.tgid}, {name})"
            )
            # The syscall must not run even for an instant: skip it, then kill every process.
            enforce.kill(tracer, task.tid, regs)
        elif outcome == Outcome.STOP:
            if self.review is None or not hold.begin(
                tracer, task, regs, verdict, self.review, self._answered
            ):
                enforce.refuse(task.tid, regs, errno.EACCES)
        else:  # pragma: no cover - OUTCOME_RANK has no other names
            enforce.refuse(task.tid, regs, errno.EACCES)

    def _answered(self, held: Hold, decision: str, who: str) -> None:
        """The operator answered a hold: record it, and remember it for the re-issued syscall
        (allow or deny once) or, for a batch, for the rest of the batch."""
        verdict = held.verdict
        deciding = verdict.deciding
        self.record(
            held.task,
            "operator",
            decide.Evaluation(
                deciding.action_type if deciding else "",
                deciding.target if deciding else "",
                "allow" if decision == "allow" else "deny",
                _OPERATOR_OUTCOMES[decision],
                f"operator decision via {who} on a held syscall",
            ),
            enforced=decision,
        )
        if decision == "kill":
            self.killed = True
            return
        held.task.approval = (held.nr, held.args, decision)
        if verdict.confirmation:
            # Confirmed: the re-issued syscall and the rest of the batch are decided again with
            # confirmed=true (other refusals still hold). Declined: refused, and the rest of the
            # batch without asking again.
            if decision == "allow":
                held.task.approval = None
            deadline = time.monotonic() + BATCH_QUIET
            for evaluation in verdict.evaluations:
                if evaluation.confirmable:
                    self.batches[evaluation.action_type] = (decision, deadline)

    def _warn(self, task: Task, name: str, verdict: decide.Verdict) -> None:
        """A warning on the agent's stderr, once per kind (action type, pattern); the repeats
        are counted for ``warning_summary``: hundreds of identical lines would bury the rest."""
        deciding = verdict.deciding
        action_type = deciding.action_type if deciding else name
        pattern = deciding.pattern_ids[0] if deciding and deciding.pattern_ids else ""
        seen = self.warnings.get((action_type, pattern))
        if seen is not None:
            seen[0] += 1
            return
        target = deciding.target if deciding else ""
        self.warnings[(action_type, pattern)] = [1, verdict.reason]
        enforce.warn_line(
            f"{action_type} {target}: {verdict.reason} (pid {task.tgid}, {name}; "
            f"more like it are counted)"
        )

    def warning_summary(self) -> list[str]:
        """One line per kind of warning that came more than once: the count and the reason."""
        return [
            f"{count} x {action_type} [{pattern or '-'}]: {reason}"
            for (action_type, pattern), (count, reason) in sorted(
                self.warnings.items(), key=lambda item: -item[1][0]
            )
            if count > 1
        ]

    def _refuse(self, task: Task, regs, name: str, decoded, verdict: decide.Verdict) -> None:
        """Refuse the syscall; where the kernel would have failed it anyway, with the kernel's
        own errno (a probe runs in its place: errno_probe.py), else with EACCES."""
        if verdict.errno is not None:
            enforce.refuse(task.tid, regs, verdict.errno)
            return
        targets = tuple(a.target for a in decoded.actions) if decoded is not None else ()
        try:
            probe = probe_for(name, syscall_args(regs), targets, task.memory.read_bytes)
        except Exception:  # noqa: BLE001 - the errno is a courtesy; the refusal is not
            log.exception("pid %d: cannot build the errno probe for %s", task.tid, name)
            probe = None
        if probe is None:
            enforce.refuse(task.tid, regs, errno.EACCES)
        else:
            task.probing = enforce.refuse_probing(task.tid, regs, probe)

    def _finish_operator(self, tracer: Tracer, task: Task, regs, name: str, outcome: str) -> None:
        """The re-issued syscall after an operator's allow or deny of a held one."""
        if outcome == "allow":
            enforce.allow(task.tid)
        else:
            enforce.refuse(task.tid, regs, errno.EACCES)

    # --- the audit record ------------------------------------------------------------------
    def _record(self, task: Task, name: str, verdict: decide.Verdict, **extra: Any) -> bool:
        """One record per evaluation; False when any could not be written."""
        if self.recorder is None:
            return True
        enforced = (
            "allow (audit mode)" if self.audit_only and verdict.outcome.refuses else verdict.outcome
        )
        ok = True
        repeats = self.repeats if verdict.outcome is Outcome.ALLOW and not extra else None
        for evaluation in verdict.evaluations:
            if repeats is not None and evaluation.action_type in SUMMARISED:
                key = (evaluation.action_type, evaluation.target, evaluation.pattern_ids)
                seen = repeats.get(key)
                if seen is not None:
                    repeats[key] = seen + 1  # recorded at the end, as a count
                    continue
                if len(repeats) < MAX_SUMMARISED:
                    repeats[key] = 0
            ok = self.record(task, name, evaluation, enforced=enforced, **extra) and ok
        return ok

    def flush_repeats(self, every_decision: bool | None = None) -> bool:
        """One record per allowed decision that came again, with the number of times
        (``repeats``), and counting starts afresh (``every_decision``: from now on record every
        decision, or not; None: as before). At the end of the run and at a policy switch; False
        when a record could not be written.

        A switch may come from the network plane's thread while the tracer's counts: the counts
        are swapped out in one step and copied in one step (a dict copy holds the GIL), so the
        tracer never meets a dict being read; a repeat counted into the old dict after the swap
        is lost (a reload's moment, at most a few)."""
        if every_decision is None:
            every_decision = self.repeats is None
        counts, self.repeats = self.repeats, (None if every_decision else {})
        if not counts or self.recorder is None:
            return True
        ok = True
        for (action_type, target, pattern_ids), count in list(counts.items()):
            if count:
                evaluation = decide.Evaluation(
                    action_type, target, "allow", Outcome.ALLOW, "repeated", pattern_ids
                )
                written = self.record(None, "summary", evaluation, enforced="allow", repeats=count)
                ok = written and ok
        return ok

    def record(
        self, task: Task | None, name: str, evaluation: decide.Evaluation, **extra: Any
    ) -> bool:
        """One audit record of ``evaluation`` (``task`` None: the supervisor's own, as a reload
        or a summary); False when it could not be written."""
        if self.recorder is None:
            return True
        fields = extra
        # Fields that say nothing are left out: the record's cost grows with its size, and
        # allowed opens are most of a run's records.
        if task is not None and task.tid != task.tgid:
            fields["tid"] = task.tid
        if evaluation.violation_mode is not None:
            fields["violation_mode"] = getattr(evaluation.violation_mode, "name", None)
        if evaluation.decision != "allow" or evaluation.pattern_ids:
            fields["reason"] = evaluation.reason
        try:
            self.recorder.record(
                decision=evaluation.decision,
                agent_id=self.agent_id,
                action_type=evaluation.action_type or None,
                target=evaluation.target or None,
                pattern_ids=list(evaluation.pattern_ids),
                severity=evaluation.severity,
                signal=evaluation.signal,
                run_id=self.run_id,
                pid=task.tgid if task else os.getpid(),
                ppid=task.ppid if task else None,
                exe=task.exe if task else None,
                syscall=name,
                **fields,
            )
        except Exception:
            # INVARIANT: nothing is allowed unrecorded; the caller refuses the syscall.
            log.exception(
                "cannot write the audit record for %s %s", evaluation.action_type, evaluation.target
            )
            return False
        return True


def records_every_decision(policy: Any) -> bool:
    """Does ``policy`` ask for one audit record per decision, repeats included? Yes when its
    ``defaults.log_level`` is ``debug`` or its settings say ``audit_every_decision: true``
    (docs/audit-log.md, "What is recorded")."""
    if str(getattr(policy, "log_level", "info")).lower() == "debug":
        return True
    settings = getattr(policy, "settings", None) or {}
    return settings.get("audit_every_decision") is True


def _still_stopped(task: Task) -> None:
    """Raise ``PtraceError`` (ESRCH) when ``task`` is no longer in the seccomp stop being
    handled: killed meanwhile (a SIGKILL wakes a stopped tracee), its memory gone, which is why
    the operands could not be read. Its syscall never runs and its exit is reported next: no
    decision to record (``Tracer.handle`` takes the ESRCH). A task still stopped returns."""
    ptrace.getregs(task.tid)
