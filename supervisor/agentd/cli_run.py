"""``agentd run``, ``agentd ps``, ``agentd resume`` and ``agentd kill``.

Owns the command-line surface of supervised runs: parse options, load the policy (binding
``${WORKSPACE}``, ``${HOME}``, ``${TMPDIR}``), open the audit log, register the run, hand over to
``runner.supervise`` and turn the agent's end into our exit status (its own, 128+N after signal
N). Heavy modules are imported inside the commands so that ``agentd run -- /bin/true`` starts fast.
"""

from __future__ import annotations

import os
import sys

import click

__all__ = ["run", "ps", "resume", "kill"]


class _Terminated(BaseException):
    """SIGTERM reached the supervisor: `agentd kill RUN_ID`, or a plain kill."""


def _new_run_id() -> str:
    return f"r{os.getpid():x}{os.urandom(3).hex()}"


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"agentd run: {message}", err=True)
    sys.exit(code)


@click.command(context_settings={"allow_interspersed_args": False})
@click.option("--policy", "policy_name", default="strict", show_default=True,
              help="Built-in policy name or path to a policy YAML file.")
@click.option("--workspace", type=click.Path(file_okay=False, exists=True), default=None,
              help="The agent's workspace, bound to ${WORKSPACE} (default: current directory).")
@click.option("--agent-id", default=None, help="Agent id for policies and the audit log.")
@click.option("--audit-log", default=None, help="FlightRecorder log file (default: agentd's).")
@click.option("--mode", type=click.Choice(["enforce", "audit"]), default="enforce",
              show_default=True, help="audit: decide and record, but block nothing.")
@click.option("--seccomp-profile", type=click.Path(dir_okay=False, exists=True), default=None,
              help="OCI seccomp profile with the baseline denials (default: seccomp_profiles/default.json).")
@click.option("--embedded", is_flag=True,
              help="Supervise here even when the agentd daemon runs (default: use the daemon).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(policy_name: str, workspace: str | None, agent_id: str | None, audit_log: str | None,
        mode: str, seccomp_profile: str | None, embedded: bool, command: tuple[str, ...]) -> None:
    """Run CMD under a policy enforced at the OS level (ptrace + seccomp-bpf).

    \b
    agentd run --policy strict -- python3 agent.py
    agentd run --mode audit --policy read_only -- make test
    """
    if not embedded:
        from . import daemon_client   # the daemon's socket is there: it supervises
        if daemon_client.available():
            sys.exit(daemon_client.run(list(command), policy=policy_name, workspace=workspace,
                                       agent_id=agent_id, mode=mode, audit_log=audit_log,
                                       seccomp_profile=seccomp_profile))
    import signal

    from agent_os.errors import PolicyError
    from agent_os.loader import load_policy

    from . import control, runner
    from .session import Session

    try:
        runner.check_host()   # first: a nested run must fail before it touches anything
    except runner.HostError as exc:
        _fail(str(exc), 125)
    workspace = os.path.realpath(workspace or os.getcwd())
    # Targets are resolved, symlink-free paths: bind the variables to the same form.
    variables = {"WORKSPACE": workspace, "HOME": os.path.realpath(os.path.expanduser("~")),
                 "TMPDIR": os.path.realpath(os.environ.get("TMPDIR") or "/tmp")}
    try:
        policy = load_policy(policy_name, variables=variables)
    except PolicyError as exc:
        _fail(f"cannot load policy {policy_name!r}:\n{exc}")
    except OSError as exc:
        _fail(f"cannot load policy {policy_name!r}: {exc}")

    run_id = _new_run_id()
    agent_id = agent_id or f"{os.path.basename(command[0])}-{run_id}"
    from agent_os.flight_recorder import AuditLogError, FlightRecorder, default_audit_log_path

    from agent_os.flight_recorder import AuditLogLockedError

    log_path = os.path.abspath(audit_log) if audit_log else str(default_audit_log_path())
    try:
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        try:
            recorder = FlightRecorder(log_path, fsync="interval")
        except AuditLogLockedError:
            if audit_log:
                raise
            # One writer per log: a concurrent run gets its own file next to the default one.
            base, ext = os.path.splitext(log_path)
            log_path = f"{base}.{run_id}{ext}"
            recorder = FlightRecorder(log_path, fsync="interval")
            click.echo(f"agentd run: the default audit log is in use by another run; "
                       f"this run records to {log_path}", err=True)
    except (AuditLogError, OSError) as exc:
        _fail(f"cannot open the audit log {log_path}: {exc} (use --audit-log FILE)")

    registration = control.RunRegistration(run_id, {
        "run_id": run_id, "supervisor_pid": os.getpid(), "agent_pid": None,
        "agent_id": agent_id, "command": list(command), "policy": getattr(policy, "name", policy_name),
        "mode": mode, "workspace": workspace, "audit_log": log_path, "started": __import__("time").time(),
    })
    session = Session(policy, run_id, agent_id, recorder=recorder, audit_only=(mode == "audit"),
                      protected_paths=(log_path, registration.directory + "/"),
                      hold=control.Holder(registration))

    def terminate(signum, frame):  # agentd kill RUN_ID, or a plain kill of the supervisor
        raise _Terminated()

    status = None
    try:
        try:
            registration.create()
        except OSError as exc:
            _fail(f"cannot create the control socket in {registration.directory}: {exc}")
        signal.signal(signal.SIGTERM, terminate)
        status = runner.supervise(
            list(command), policy, session, profile=seccomp_profile,
            on_started=lambda pid, tracer: registration.update(agent_pid=pid))
    except runner.HostError as exc:
        _fail(str(exc), 125)
    except runner.FilterError as exc:
        _fail(str(exc), 2)
    except FileNotFoundError as exc:
        _fail(str(exc), 127)
    except _Terminated:
        click.echo(f"agentd run: run {run_id}: terminated; the agent was killed", err=True)
        status = None
        sys.exit(128 + signal.SIGKILL)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        registration.remove()
        try:
            recorder.close()
        except Exception:  # noqa: BLE001 - never mask the agent's status
            pass
        if status is not None and mode == "audit":
            _audit_summary(session)
    if session.killed:
        # a SIGKILL verdict is 137 even when the process that ran first had already exited
        sys.exit(128 + signal.SIGKILL)
    sys.exit(runner.exit_code(status))


