"""The per-run supervisor: the process the daemon forks for each run, and what it gives the run.

Owns one daemon run from the fork to its exit line. ``fork_supervisor`` forks it with a record
pipe and a control pipe; ``supervisor_main`` makes the child a supervisor (a new session,
PR_SET_PDEATHSIG(SIGKILL) so it dies with the daemon, the caller's stdin, stdout and stderr as
fds 0-2, the record pipe as 3, the control pipe as 4, nothing else) and runs the one assembly of
a run (``agentd.run.assembly``) with what a daemon run has that ``agentd run`` has not: the
policy compiled from the text the daemon granted, with the caller's variables; audit records sent
down the record pipe, because the daemon is the single writer of the FlightRecorder
(``PipeRecorder``); the child step that joins the run's cgroup and drops to the caller's groups,
gid and uid (``DropPrivileges``); the SIGSTOP review that also freezes the cgroup and prompts on
the terminal only for root's own runs (``FreezingReview``, ``DaemonRegistration``); the
decision-latency timing (``DecisionTimer``); and the policy switches after a reload
(``ControlPipe``: the snapshot named on the control pipe, its hash checked, compiled with the
run's variables at the next seccomp stop). At the end it sends the agent's status, the number of
records it sent, and its CPU time, peak RSS and latencies. Nothing here runs in the daemon but
``fork_supervisor`` and ``switch_message``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentd.kernel import libc
from agentd.run.assembly import (
    NewPolicy,
    PolicySwitch,
    RunSpec,
    Termination,
    execute,
    policy_variables,
    supervisor_paths,
)
from agentd.run.registry import OperatorReview, RunRegistration
from agentd.run.supervise import HostError

from .policy_store import PolicyEntry, policy_version

__all__ = [
    "SupervisorPlan",
    "fork_supervisor",
    "compile_policy",
    "supervisor_main",
    "switch_message",
    "PipeRecorder",
    "ControlPipe",
    "DropPrivileges",
    "DecisionTimer",
    "FreezingReview",
    "DaemonRegistration",
]

log = logging.getLogger("agentd.daemon.supervisor")

RECORD_FD = 3  # the supervisor's end of the record pipe (records, events, its exit)
CONTROL_FD = 4  # the supervisor's end of the control pipe (policy switches)
PR_SET_PDEATHSIG = 1
LATENCY_SAMPLES = 50_000


@dataclass
class SupervisorPlan:
    """Everything the daemon decided about a run, handed to its supervisor across the fork."""

    run_id: str
    agent_id: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    workspace: str
    uid: int
    gid: int
    groups: list[int]
    home: str
    user: str
    policy: PolicyEntry
    mode: str
    policy_dir: str
    runs_dir: str
    audit_path: str
    seccomp_profile: str | None
    cgroup_procs: str | None
    network: str = "plane"  # DaemonConfig.network
    dns_upstream: str = ""  # comma separated, "" = resolv.conf's
    # The policy already compiled with this run's variables (the daemon's cache), or None: the
    # supervisor compiles plan.policy.text itself, and reports its errors
    compiled: Any = None


# --- the daemon's side ----------------------------------------------------------------------


def fork_supervisor(plan: SupervisorPlan, stdio: list[int]) -> tuple[int, int, int]:
    """Fork the run's supervisor; returns (its pid, the record pipe's read end, the control
    pipe's write end), both non-blocking: an agent that makes no traced syscall for a long time
    reads no policy switch, and the daemon's loop must never wait for it."""
    record_r, record_w = os.pipe2(os.O_CLOEXEC)
    control_r, control_w = os.pipe2(os.O_CLOEXEC)
    daemon_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = supervisor_main(plan, daemon_pid, stdio, record_w, control_r)
        except BaseException:  # noqa: BLE001 - the child never returns into the daemon
            try:
                import traceback

                os.write(
                    record_w,
                    (json.dumps({"t": "log", "msg": traceback.format_exc()}) + "\n").encode(),
                )
            except BaseException:  # noqa: BLE001
                pass
        os._exit(code)
    os.close(record_w)
    os.close(control_r)
    os.set_blocking(record_r, False)
    os.set_blocking(control_w, False)
    return pid, record_r, control_w


