"""The one assembly of a run, for ``agentd run`` and the daemon's per-run supervisor alike.

Owns what every run does between a compiled policy and the agent's end: the ``Session`` (its
audit records, the operator's review, the files the agent may not touch), the network plane, the
child steps in their order (enter the plane's namespace, drop the plane's capabilities from the
bounding set, the caller's own steps, Landlock last), the run's registration,
``supervise.supervise``, and the end: the exit status, the errors said on stderr (exit 125, 2,
127), a terminated run (137), the summary of repeated warnings. A caller describes its run in a
``RunSpec`` with only what differs — ``agentd.run.standalone`` for ``agentd run`` (the
FlightRecorder, the terminal's review, Landlock, the audit-mode summary);
``agentd.daemon.supervisor`` for the daemon (its pipe recorder, the cgroup join and the privilege
drop, the freezing review, decision timing, policy switches) — and ``execute`` runs it.

Signal handlers here only set flags. SIGTERM (``Termination``) notes the request and SIGKILLs the
agent's thread groups (``Tracer.kill_tree`` signals a snapshot of the task table), so the blocking
waitpid wakes as the tree dies; a wait for the operator watches ``Termination.fd``. A policy
switch (``PolicySwitch``, the daemon's SIGUSR1) is noted by its handler and applied at the next
seccomp stop, before that stop is decided: never in the middle of a decision, and no audit record
is written from a handler.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentd.trace.decide import Evaluation, Outcome
from agentd.trace.enforce import notice_line
from agentd.trace.session import Session

from .registry import RunRegistration, RunTerminated
from .supervise import FilterError, HostError, exit_code, supervise

__all__ = ["RunSpec", "RunEnd", "execute", "Termination", "PolicySwitch", "NewPolicy"]

log = logging.getLogger("agentd.run.assembly")

KILLED = 128 + signal.SIGKILL  # a kill verdict, or SIGTERM: 137, the shell's "killed"

StopHandler = Callable[[Any, Any], None]  # (tracer, task): one seccomp stop, handled


class Termination:
    """SIGTERM for a run (``agentd kill``, the daemon stopping, a plain kill). The handler only
    notes it, SIGKILLs the agent's thread groups once the tracer is there (``attach``), and
    makes ``fd`` readable, which ends a wait for the operator (``RunRegistration.interrupt_fd``).
    """

    def __init__(self) -> None:
        self.requested = False
        self.tracer: Any = None
        self.fd, self._wake = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        if self.tracer is not None:
            self.tracer.kill_tree()
        try:
            os.write(self._wake, b"T")
        except OSError:  # full or closed: it is readable already, or nobody waits any more
            pass

    def attach(self, tracer: Any) -> None:
        """The agent exists now: a SIGTERM that came before kills it here."""
        self.tracer = tracer
        if self.requested:
            tracer.kill_tree()

    def close(self) -> None:
        """After the run: SIGTERM has its default action again, and the pipe is closed."""
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for fd in (self.fd, self._wake):
            try:
                os.close(fd)
            except OSError:
                pass


@dataclass(frozen=True)
class NewPolicy:
    """A policy to switch to, and the audit record's words for it."""

    policy: Any
    name: str
    version: str
    reason: str


class PolicySwitch:
    """A policy switch asked for by a signal (the daemon's SIGUSR1 after a reload). The handler
    only notes it; ``apply_pending`` runs at the next seccomp stop, calls ``load`` (the caller's:
    read the new policy and compile it; None when there is nothing new) and records the switch
    (``policy_reload``, enforced ``reload``). A failed load keeps the old policy and says so."""

    def __init__(self, load: Callable[[], NewPolicy | None]):
        self.load = load
        self.pending = False
        # the tracer's thread and the network plane's both apply a pending switch
        self._lock = threading.Lock()

    def install(self, signum: int = signal.SIGUSR1) -> None:
        signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.pending = True

    def request(self) -> None:
        """Look at the next stop even without a signal (one may have come before ``install``)."""
        self.pending = True

    def apply_pending(self, session: Session) -> None:
        if not self.pending:
            return
        with self._lock:
            if not self.pending:
                return  # the other thread applied it meanwhile
            self.pending = False
            try:
                new = self.load()
            except Exception as exc:  # noqa: BLE001 - keep the old policy, say so
                log.error("policy switch failed: %s", exc)
                return
            if new is None:
                return
            session.switch_policy(new.policy)
        session.record(
            None,
            "reload",
            Evaluation(
                "policy_reload", f"{new.name}@{new.version}", "allow", Outcome.ALLOW, new.reason
            ),
            enforced="reload",
        )


