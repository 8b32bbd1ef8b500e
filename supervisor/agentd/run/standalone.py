"""``agentd run`` without the daemon: the standalone supervisor of one run.

Owns what ``agentd run`` gives the run's assembly (``assembly.RunSpec``) that the daemon does
not: the policy through ``policy_cache`` (binding ``${WORKSPACE}``, ``${HOME}``, ``${TMPDIR}``),
the FlightRecorder it writes itself, the operator's review on the terminal, the Landlock ruleset,
the network plane this user may have (``--network``), the audit-mode summary, and the exit with
the agent's status (its own, 128+N after signal N). ``--explain-sandbox`` is said here too.
Start-up time matters (agents start many short commands): the console entry
(``agentd.cli.entry``) parses a well-formed command line without click (``agentd.cli.run_fast``)
and calls ``run_agent`` directly, and every heavy module is imported late.
"""

from __future__ import annotations

import os
import sys

__all__ = ["run_agent", "explain_sandbox", "explain_network"]


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _new_run_id() -> str:
    return f"r{os.getpid():x}{os.urandom(3).hex()}"


def _fail(message: str, code: int = 2) -> None:
    _say(f"agentd run: {message}")
    sys.exit(code)


def run_agent(
    policy_name: str,
    workspace: str | None,
    agent_id: str | None,
    audit_log: str | None,
    mode: str,
    seccomp_profile: str | None,
    command: tuple[str, ...],
    network: str = "auto",
    dns_upstream: str | None = None,
) -> None:
    """Supervise ``command`` here (not through the daemon); exits with the agent's status."""
    import time

    from . import registry as control
    from . import supervise
    from .assembly import RunSpec, execute, supervisor_paths

    try:
        supervise.check_host()  # first: a nested run must fail before it touches anything
    except supervise.HostError as exc:
        _fail(str(exc), 125)
    policy, workspace = _load_policy(policy_name, workspace)
    landlock = _prepare_landlock(policy, mode)
    run_id = _new_run_id()
    agent_id = agent_id or f"{os.path.basename(command[0])}-{run_id}"
    recorder, log_path = _open_audit_log(audit_log, run_id)
    registration = control.RunRegistration(
        run_id,
        {
            "run_id": run_id,
            "supervisor_pid": os.getpid(),
            "agent_pid": None,
            "agent_id": agent_id,
            "command": list(command),
            "policy": getattr(policy, "name", policy_name),
            "mode": mode,
            "workspace": workspace,
            "audit_log": log_path,
            "started": time.time(),
        },
    )
    end = execute(
        RunSpec(
            run_id=run_id,
            agent_id=agent_id,
            argv=list(command),
            policy=policy,
            mode=mode,
            env=os.environ,
            recorder=recorder,
            registration=registration,
            review=control.OperatorReview(registration),
            protected_paths=(
                log_path,
                registration.directory + "/",
                *supervisor_paths(workspace),  # agentd's code and configuration, its caches
            ),
            seccomp_profile=seccomp_profile,
            start_plane=lambda session: _start_plane(network, dns_upstream, session, run_id),
            landlock=landlock,
            say_terminated=True,
        )
    )
    if end.status is not None and mode == "audit":
        _audit_summary(end.session)
    sys.exit(end.code)


def _open_audit_log(audit_log: str | None, run_id: str):
    """(FlightRecorder, its path): ``--audit-log`` or the default log; exits 2 when it cannot
    be opened."""
    from agent_os.flight_recorder import (
        AuditLogError,
        AuditLogLockedError,
        FlightRecorder,
        default_audit_log_path,
    )

    log_path = os.path.abspath(audit_log) if audit_log else str(default_audit_log_path())
    try:
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        try:
            return FlightRecorder(log_path, fsync="interval"), log_path
        except AuditLogLockedError:
            if audit_log:
                raise
            # One writer per log: a concurrent run gets its own file next to the default one.
            base, ext = os.path.splitext(log_path)
            log_path = f"{base}.{run_id}{ext}"
            recorder = FlightRecorder(log_path, fsync="interval")
            _say(
                f"agentd run: the default audit log is in use by another run; "
                f"this run records to {log_path}"
            )
            return recorder, log_path
    except (AuditLogError, OSError) as exc:
        _fail(f"cannot open the audit log {log_path}: {exc} (use --audit-log FILE)")


def _prepare_landlock(policy, mode: str):
    """The Landlock ruleset of ``policy`` built in the kernel now (applied in the agent's child
    before exec), or None when the policy gives Landlock nothing to enforce. Every degradation
    (no Landlock, an old ABI, a rule path that is missing) is said on stderr; an unexpected
    kernel error refuses the run (exit 125) rather than running with less than the plan."""
    from .sandbox_plan import plan_sandbox

    plan = plan_sandbox(policy, mode=mode)
    try:
        prepared, problems = plan.prepare_landlock()
    except OSError as exc:
        _fail(
            f"cannot build the Landlock ruleset: {exc}. (agentd run --explain-sandbox shows "
            "the plan.)",
            125,
        )
    for warning in (*plan.warnings, *problems):
        _say(f"agentd run: warning: {warning}")
    return prepared