def switch_message(entry: PolicyEntry, snapshot: str) -> bytes:
    """The control pipe's line telling a supervisor to switch to ``entry`` (its text is in the
    file ``snapshot``); shorter than PIPE_BUF, so a write is whole or fails."""
    return (
        json.dumps({"name": entry.name, "version": entry.version, "path": snapshot}).encode()
        + b"\n"
    )


# --- the supervisor process -----------------------------------------------------------------


def supervisor_main(
    plan: SupervisorPlan, daemon_pid: int, stdio: list[int], record_w: int, control_r: int
) -> int:
    """The body of a per-run supervisor process; returns its exit code (the daemon gets the
    agent's status as a message)."""
    from agent_os.errors import PolicyError

    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    # A reload may signal us at once; the handler only notes it, and the first stop looks.
    switch = PolicySwitch(ControlPipe(CONTROL_FD, plan).load)
    switch.install(signal.SIGUSR1)
    switch.request()
    if not _detach_from_daemon(daemon_pid, stdio, record_w, control_r):
        return 1
    termination = Termination()
    termination.install()
    recorder = PipeRecorder(RECORD_FD)
    _take_the_callers_terminal(recorder)
    timer = DecisionTimer()
    plane = None
    try:
        code, plane = _run(plan, recorder, switch, termination, timer)
    except PolicyError as exc:
        os.write(2, f"agentd run: {exc}\n".encode())
        code = 2
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    recorder.send(
        {
            "t": "exit",
            "code": code,
            "records": recorder.count,
            "stats": {
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "maxrss_kb": usage.ru_maxrss,
                **timer.summary(),
            },
        }
    )
    if plane is not None:
        # The daemon answers the client when our record pipe closes: close it now, and tear the
        # namespace down after (the agent's tree is gone; the plane records nothing more).
        logging.getLogger().handlers[:] = [logging.NullHandler()]  # not the caller's terminal
        os.close(RECORD_FD)
        plane.close()
    return 0


def _detach_from_daemon(daemon_pid: int, stdio: list[int], record_w: int, control_r: int) -> bool:
    """A session of our own, death with the daemon, and only our five fds; False when the
    daemon died before we could tie our life to it."""
    os.setsid()
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        return False
    if os.getppid() != daemon_pid:  # the daemon died before the prctl: so do we
        return False
    # Our fds: 0-2 are the caller's, 3 the record pipe, 4 the control pipe; nothing else.
    # Lift every one above the low numbers first, so no dup2 overwrites a later source.
    import fcntl

    lifted = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 1000) for fd in (*stdio, record_w, control_r)]
    for target, fd in enumerate(lifted):
        os.dup2(fd, target, inheritable=target < 3)
    os.closerange(5, 1 << 20)  # close_range(2): the daemon's sockets, pipes and journal
    os.set_blocking(CONTROL_FD, False)
    return True


def _take_the_callers_terminal(recorder: PipeRecorder) -> None:
    """Logs go to the daemon (its journal) through the record pipe; sys.std* are the caller's."""
    root = logging.getLogger()
    root.handlers[:] = [_PipeLogHandler(recorder)]
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the caller's terminal
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115


def _run(
    plan: SupervisorPlan,
    recorder: PipeRecorder,
    switch: PolicySwitch,
    termination: Termination,
    timer: DecisionTimer,
) -> tuple[int, Any]:
    """The run, assembled as every run is, with the daemon's parts: our exit status for it, and
    its network plane (None without one), which the caller closes once it has said so."""
    policy = plan.compiled if plan.compiled is not None else compile_policy(plan)
    registration = DaemonRegistration(
        plan.run_id,
        {
            "run_id": plan.run_id,
            "supervisor_pid": os.getpid(),
            "agent_pid": None,
            "agent_id": plan.agent_id,
            "command": plan.argv,
            "policy": plan.policy.name,
            "uid": plan.uid,
            "user": plan.user,
            "mode": plan.mode,
            "workspace": plan.workspace,
            "audit_log": plan.audit_path,
            "started": time.time(),
        },
        directory=plan.runs_dir,
    )
    registration.may_prompt = plan.uid == 0
    end = execute(
        RunSpec(
            run_id=plan.run_id,
            agent_id=plan.agent_id,
            argv=plan.argv,
            policy=policy,
            mode=plan.mode,
            env=plan.env,
            recorder=recorder,
            registration=registration,
            review=FreezingReview(registration, plan.cgroup_procs),
            protected_paths=(
                plan.audit_path,
                plan.runs_dir + "/",
                *supervisor_paths(plan.workspace),
            ),
            seccomp_profile=plan.seccomp_profile,
            start_plane=_plane_starter(plan) if plan.network == "plane" else None,
            child_steps=(DropPrivileges(plan),),
            on_started=lambda pid: recorder.send({"t": "started", "agent_pid": pid}),
            wrap_stop=timer.wrap,
            policy_switch=switch,
            termination=termination,
            late_plane_close=True,
        )
    )
    return end.code, end.plane