def _audit_summary(session) -> None:
    denials = session.would_deny
    if not denials:
        click.echo("agentd run: audit mode: no action would have been denied", err=True)
        return
    click.echo(f"agentd run: audit mode: {len(denials)} action(s) would have been denied:", err=True)
    seen: set = set()
    for d in denials:
        key = (d.action_type, d.target, d.outcome)
        if key in seen:
            continue
        seen.add(key)
        ids = ",".join(d.pattern_ids) or "-"
        click.echo(f"  {d.outcome:5} {d.action_type:15} {d.target}  [{ids}] (pid {d.pid}, {d.syscall})",
                   err=True)


def _short_command(argv: list[str], width: int = 60) -> str:
    text = " ".join(argv).replace("\n", "\\n")
    return text if len(text) <= width else text[:width - 3] + "..."


@click.command()
def ps() -> None:
    """List the supervised runs of this user."""
    from . import control

    runs = control.list_runs()
    if not runs:
        click.echo("no agentd runs")
        return
    click.echo(f"{'RUN_ID':18} {'SUPERVISOR':>10} {'AGENT':>7} {'STATE':8} {'POLICY':12} COMMAND")
    for info in runs:
        state = info.get("state", "?")
        held = info.get("held") or {}
        click.echo(f"{info['run_id']:18} {info.get('supervisor_pid', ''):>10} "
                   f"{info.get('agent_pid') or '':>7} {state:8} {str(info.get('policy', '')):12} "
                   f"{_short_command(info.get('command', []))}")
        if state == "held" and held:
            click.echo(f"{'':18} held: pid {held.get('pid')} wants {held.get('what')}: "
                       f"{held.get('reason')}")


@click.command()
@click.argument("run_id")
@click.option("--allow", "decision", flag_value="allow", help="Let the held syscall run once.")
@click.option("--deny", "decision", flag_value="deny", help="Refuse it (EACCES); the agent goes on.")
def resume(run_id: str, decision: str | None) -> None:
    """Resume a run held by a SIGSTOP verdict, allowing or denying the held action."""
    from . import control

    if decision is None:
        raise click.UsageError("say --allow or --deny")
    try:
        answer = control.send_decision(run_id, decision)
    except (LookupError, RuntimeError, OSError) as exc:
        click.echo(f"agentd resume: {exc}", err=True)
        sys.exit(1)
    if not answer.get("ok"):
        click.echo(f"agentd resume: {answer.get('error', 'refused')}", err=True)
        sys.exit(1)
    click.echo(f"run {run_id}: {decision}")


@click.command()
@click.argument("run_id")
def kill(run_id: str) -> None:
    """Kill a run's whole agent tree (its supervisor exits 137)."""
    from . import control

    try:
        pid = control.kill_run(run_id)
    except (LookupError, OSError) as exc:
        click.echo(f"agentd kill: {exc}", err=True)
        sys.exit(1)
    click.echo(f"run {run_id}: supervisor {pid} told to kill the agent")