@dataclass
class RunSpec:
    """One run, as its caller assembled the parts that differ between callers."""

    run_id: str
    agent_id: str
    argv: list[str]
    policy: Any  # compiled, its variables bound
    mode: str  # enforce | audit
    env: Mapping[str, str]  # before the policy's env_read removals
    recorder: Any  # FlightRecorder, or the daemon's pipe recorder
    registration: RunRegistration
    review: Callable[[Any], tuple[str, str]]  # asked about a SIGSTOP verdict (trace.hold)
    protected_paths: tuple[str, ...]  # the audit log, the runs directory, ...
    seccomp_profile: str | None = None
    # The network plane for the session, or None to run without one; raises HostError when
    # the run must not go on without it.
    start_plane: Callable[[Session], Any] | None = None
    child_steps: Sequence[Callable[[], None]] = ()  # the caller's, after the plane's
    landlock: Any = None  # a prepared ruleset: applied last, closed at the end
    on_started: Callable[[int], None] | None = None  # the agent's pid, once traced
    # wraps the stop handler (the daemon times every decision)
    wrap_stop: Callable[[StopHandler], StopHandler] | None = None
    policy_switch: PolicySwitch | None = None
    termination: Termination = field(default_factory=Termination)
    say_terminated: bool = False  # say "terminated" on stderr (agentd run)
    # The caller closes RunEnd.plane itself, after it has reported the run's end (the daemon:
    # tearing the namespace down takes ~20 ms nobody needs to wait for)
    late_plane_close: bool = False


@dataclass(frozen=True)
class RunEnd:
    code: int  # the exit status to give: the agent's, 128+N, 137, or 125/2/127
    status: int | None  # the agent's wait status; None when it did not run to its end
    terminated: bool  # SIGTERM ended the run
    session: Session
    plane: Any = None  # with RunSpec.late_plane_close: the plane, still to be closed