def policy_from_text(plan: SupervisorPlan, text: str, name: str) -> Any:
    """Policy ``text`` (from ``name``) with the run's variables. Raises ``PolicyError``."""
    from agent_os.loader import policy_from_yaml_string

    return policy_from_yaml_string(text, policy_variables_of(plan), [plan.policy_dir], name=name)


def compile_policy(plan: SupervisorPlan) -> Any:
    """The run's policy: ``plan.policy``'s text with the run's variables, its matchers built.
    Raises ``PolicyError``."""
    policy = policy_from_text(plan, plan.policy.text, plan.policy.path)
    build = getattr(policy, "compile", None)
    if callable(build):
        build()
    return policy


def policy_variables_of(plan: SupervisorPlan) -> dict[str, str]:
    # The agent's $HOME, as under `agentd run`: the caller's environment, else the account's.
    return policy_variables(plan.workspace, plan.env, plan.home)


def _plane_starter(plan: SupervisorPlan) -> Callable[[Any], Any]:
    def start(session: Any) -> Any:
        from agentd.netplane.dns import parse_upstream
        from agentd.netplane.plane import NetworkPlane

        try:
            return NetworkPlane.start(
                session, plan.run_id, upstream=parse_upstream(plan.dns_upstream)
            )
        except Exception as exc:  # noqa: BLE001 - PlaneUnavailable, a bad dns_upstream, ...
            # The administrator asked for the plane: no run without it (fail closed).
            raise HostError(f"cannot build the network plane: {exc}") from None

    return start


# --- the parts of a daemon run ----------------------------------------------------------------


class PipeRecorder:
    """The FlightRecorder's ``record`` as the Session calls it, sent to the daemon (the single
    writer of the chain). A record is handed over before the call returns; a failed write raises
    (and the Session refuses, fail closed)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.count = 0
        # The network plane's threads (DNS stub, proxy) record too.
        # INVARIANT: lines never interleave. No signal handler sends (handlers only set flags,
        # agentd.run.assembly), so a plain lock is enough.
        self.lock = threading.Lock()

    def send(self, message: dict) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        with self.lock:
            self._write(data)

    def record(self, **fields: Any) -> None:
        from agent_os.flight_recorder import json_safe

        data = (
            json.dumps(
                {"t": "rec", "f": {k: json_safe(v) for k, v in fields.items()}},
                separators=(",", ":"),
            ).encode()
            + b"\n"
        )
        with self.lock:
            self._write(data)
            self.count += 1

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]

    def close(self) -> None:
        pass


class _PipeLogHandler(logging.Handler):
    def __init__(self, recorder: PipeRecorder):
        super().__init__(logging.WARNING)
        self.recorder = recorder

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.recorder.send({"t": "log", "msg": self.format(record)})
        except OSError:
            pass


class ControlPipe:
    """The supervisor's end of the control pipe: the daemon writes ``switch_message`` lines and
    sends SIGUSR1. ``load`` (called at the next stop by ``PolicySwitch``) takes the last complete
    line, reads the snapshot it names, checks the text against its version and compiles it with
    the run's variables; None when no line came."""

    def __init__(self, fd: int, plan: SupervisorPlan):
        self.fd = fd
        self.plan = plan
        self.buffer = b""

    def load(self) -> NewPolicy | None:
        message = self._last_message()
        if message is None:
            return None
        with open(message["path"], encoding="utf-8") as handle:
            text = handle.read()
        if policy_version(text) != message["version"]:
            raise ValueError("the policy snapshot does not match its version")
        policy = policy_from_text(self.plan, text, message["path"])
        return NewPolicy(
            policy,
            message["name"],
            message["version"],
            f"the daemon reloaded policy {message['name']}: now version {message['version']}",
        )

    def _last_message(self) -> dict | None:
        """The latest switch sent (several reloads since the last stop: the last one wins)."""
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not data:
                break
            self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        lines = [line for line in lines if line.strip()]
        return json.loads(lines[-1]) if lines else None


