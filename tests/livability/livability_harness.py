"""Run a livability workload natively or under ``agentd run``, and sort the denials it met.

Owns how the suite and ``run_workload.py`` run a ``workloads.Workload``: the fresh workspace
(``W/home`` and ``W/tmp`` created, ``prepare`` run natively), the environment (``HOME=W/home``,
``TMPDIR=W/tmp`` and the workload's own variables), the command line of an embedded run
(``agentd run --embedded --network off --audit-log W/audit.jsonl --workspace W``) or of a run
through a private daemon (``PrivateDaemon``: ``tests/helpers/agentd_daemon.DaemonUnderTest`` with
``network: off``; it serves the built-in policies by name), the check of the outcome, and the
denials of the audit log grouped by (action type, pattern ids) with a count and example targets.
It knows nothing about any one tool.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
for _directory in (HERE, HERE.parent):          # workloads; tests/helpers
    if str(_directory) not in sys.path:
        sys.path.insert(0, str(_directory))

from helpers.agentd_daemon import DaemonUnderTest, cgroup2_mount  # noqa: E402
from helpers.agentd_run import AGENTD, read_records  # noqa: E402

from workloads import Workload  # noqa: E402

__all__ = ["Supervision", "Outcome", "DenialGroup", "PrivateDaemon", "daemon_unavailable",
           "new_workspace", "workload_environment", "run_workload", "group_records",
           "unexpected_denials", "format_groups", "format_outcome"]


class PrivateDaemon:
    """A real ``agentd daemon`` private to this process (own socket, audit log, cgroup subtree),
    with ``network: off`` like the embedded runs. Root may name every built-in policy and
    ``--mode audit``; a policy file is named by its absolute path. One difference from an
    embedded run: the daemon binds ``${HOME}`` to the caller's passwd home (``/root``), not to
    ``$HOME`` (``W/home``); the agent's environment still says ``HOME=W/home``."""

    def __init__(self, root: Path):
        Path(root).mkdir(parents=True, exist_ok=True)
        audit_log = Path(root) / "audit" / "flight.jsonl"
        # rotate_bytes 0: one file holds every record (a long suite passes the 64 MiB default,
        # and the records of a run would be split across the rotation).
        self._daemon = DaemonUnderTest(Path(root), network="off", audit={
            "path": str(audit_log), "fsync": "never", "rotate_bytes": 0})
        assert self._daemon.audit_log == audit_log
        self._stopping = threading.Event()
        self._drain = threading.Thread(target=self._drain_notifications, daemon=True)

    def __enter__(self) -> "PrivateDaemon":
        self._daemon.start()
        self._drain.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stopping.set()
        self._drain.join()
        self._daemon.stop()

    def _drain_notifications(self) -> None:
        # The daemon sends STATUS= at every run's start and end with a blocking sendto(); a
        # unix datagram queue holds only net.unix.max_dgram_qlen (10) messages, so a reader
        # that stops reading wedges the daemon's whole loop after about five runs.
        self._daemon.notify.settimeout(0.2)
        while not self._stopping.is_set():
            try:
                self._daemon.notify.recv(4096)
            except (TimeoutError, OSError):
                continue

    @property
    def socket_path(self) -> str:
        return self._daemon.socket_path

    def log_size(self) -> int:
        """Where the next run's records will start in the daemon's audit log."""
        try:
            return self._daemon.audit_log.stat().st_size
        except FileNotFoundError:
            return 0

    def records_of(self, agent_id: str, since: int = 0) -> list[dict]:
        """The records of ``agent_id`` written at or after byte offset ``since``."""
        try:
            with open(self._daemon.audit_log, "rb") as handle:
                handle.seek(since)
                lines = handle.read().decode("utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []
        records = (json.loads(line) for line in lines if line.strip())
        return [record for record in records if record.get("agent_id") == agent_id]

    def log_text(self) -> str:
        return self._daemon.log_text()


def daemon_unavailable() -> str | None:
    """Why a private daemon cannot run here, or None."""
    if os.geteuid() != 0:
        return "the daemon needs root"
    if cgroup2_mount() is None:
        return "no cgroup v2 mounted (the daemon puts each agent in a cgroup)"
    return None


@dataclass(frozen=True)
class Supervision:
    """How a workload runs: ``policy`` None means natively; else a built-in name or a file."""
    policy: str | None = None
    mode: str = "enforce"
    daemon: PrivateDaemon | None = None

    @property
    def label(self) -> str:
        if self.policy is None:
            return "native"
        where = "daemon" if self.daemon is not None else "embedded"
        name = Path(self.policy).stem if "/" in self.policy else self.policy
        return f"{name} ({where}, {self.mode})"


@dataclass(frozen=True)
class DenialGroup:
    action_type: str
    pattern_ids: tuple[str, ...]
    count: int
    targets: tuple[tuple[str, int, tuple[str, ...]], ...]   # (target, count, "exe syscall"s)

    @property
    def key(self) -> str:
        return f"{self.action_type} {'+'.join(self.pattern_ids) or '(default)'}"


@dataclass
class Outcome:
    workload: str
    supervision: Supervision
    workspace: Path
    completed: subprocess.CompletedProcess
    seconds: float
    records: list[dict] = field(default_factory=list)
    failure: str | None = None

    @property
    def passed(self) -> bool:
        return self.failure is None

    def decided(self, decision: str) -> list[dict]:
        return [r for r in self.records if r.get("decision") == decision]


def new_workspace(base: Path, workload: Workload) -> Path:
    """A fresh ``base/<name>`` with ``home/`` and ``tmp/``, prepared natively."""
    workspace = Path(base).resolve() / workload.name
    workspace.mkdir(parents=True)
    (workspace / "home").mkdir()
    (workspace / "tmp").mkdir()
    workload.prepare(workspace)
    return workspace


def workload_environment(workload: Workload, workspace: Path) -> dict[str, str]:
    env = dict(os.environ, HOME=str(workspace / "home"), TMPDIR=str(workspace / "tmp"))
    env.pop("AGENTD_SOCKET", None)
    env.update(workload.env(workspace))
    return env


def _agentd_argv(workload: Workload, workspace: Path, supervision: Supervision,
                 agent_id: str) -> list[str]:
    argv = [AGENTD, "run", "--policy", supervision.policy, "--mode", supervision.mode,
            "--workspace", str(workspace), "--agent-id", agent_id]
    if supervision.daemon is None:
        argv += ["--embedded", "--network", "off",
                 "--audit-log", str(workspace / "audit.jsonl")]
    return argv + ["--", "bash", "-c", workload.script]


def run_workload(workload: Workload, workspace: Path, supervision: Supervision) -> Outcome:
    """Run the script in ``workspace`` (natively or under agentd), then check its outcome."""
    env = workload_environment(workload, workspace)
    agent_id = f"livability-{workload.name}-{os.urandom(4).hex()}"
    if supervision.policy is None:
        argv = ["bash", "-c", workload.script]
    else:
        argv = _agentd_argv(workload, workspace, supervision, agent_id)
        env.setdefault("AGENTD_RUNS_DIR", str(workspace.parent / f"runs-{workload.name}"))
        if supervision.daemon is not None:
            env["AGENTD_SOCKET"] = supervision.daemon.socket_path
            log_offset = supervision.daemon.log_size()
    started = time.monotonic()
    try:
        completed = subprocess.run(argv, cwd=workspace, env=env, capture_output=True,
                                   text=True, errors="replace", timeout=workload.timeout)
        timed_out = None
    except subprocess.TimeoutExpired as exc:
        completed = subprocess.CompletedProcess(argv, -9, _text(exc.stdout), _text(exc.stderr))
        timed_out = f"timed out after {workload.timeout:.0f} s (killed)"
    seconds = time.monotonic() - started
    if supervision.policy is None:
        records = []
    elif supervision.daemon is not None:
        records = supervision.daemon.records_of(agent_id, since=log_offset)
    else:
        records = read_records(workspace / "audit.jsonl")
    outcome = Outcome(workload.name, supervision, workspace, completed, seconds, records)
    outcome.failure = timed_out or check_outcome(workload, workspace, completed)
    return outcome


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def check_outcome(workload: Workload, workspace: Path,
                  completed: subprocess.CompletedProcess) -> str | None:
    try:
        workload.check(workspace, completed)
    except AssertionError as exc:
        return str(exc) or "the check failed"
    except Exception as exc:  # noqa: BLE001 - a check that trips over missing output
        stderr = "\n".join(completed.stderr.rstrip().splitlines()[-10:])
        return (f"the check raised {type(exc).__name__}: {exc}\n(script exit "
                f"{completed.returncode}; stderr tail:)\n{stderr}")
    return None


def group_records(records: list[dict]) -> list[DenialGroup]:
    """Records grouped by (action type, pattern ids), biggest group first; each group's targets
    with their counts and the executables that asked."""
    counts: Counter = Counter()
    targets: dict[tuple, Counter] = {}
    exes: dict[tuple, dict[str, set[str]]] = {}
    for record in records:
        key = (str(record.get("action_type") or "(none)"), tuple(record.get("pattern_ids") or ()))
        target = record.get("target")
        # A fail-closed record has no target: its reason says what could not be decoded.
        target = str(target) if target is not None else f"(no target: {record.get('reason')})"
        counts[key] += 1
        targets.setdefault(key, Counter())[target] += 1
        exes.setdefault(key, {}).setdefault(target, set()).add(
            f"{os.path.basename(str(record.get('exe') or '?'))} {record.get('syscall') or '?'}")
    return [DenialGroup(action_type, ids, count,
                        tuple((target, n, tuple(sorted(exes[(action_type, ids)][target])))
                              for target, n in targets[(action_type, ids)].most_common()))
            for (action_type, ids), count in counts.most_common()]


KERNEL_REFUSES = "agentd:kernel_refuses"


def kernel_refusals(records: list[dict]) -> list[dict]:
    """Calls the kernel itself fails (a closed descriptor, an empty or looping path): refused
    without running, with the kernel's errno, and no policy matter (the tool fails them natively
    the same way)."""
    return [r for r in records if KERNEL_REFUSES in (r.get("pattern_ids") or ())]


def unexpected_denials(records: list[dict], expected) -> list[dict]:
    """The policy's deny records not covered by ``expected``, a set of (action type, pattern
    id); calls the kernel itself fails (``kernel_refusals``) are not the policy's."""
    allowed = set(expected)
    return [r for r in records if r.get("decision") == "deny"
            and KERNEL_REFUSES not in (r.get("pattern_ids") or ())
            and not any((r.get("action_type"), pid) in allowed
                        for pid in (r.get("pattern_ids") or ()))]


def format_groups(groups: list[DenialGroup], examples: int | None = 3) -> str:
    """One line per group, then its targets (``examples`` of them; None: all)."""
    lines = []
    for group in groups:
        shown = group.targets if examples is None else group.targets[:examples]
        lines.append(f"  {group.key}  x{group.count}  ({len(group.targets)} distinct targets)")
        for target, count, exe in shown:
            lines.append(f"      {count:5d}  {target}  [{', '.join(exe)}]")
        if len(shown) < len(group.targets):
            lines.append(f"             ... {len(group.targets) - len(shown)} more")
    return "\n".join(lines)


def format_outcome(outcome: Outcome, examples: int | None = 3) -> str:
    verdict = "PASSED" if outcome.passed else "FAILED"
    lines = [f"{outcome.workload} under {outcome.supervision.label}: {verdict} in "
             f"{outcome.seconds:.1f} s (exit {outcome.completed.returncode})"]
    if outcome.failure:
        lines += ["  " + line for line in outcome.failure.splitlines()]
    if outcome.supervision.policy is not None:
        denials = outcome.decided("deny")
        lines.append(f"denials: {len(denials)} (of {len(outcome.records)} records)")
        if denials:
            lines.append(format_groups(group_records(denials), examples))
        warnings = outcome.decided("warn")
        if warnings:
            lines.append(f"warnings (allowed): {len(warnings)}")
            lines.append(format_groups(group_records(warnings), examples))
    return "\n".join(lines)