class _Refused(Exception):
    """The run cannot start: the message for stderr, and the exit status."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _as_resolved(path: str) -> str:
    """A protected path as the decoder spells targets (symlinks resolved), a directory with its
    trailing slash kept: a log named through a symlinked directory is still the log."""
    resolved = os.path.realpath(path)
    return resolved + "/" if path.endswith("/") and resolved != "/" else resolved


def execute(spec: RunSpec) -> RunEnd:
    """Run ``spec`` to its end; errors are said on stderr (``agentd run: ...``) and become the
    exit status. Exceptions the caller must see (SystemExit from its own hooks) pass through
    after the cleanup."""
    session = Session(
        spec.policy,
        spec.run_id,
        spec.agent_id,
        recorder=spec.recorder,
        audit_only=spec.mode == "audit",
        protected_paths=tuple(_as_resolved(path) for path in spec.protected_paths),
        review=spec.review,
    )
    termination = spec.termination
    termination.install()
    spec.registration.interrupt_fd = termination.fd
    plane = late = None
    status: int | None = None
    code: int | None = None
    try:
        try:
            plane = spec.start_plane(session) if spec.start_plane is not None else None
            status = _supervise(spec, session, plane)
        except RunTerminated:
            pass  # SIGTERM while the operator was asked; the tree is killed
        except _Refused as exc:
            code = _say_refused(str(exc), exc.code)
        except HostError as exc:
            code = _say_refused(str(exc), 125)
        except FilterError as exc:
            code = _say_refused(str(exc), 2)
        except FileNotFoundError as exc:
            code = _say_refused(str(exc), 127)
        if termination.requested:
            status, code = None, KILLED
            if spec.say_terminated:
                _say(f"agentd run: run {spec.run_id}: terminated; the agent was killed")
        late = plane if spec.late_plane_close else None
    finally:
        # INVARIANT: an exception leaving here closes the plane (nobody would be handed it)
        _clean_up(spec, session, plane if late is None else None)
    if code is None:
        # a SIGKILL verdict is 137 even when the process that ran first had already exited;
        # no status at all is a run whose tree was killed before its first process ended
        code = KILLED if session.killed or status is None else exit_code(status)
    return RunEnd(code, status, termination.requested, session, late)


def _supervise(spec: RunSpec, session: Session, plane: Any) -> int:
    """Register the run, then trace the agent to its end: its wait status."""
    env = dict(spec.env)
    if plane is not None:
        env.update(plane.environment(env))
        session.network = plane.view()
    try:
        spec.registration.create()
    except OSError as exc:
        raise _Refused(
            f"cannot create the control socket in {spec.registration.directory}: {exc}", 2
        ) from None
    if spec.termination.requested:
        raise RunTerminated(f"run {spec.run_id} was terminated before it started")

    def started(pid: int, tracer: Any) -> None:
        spec.termination.attach(tracer)
        if spec.on_started is not None:
            spec.on_started(pid)
        spec.registration.update(agent_pid=pid)
        if plane is not None:
            plane.attach(tracer)
            plane.started(pid)  # the user namespace plane starts serving its child's sockets

    # CAP_SYS_ADMIN for an IPC namespace: root, or the plane's user namespace
    private_ipc = os.geteuid() == 0 or (plane is not None and plane.user_namespace)
    return supervise(
        list(spec.argv),
        spec.policy,
        session,
        profile=spec.seccomp_profile,
        env=env,
        on_started=started,
        child_steps=_child_steps(spec, plane, private_ipc),
        on_syscall=_stop_handler(spec, session),
        shared_ipc=not private_ipc,
    )


def _child_steps(spec: RunSpec, plane: Any, private_ipc: bool) -> list[Callable[[], None]]:
    """What the agent's child does between the seize and the filter, in this order."""
    steps: list[Callable[[], None]] = [_no_core_dumps]
    if plane is not None:
        # First the namespace (setns, or the user namespace's unshare), while the child still
        # holds what that needs; then no exec may bring CAP_NET_ADMIN/CAP_SYS_ADMIN back.
        steps.append(plane.enter)
    if private_ipc:
        # Its own System V IPC and POSIX message queues, before the bounding set loses
        # CAP_SYS_ADMIN (without one, the filter refuses them: supervise.filter_spec).
        from agentd.kernel.ipc_namespace import PrivateIpc

        steps.append(PrivateIpc())
    if plane is not None or os.geteuid() == 0:
        # A root agent without the plane shares the host's network namespace: without
        # CAP_NET_ADMIN its netlink messages can read the network state, never change it.
        from agentd.kernel.capabilities import BoundingDrop

        steps.append(BoundingDrop())
    steps.extend(spec.child_steps)
    if spec.landlock is not None:
        steps.append(spec.landlock.apply)
    return steps


def policy_variables(workspace: str, env: Mapping[str, str], home: str) -> dict[str, str]:
    """``${WORKSPACE}``, ``${HOME}`` and ``${TMPDIR}`` of a run, for ``agentd run`` and the
    daemon alike: HOME and TMPDIR as the agent's environment names them (where git writes
    ``$HOME/.gitconfig``, where programs put temporary files), else the account's ``home`` and
    /tmp; resolved, symlink-free paths, the form targets are judged in."""
    env_home = env.get("HOME") or ""
    return {
        "WORKSPACE": os.path.realpath(workspace),
        "HOME": os.path.realpath(env_home if os.path.isabs(env_home) else home),
        "TMPDIR": os.path.realpath(env.get("TMPDIR") or "/tmp"),
    }