def _start_plane(network: str, dns_upstream: str | None, session, run_id: str):
    """The run's network plane (netplane/plane.py), or None with the reason said on stderr.

    ``auto``: the plane when this host can build it, else connect()-level control with a
    warning; ``plane``: refuse to run without it; ``off``: connect()-level only. Root gets the
    veth plane (nftables); an ordinary user gets the user namespace plane (loopback only, the
    stub and the proxy on sockets inside it) when the host allows unprivileged user namespaces.
    """
    if network == "off":
        return None
    from agentd.netplane.dns import parse_upstream

    try:
        upstream = parse_upstream(dns_upstream)
    except ValueError as exc:
        _fail(f"--dns-upstream {dns_upstream!r}: {exc} (give IP[:PORT], comma separated)")
    from agentd.netplane.plane import NetworkPlane, PlaneUnavailable, UsernsPlane

    try:
        if os.geteuid() == 0:
            return NetworkPlane.start(session, run_id, upstream=upstream)
        try:
            plane = UsernsPlane.start(session, run_id, upstream=upstream)
        except PlaneUnavailable as exc:
            raise PlaneUnavailable(f"the veth plane needs root, and {exc}") from None
        _say(f"agentd run: network: {plane.describe()}")
        return plane
    except PlaneUnavailable as exc:
        if network == "plane":
            _fail(f"--network plane: {exc}", 125)
        _say(
            f"agentd run: warning: no network plane ({exc}); network access is judged at "
            "connect() only: no names, no URLs (--network off silences this)"
        )
        return None
    except Exception as exc:  # noqa: BLE001 - the DNS stub or proxy could not start
        _fail(f"cannot start the network plane: {exc} (--network off runs without it)", 125)


def explain_network(network: str) -> str:
    """The network part of ``--explain-sandbox``: which plane this run would get, and why."""
    if network == "off":
        return (
            "Network (--network off): network_connect is judged at connect() by address; "
            "no names, no URLs."
        )
    if os.geteuid() == 0:
        import shutil

        if shutil.which("nft") is None:
            why: str | None = "nft (nftables) is not installed"
        else:
            return (
                f"Network (--network {network}): own network namespace with one veth to the "
                "supervisor; DNS (port 53) goes to the run's DNS stub, ports 80/443 to its "
                "HTTP proxy, everything else is refused. network_request is judged on the "
                "method and URL (host and port for TLS), network_connect on the address and "
                "the names the stub resolved to it (docs/network.md)."
            )
    else:
        from agentd.netplane.userns import userns_unavailable

        why = userns_unavailable()
        if why is None:
            return (
                f"Network (--network {network}, no root): own user + network namespace "
                "with loopback only; the run's DNS stub and HTTP proxy serve it there, "
                "reached through /etc/resolv.conf's nameservers and HTTP(S)_PROXY; "
                "no other way out (docs/network.md)."
            )
    if network == "plane":
        return f"Network (--network plane): cannot be built here ({why}): the run would be refused."
    return (
        f"Network (--network auto): no plane here ({why}); network_connect is judged at "
        "connect() by address only."
    )


def _load_policy(policy_name: str, workspace: str | None):
    """(policy, resolved workspace): the policy through the cache, with ``${WORKSPACE}``,
    ``${HOME}`` and ``${TMPDIR}`` bound; exits 2 with the reason when it cannot be loaded."""
    from agent_os.errors import PolicyError

    from .assembly import policy_variables
    from .policy_cache import load_policy_cached

    workspace = os.path.realpath(workspace or os.getcwd())
    variables = policy_variables(workspace, os.environ, os.path.expanduser("~"))
    try:
        return load_policy_cached(policy_name, variables), workspace
    except PolicyError as exc:
        _fail(f"cannot load policy {policy_name!r}:\n{exc}")
    except OSError as exc:
        _fail(f"cannot load policy {policy_name!r}: {exc}")


def explain_sandbox(policy_name: str, workspace: str | None, mode: str) -> str:
    """The text of ``agentd run --explain-sandbox``: which layer enforces which rule."""
    from .sandbox_plan import plan_sandbox

    policy, _ = _load_policy(policy_name, workspace)
    return plan_sandbox(policy, mode=mode).explain()


def _audit_summary(session) -> None:
    denials = session.would_deny
    if not denials:
        _say("agentd run: audit mode: no action would have been denied")
        return
    _say(f"agentd run: audit mode: {len(denials)} action(s) would have been denied:")
    seen: set = set()
    for d in denials:
        key = (d.action_type, d.target, d.outcome)
        if key in seen:
            continue
        seen.add(key)
        ids = ",".join(d.pattern_ids) or "-"
        _say(f"  {d.outcome:5} {d.action_type:15} {d.target}  [{ids}] (pid {d.pid}, {d.syscall})")