class DropPrivileges:
    """A child step (``run.supervise.spawn_traced``): in the agent's child, before the filter is
    installed, join the run's cgroup (still root), take the caller's groups, gid and uid, and
    enter its cwd."""

    def __init__(self, plan: SupervisorPlan):
        self.plan = plan

    def __call__(self) -> None:
        plan = self.plan
        if plan.cgroup_procs:
            fd = os.open(plan.cgroup_procs, os.O_WRONLY)
            try:
                os.write(fd, b"0")  # "0" = the writing process
            finally:
                os.close(fd)
        if plan.uid != 0 or plan.gid != 0:
            os.setgroups(plan.groups)
            os.setresgid(plan.gid, plan.gid, plan.gid)
            os.setresuid(plan.uid, plan.uid, plan.uid)
        elif plan.groups:
            os.setgroups(plan.groups)
        os.chdir(plan.cwd)


class DecisionTimer:
    """Decision latency (one seccomp stop handled: decode, decide, record, resume), wall clock
    and the supervisor's own CPU time, in a bounded reservoir: a long run keeps
    ``LATENCY_SAMPLES`` uniformly chosen samples."""

    def __init__(self) -> None:
        self.samples: list[tuple[int, int]] = []  # (wall ns, cpu ns)
        self.seen = 0

    def wrap(self, handle: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
        def timed(tracer: Any, task: Any) -> None:
            wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
            try:
                handle(tracer, task)
            finally:
                self._add((time.perf_counter_ns() - wall, time.thread_time_ns() - cpu))

        return timed

    def _add(self, sample: tuple[int, int]) -> None:
        self.seen += 1
        if len(self.samples) < LATENCY_SAMPLES:
            self.samples.append(sample)
        else:
            slot = random.randrange(self.seen)
            if slot < LATENCY_SAMPLES:
                self.samples[slot] = sample

    def summary(self) -> dict:
        """Medians and 99th percentiles, in microseconds."""
        if not self.samples:
            return {"samples": 0}
        wall = sorted(w for w, _ in self.samples)
        cpu = sorted(c for _, c in self.samples)

        def pick(values: list[int], q: float) -> float:
            return round(values[min(len(values) - 1, int(q * len(values)))] / 1000, 1)

        return {
            "samples": len(wall),
            "wall_p50_us": pick(wall, 0.5),
            "wall_p99_us": pick(wall, 0.99),
            "cpu_p50_us": pick(cpu, 0.5),
            "cpu_p99_us": pick(cpu, 0.99),
        }


class DaemonRegistration(RunRegistration):
    """A daemon run's registration: the terminal prompt is offered only to root's runs (an
    ordinary user must not approve their own agent's held action; an administrator does)."""

    may_prompt = False

    def wait_for_decision(self, prompt):
        if prompt is not None and not self.may_prompt:
            os.write(
                2,
                f"\nagentd: run {self.run_id} is HELD for review by an administrator "
                f"(agentd ps; agentd resume {self.run_id} --allow|--deny)\n".encode(),
            )
            prompt = None
        return super().wait_for_decision(prompt)


class FreezingReview(OperatorReview):
    """The SIGSTOP verdict under the daemon: once the tracer has parked the agent, also freeze
    the run's cgroup, so nothing of the agent runs until the decision; thaw before resuming."""

    def __init__(self, registration: RunRegistration, cgroup_procs: str | None):
        super().__init__(registration)
        self.freeze_path = (
            os.path.join(os.path.dirname(cgroup_procs), "cgroup.freeze") if cgroup_procs else None
        )

    def _set_frozen(self, value: str) -> None:
        if self.freeze_path is None:
            return
        try:
            fd = os.open(self.freeze_path, os.O_WRONLY)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("cgroup freeze=%s: %s", value, exc)

    def __call__(self, hold) -> tuple[str, str]:
        self._set_frozen("1")
        try:
            return super().__call__(hold)
        finally:
            self._set_frozen("0")