def supervisor_paths(workspace: str) -> tuple[str, ...]:
    """The code and configuration a later ``agentd`` loads, as protected paths (directories with
    their trailing slash): the directories on this interpreter's ``sys.path`` that this process
    imported a module from (the standard library, site-packages, an editable install's source;
    not the working directory ``python -m`` puts there, which is the user's, $HOME say), the
    virtual environment that holds
    the ``agentd`` command, the built-in policies and seccomp profiles, ``/etc/agentd`` and
    ``$AGENT_OS_POLICY_PATH``, and the per-user policy and filter cache. An agent that could
    write there would run its code as the next supervisor, or weaken the next sandbox, outside
    any policy. A code or configuration path that overlaps the workspace either way is left out:
    the user handed it to the agent (developing agentd under agentd), or protecting it would
    refuse every write in the workspace; the cache never is."""
    import sys

    import agentd

    project = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(agentd.__file__))))
    candidates = _import_sources()
    if sys.prefix != sys.base_prefix:
        candidates.append(sys.prefix)  # the venv: its bin/agentd and bin/python
    candidates += [
        os.path.join(project, "policies"),
        os.path.join(project, "seccomp_profiles"),
        "/etc/agentd",
        *(d for d in os.environ.get("AGENT_OS_POLICY_PATH", "").split(os.pathsep) if d),
    ]
    workspace = os.path.realpath(workspace).rstrip("/") + "/"
    paths: list[str] = []
    for candidate in candidates:
        if not os.path.isdir(candidate):
            continue
        path = os.path.realpath(candidate).rstrip("/") + "/"
        if path == "/" or path.startswith(workspace) or workspace.startswith(path):
            continue
        if path not in paths:
            paths.append(path)
    # The per-user caches (policies, compiled filters): what a later run unpickles or installs,
    # protected even inside the workspace (an agent working in $HOME).
    from .policy_cache import cache_dir

    paths.append(os.path.realpath(cache_dir()) + "/")
    return tuple(paths)


def _import_sources() -> list[str]:
    """The ``sys.path`` directories some loaded module came from (a module's ``__file__`` is its
    path entry joined with its name, so the entry as written is its prefix)."""
    import sys

    files = [
        path
        for module in list(sys.modules.values())
        if isinstance(path := getattr(module, "__file__", None), str)
    ]
    sources = []
    for entry in sys.path:
        prefix = entry.rstrip("/") + "/"
        if entry and any(path.startswith(prefix) for path in files):
            sources.append(entry)
    return sources


def warm_imports() -> None:
    """Import what a run imports only when it starts (the child steps' modules, the exec
    identifier's policy analysis): for a process that forks runs, so that none pays for them."""
    import agent_os.prefixes  # noqa: F401
    import agent_os.stack  # noqa: F401
    import agentd.kernel.capabilities  # noqa: F401
    import agentd.kernel.ipc_namespace  # noqa: F401


def _no_core_dumps() -> None:
    """RLIMIT_CORE 0, soft and hard, for the whole tree (inherited across fork and exec): a
    core dump is a file the kernel writes in the crashing process's cwd, which may lie outside
    the workspace, with no syscall for the tracer to judge. No process can raise a hard limit
    without CAP_SYS_RESOURCE, which no root agent keeps (kernel/capabilities.py)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _stop_handler(spec: RunSpec, session: Session) -> StopHandler:
    """``session.on_syscall``, wrapped by the caller. A pending policy switch is applied by
    the session itself before each decision (``Session.refresh``), whoever decides: a stop of
    the tracer or a request at the network plane."""
    switch = spec.policy_switch
    if switch is not None:
        session.refresh = lambda: switch.apply_pending(session)
    decide: StopHandler = session.on_syscall
    if spec.wrap_stop is not None:
        decide = spec.wrap_stop(decide)
    return decide


def _clean_up(spec: RunSpec, session: Session, plane: Any) -> None:
    spec.termination.close()
    spec.registration.interrupt_fd = None
    if spec.landlock is not None:
        spec.landlock.close()
    if plane is not None:
        plane.close()
    spec.registration.remove()
    try:
        session.flush_repeats()
        spec.recorder.close()
    except Exception:  # noqa: BLE001 - never mask the agent's status
        pass
    for line in session.warning_summary():
        notice_line(f"warnings repeated: {line}")


def _say_refused(message: str, code: int) -> int:
    _say(f"agentd run: {message}")
    return code


def _say(message: str) -> None:
    try:
        os.write(2, (message + "\n").encode("utf-8", "replace"))
    except OSError:
        pass
