"""Start the agent under the tracer: compile in the parent, fork, apply in the child, trace.

Owns process creation for ``agentd run``. Before ``fork()`` everything is compiled: the policy
(loaded by the caller), the seccomp program (``seccomp.build_filter`` over the traced names of
``syscall_table`` plus the profile's denials, laid out by ``seccomp.prepare``), the executable's
path and the environment (variables whose ``env_read`` decision is deny are removed, and each
removal is recorded). The child only stops itself (SIGSTOP), waits to be seized, installs the
filter (no_new_privs + seccomp) and execs. The parent seizes it with the trace options, lets it go
and runs the tracer loop until the last task is gone. ``check_host`` explains, with the fix, what
stops ptrace or seccomp on this host.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agentd.kernel import procfs, ptrace

__all__ = [
    "HostError",
    "FilterError",
    "check_host",
    "filter_spec",
    "prepare_filter",
    "filter_fingerprint",
    "untraced_rules",
    "filter_environment",
    "spawn_traced",
    "exit_code",
    "DEFAULT_PROFILE",
    "supervise",
]

# <repo>/seccomp_profiles/default.json (this file is <repo>/supervisor/agentd/run/supervise.py)
DEFAULT_PROFILE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
    "seccomp_profiles",
    "default.json",
)


class HostError(RuntimeError):
    """The host does not let agentd trace or filter: the message says why and how to fix it."""


class FilterError(ValueError):
    """The seccomp profile could not be loaded or compiled (the message names the file)."""


def check_host() -> None:
    """Refuse early, with the fix, when tracing cannot work here."""
    status = procfs.status("self")
    tracer = status.get("TracerPid", "0")
    if tracer not in ("", "0"):
        raise HostError(
            f"agentd is itself being traced (TracerPid {tracer}: a debugger, strace, or another "
            "agentd). A process can have only one tracer, so agentd's children could not be "
            "traced. Fix: run agentd outside the debugger/strace, or stop nesting agentd runs."
        )
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope", encoding="ascii") as handle:
            scope = handle.read().strip()
    except OSError:
        scope = None
    if scope == "3":
        raise HostError(
            "ptrace is disabled on this host (kernel.yama.ptrace_scope = 3, which cannot be "
            "lowered without a reboot). Fix: boot with ptrace_scope <= 2, e.g. set "
            "kernel.yama.ptrace_scope=1 in /etc/sysctl.d/ and reboot."
        )
    if scope == "2" and os.geteuid() != 0:
        raise HostError(
            "ptrace is limited to root on this host (kernel.yama.ptrace_scope = 2). Fix: run "
            "agentd as root, or `sysctl kernel.yama.ptrace_scope=1`."
        )
    mode = status.get("Seccomp", "").strip()
    if status and not mode:
        raise HostError(
            "the kernel has no seccomp (CONFIG_SECCOMP is off): agentd needs "
            "seccomp-bpf. Fix: use a kernel built with CONFIG_SECCOMP_FILTER."
        )


def untraced_rules(traced: frozenset[str]) -> tuple:
    """Stops that could never map to an action, skipped in the kernel (``seccomp.UNTRACED``).

    ``sendto`` without an address (``send()``; ``decode`` judges a connected socket at
    ``connect()``) decodes to no action, so it is allowed without a tracer stop. Each rule
    mirrors a case where ``decode`` returns no action; nothing that decodes to an action is
    ever untraced.
    """
    from agentd.kernel.seccomp import UNTRACED, ArgCondition, ArgRule

    rules = (
        ArgRule(
            "sendto",
            (ArgCondition(4, "eq", 0),),
            UNTRACED,
            "send() on a connected socket: no address, no network_connect",
        ),
        ArgRule(
            "sendto",
            (ArgCondition(5, "eq", 0, width=32),),
            UNTRACED,
            "an address of length 0 is no address: no network_connect",
        ),
    )
    from agentd.trace import syscall_table

    rules += syscall_table.untraced_rules()
    return tuple(rule for rule in rules if rule.syscall in traced)


def filter_spec(profile_path: str | None, traced: frozenset[str], shared_ipc: bool = False):
    """The FilterSpec of a run: the profile's denials, the tracer's ``traced`` names and the
    ``untraced_rules`` (``build_filter`` adds ``TRACER_INVARIANTS``); with ``shared_ipc`` (the
    agent stays in the host's IPC namespace) the IPC syscalls that name objects are refused
    (``kernel/ipc_namespace.py``). The syscall ledger (``agentd.run.syscall_ledger``)
    classifies this same spec, for a run in an IPC namespace of its own."""
    from agentd.kernel import seccomp
    from agentd.kernel.ipc_namespace import SHARED_NAMESPACE_SYSCALLS

    path = profile_path or DEFAULT_PROFILE
    if not os.path.exists(path):
        # INVARIANT: no run without its baseline (namespaces, io_uring, mount, ... refused):
        # a missing profile is an error, never a quieter filter.
        raise FilterError(f"seccomp profile {path} does not exist")
    try:
        spec = seccomp.load_profile(path).spec(traced)
    except ValueError as exc:  # SeccompProfileError, unknown names
        raise FilterError(f"seccomp profile: {exc}") from None
    denied = dict(spec.denied)
    if shared_ipc:
        denied.update((name, seccomp.EPERM) for name in SHARED_NAMESPACE_SYSCALLS)
    return seccomp.FilterSpec(spec.traced, denied, spec.arg_rules + untraced_rules(traced))


# Filters this process compiled, by what they were compiled from: the daemon compiles its
# profile's once at start (``warm_filter``) and every supervisor it forks finds it here.
_PREPARED: dict[tuple, Any] = {}


def _filter_key(profile_path: str | None, traced: frozenset[str], shared_ipc: bool) -> tuple:
    """What a compiled filter depends on; a profile file that changed is another key (its
    inode, size and mtime), so a cached filter is never older than its profile."""
    path = profile_path or DEFAULT_PROFILE
    st = os.stat(path)  # a missing profile is filter_spec's error, with its message
    return (os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns, traced, shared_ipc)


def prepare_filter(profile_path: str | None, traced: frozenset[str], shared_ipc: bool = False):
    """The seccomp program, compiled and laid out in memory, ready for ``install()``; compiled
    once per process for the same profile, traced set and IPC setting, and taken from the
    per-user filter cache (``filter_cache``) when a run before compiled the same."""
    try:
        key: tuple | None = _filter_key(profile_path, traced, shared_ipc)
    except OSError:
        key = None
    if key is not None and key in _PREPARED:
        return _PREPARED[key]
    from . import filter_cache

    fingerprint = filter_fingerprint(profile_path, traced, shared_ipc)
    prepared = _cached_filter(fingerprint)
    if prepared is None:
        from agentd.kernel import seccomp

        spec = filter_spec(profile_path, traced, shared_ipc)
        try:
            prepared = seccomp.prepare(seccomp.build_filter(spec))
        except ValueError as exc:  # unknown names
            raise FilterError(f"seccomp profile: {exc}") from None
        if fingerprint is not None:
            filter_cache.store(fingerprint, prepared.blob)
    if key is not None:
        _PREPARED[key] = prepared
    return prepared


def _cached_filter(fingerprint: str | None):
    """The program a run before compiled from the inputs ``fingerprint`` sums up, or None."""
    from agentd.kernel.seccomp_install import InstallableFilter

    from . import filter_cache

    blob = filter_cache.load(fingerprint) if fingerprint is not None else None
    if blob is None:
        return None
    try:
        return InstallableFilter(blob)
    except ValueError:
        return None


# The sources a program is compiled by: the kernel package (the compiler, the syscall numbers,
# the ioctl ledger, the IPC list), the syscall table's rules and this module's.
_FILTER_SOURCES = ("kernel", "trace/syscall_table.py", "run/supervise.py")


def filter_fingerprint(
    profile_path: str | None, traced: frozenset[str], shared_ipc: bool
) -> str | None:
    """What the filter cache keys a program by (``filter_cache``): the profile's path and
    bytes, the traced names, the IPC setting and the size and mtime of every source that shapes
    the program; None when the profile cannot be read (compiling then says why)."""
    import hashlib

    path = os.path.abspath(profile_path or DEFAULT_PROFILE)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            digest.update(f"{path}\0".encode() + handle.read() + b"\0")
    except OSError:
        return None
    digest.update(("\0".join(sorted(traced)) + f"\0ipc={shared_ipc}\0").encode())
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for source in _FILTER_SOURCES:
        where = os.path.join(package, source)
        names = sorted(os.listdir(where)) if os.path.isdir(where) else [""]
        for name in names:
            if name and not name.endswith(".py"):
                continue
            try:
                info = os.stat(os.path.join(where, name) if name else where)
            except OSError:
                return None
            digest.update(f"{source}/{name}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
    return digest.hexdigest()


def warm_filter(profile_path: str | None, shared_ipc: bool = False) -> None:
    """Compile the filter of runs with ``profile_path`` now (the daemon, before any fork), so
    that no run pays for it; an error is the run's to report, not the warm-up's."""
    from agentd.trace.syscall_table import traced_syscalls

    try:
        prepare_filter(profile_path, traced_syscalls(), shared_ipc)
    except FilterError:
        pass


def filter_environment(
    env: Mapping[str, str], policy, context: dict, on_removed=None
) -> dict[str, str]:
    """``env`` without the variables the policy denies reading (``env_read``).

    ``on_removed(name, result)`` is called for each removal (the caller records it). An error
    while evaluating removes the variable (fail closed).
    """
    kept: dict[str, str] = {}
    for name, value in env.items():
        try:
            result = policy.evaluate("env_read", name, context)
            allowed = bool(result.allowed)
        except Exception as exc:  # INVARIANT: fail closed
            result, allowed = exc, False
        if allowed:
            kept[name] = value
        elif on_removed is not None:
            on_removed(name, result)
    return kept


def resolve_executable(command: str, env: Mapping[str, str]) -> str:
    """The path execve will get, found on the agent's PATH now (in the parent)."""
    if "/" in command:
        return command
    import shutil  # here: its import is a visible share of the start-up

    found = shutil.which(command, path=env.get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(f"{command}: command not found")
    return found


def spawn_traced(
    executable: str,
    argv: list[str],
    env: Mapping[str, str],
    prepared,
    child_steps: Sequence[Callable[[], None]] = (),
) -> int:
    """Fork the agent, seize it before its first instruction under the filter; return its pid.

    The child runs only async-signal-safe-ish code: raise SIGSTOP, the ``child_steps`` (each a
    few syscalls prepared in the parent: join a cgroup, enter a network namespace, drop
    privileges, apply Landlock), two syscalls of ``prepared.install()``, execve. Errors are
    reported on fd 2 and exit 126/127.
    """
    env_list = dict(env)
    argv = list(argv)
    pid = os.fork()
    if pid == 0:  # the child
        code = 126
        try:
            # Python ignores SIGPIPE; an ignored signal survives exec: give the agent defaults.
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGSTOP)  # the parent seizes us while we are stopped
            for step in child_steps:
                step()
            prepared.install()
            code = 127
            os.execve(executable, argv, env_list)
        except BaseException as exc:  # noqa: BLE001 - the child must never return
            try:
                os.write(2, f"agentd: cannot start {argv[0]}: {exc}\n".encode())
            finally:
                os._exit(code)
    # the parent
    while True:
        _, status = os.waitpid(pid, os.WUNTRACED)
        if os.WIFSTOPPED(status):
            break
        raise HostError(f"the agent process exited before it could be traced: status {status}")
    try:
        ptrace.seize(pid, ptrace.TRACE_OPTIONS)
    except ptrace.PtraceError as exc:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise HostError(
            f"cannot trace the agent (ptrace(PTRACE_SEIZE) failed: {os.strerror(exc.errno or 1)}). "
            "In a container, ptrace needs CAP_SYS_PTRACE or a seccomp profile that allows it "
            "(docker run --cap-add SYS_PTRACE --security-opt seccomp=unconfined); with Yama, "
            "set kernel.yama.ptrace_scope to 0 or 1."
        ) from None
    os.kill(pid, signal.SIGCONT)
    return pid


def exit_code(status: int) -> int:
    """The shell's convention: the exit status, or 128+N for death by signal N."""
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return 1


def supervise(
    argv: list[str],
    policy,
    session,
    *,
    profile: str | None = None,
    env: Mapping[str, str] | None = None,
    on_started=None,
    child_steps: Sequence[Callable[[], None]] = (),
    on_syscall=None,
    shared_ipc: bool = False,
) -> int:
    """Run ``argv`` under ``policy`` with ``session`` handling the stops; return the wait status.

    Compiles the filter and the environment before forking (nothing is compiled in the child).
    ``child_steps`` run in the agent's child, in order, after it is seized and before the
    filter is installed (``spawn_traced``). ``on_syscall(tracer, task)`` replaces
    ``session.on_syscall`` as the stop handler (the daemon wraps it to time each decision).
    ``shared_ipc``: no child step gives the agent an IPC namespace of its own (``filter_spec``).
    """
    from agentd.trace.syscall_table import traced_syscalls
    from agentd.trace.tracer import Tracer

    check_host()
    from agentd.kernel.seccomp_install import probe_kernel

    missing = probe_kernel()
    if missing:
        raise HostError(
            "the kernel lacks what agentd's seccomp filter needs: "
            + "; ".join(missing)
            + ". Fix: a kernel with CONFIG_SECCOMP_FILTER (Linux 4.14 or later), "
            "outside a container profile that blocks seccomp(2)."
        )
    prepared = prepare_filter(profile, traced_syscalls(), shared_ipc)
    context = {"agent_id": session.agent_id, "pid": os.getpid(), "syscall": "execve"}

    def removed(name: str, result: Any) -> None:
        from agentd.trace.decide import Evaluation, Outcome

        reason = getattr(result, "reason", None) or f"error while evaluating: {result!r}"
        session.record(
            None,
            "execve",
            Evaluation(
                "env_read",
                name,
                "deny",
                Outcome.BLOCK,
                f"removed from the environment: {reason}",
                tuple(x for x in (getattr(result, "pattern_id", None),) if x),
                getattr(result, "severity", None),
                getattr(result, "signal", None),
            ),
            enforced="removed",
        )

    agent_env = filter_environment(os.environ if env is None else env, policy, context, removed)
    executable = resolve_executable(argv[0], agent_env)
    pid = spawn_traced(executable, argv, agent_env, prepared, child_steps)
    # The terminal's ^C and ^\ are for the agent: the supervisor lives until the agent is gone.
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGQUIT)}
    try:
        tracer = Tracer(pid, on_syscall or session.on_syscall)
        tracer.tasks[pid].resuming = True  # its first stop is the seize of a stopped child
        if on_started is not None:
            on_started(pid, tracer)
        try:
            return tracer.run()
        except BaseException:
            tracer.kill_tree()
            while tracer.tasks and tracer.step():
                pass
            raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
