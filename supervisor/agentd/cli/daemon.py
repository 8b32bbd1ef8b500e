"""``agentd daemon``, ``reload``, ``stop`` and the daemon-aware ``ps``/``resume``/``kill``.

Owns the command-line surface of the daemon: start it (normally from ``agentd.service``), ask it
to reload its policies, and act on its runs. ``ps``, ``resume`` and ``kill`` ask the daemon first
when its socket is there and fall back to the standalone commands of ``cli/run.py`` for runs the
daemon does not know, so one set of commands serves both kinds of run.
"""

from __future__ import annotations

import sys
import time
from typing import NoReturn

import click

from . import run as cli_run

__all__ = ["daemon", "reload", "stop", "ps", "resume", "kill"]


def _daemon_request(op: str, **fields):
    """The daemon's answer (the op's ``protocol`` reply model), or None when no daemon runs
    here."""
    from agentd.daemon import client as daemon_client

    if not daemon_client.available():
        return None
    from agentd.daemon import protocol

    try:
        return daemon_client.ask(protocol.request_for(op, **fields))
    except daemon_client.DaemonError as exc:
        _fail(op, str(exc))


def _exit_if_refused(op: str, answer) -> None:
    """Exit 1 with the daemon's one-line reason when it refused the request."""
    if not answer.ok:
        _fail(op, answer.error)


def _fail(op: str, message: str) -> NoReturn:
    click.echo(f"agentd {op}: {message}", err=True)
    sys.exit(1)


@click.command()
@click.option(
    "--config",
    "config_path",
    default=None,
    help="Configuration file (default /etc/agentd/agentd.yaml; missing = defaults).",
)
@click.option("--print-config", is_flag=True, help="Print the effective configuration and exit.")
@click.option(
    "--check", is_flag=True, help="Validate the configuration and every policy, then exit."
)
def daemon(config_path: str | None, print_config: bool, check: bool) -> None:
    """Run the agentd service (as root, normally from agentd.service)."""
    from agentd.daemon.config import ConfigError, load_config

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        click.echo(f"agentd daemon: invalid configuration:\n{exc}", err=True)
        sys.exit(2)
    if print_config:
        import yaml

        click.echo(yaml.safe_dump(config.model_dump(), sort_keys=False))
        return
    from agentd.daemon.policy_store import PolicyStore
    from agentd.daemon.service import run_daemon

    if check:
        entries, errors = PolicyStore(config.policy_dir).build()
        for name, entry in sorted(entries.items()):
            click.echo(f"ok  {name}@{entry.version}  {entry.path}")
        for error in errors:
            click.echo(f"ERR {error}", err=True)
        sys.exit(1 if errors else 0)
    try:
        run_daemon(config)
    except OSError as exc:
        click.echo(f"agentd daemon: {exc}", err=True)
        sys.exit(1)
    except ValueError as exc:  # invalid policies at start-up
        click.echo(f"agentd daemon: cannot start:\n{exc}", err=True)
        sys.exit(2)


@click.command()
def reload() -> None:
    """Reload the daemon's policies atomically (root only); running agents switch."""
    answer = _daemon_request("reload")
    if answer is None:
        _fail("reload", "no daemon is running (no socket)")
    _exit_if_refused("reload", answer)
    for name, (old, new) in sorted(answer.changed.items()):
        click.echo(f"{name}: {old or '(new)'} -> {new}")
    if not answer.changed:
        click.echo("no policy changed")
    if answer.switched:
        click.echo(f"running agents switched: {', '.join(answer.switched)}")


@click.command()
@click.argument("run_id")
def stop(run_id: str) -> None:
    """Freeze a daemon run's whole agent (its cgroup); `agentd resume RUN_ID` thaws it."""
    answer = _daemon_request("stop", run_id=run_id)
    if answer is None:
        _fail("stop", "no daemon is running; standalone runs stop with ^Z")
    _exit_if_refused("stop", answer)
    click.echo(f"run {run_id}: {answer.state}")


@click.command()
@click.pass_context
def ps(ctx: click.Context) -> None:
    """List runs: the daemon's (yours; all for root) and this user's standalone ones."""
    from agentd.run import registry as control

    answer = _daemon_request("ps")
    if answer is not None and answer.ok:
        runs = answer.runs
        click.echo(f"{'RUN_ID':14} {'USER':10} {'POLICY':18} {'STATE':8} {'PIDS':16} COMMAND")
        for info in runs:
            pids = ",".join(str(p) for p in info.pids) or "-"
            policy = f"{info.policy}@{info.version[:6]}"
            click.echo(
                f"{info.run_id:14} {info.user:10} {policy:18} {info.state:8} {pids:16} "
                f"{cli_run._short_command(info.command, 40)}"
            )
            held = info.held
            if held:
                batch = " (a batch: the answer covers the rest of it)" if held.batch else ""
                since = held.since if held.since is not None else time.time()
                click.echo(
                    f"{'':14} pending review: pid {held.pid} wants {held.what}: "
                    f"{held.reason}{batch} ({time.time() - since:.0f}s)"
                )
        if not runs:
            click.echo("no daemon runs")
        if not control.list_runs():
            return
        click.echo("")
    ctx.invoke(cli_run.ps)


@click.command()
@click.argument("run_id")
@cli_run.decision_options
@click.pass_context
def resume(ctx: click.Context, run_id: str, decision: str | None) -> None:
    """Resume a held run (--allow/--deny) or thaw a run frozen by `agentd stop`."""
    answer = _daemon_request("resume", run_id=run_id, decision=decision)
    if answer is None or answer.unknown:
        ctx.invoke(cli_run.resume, run_id=run_id, decision=decision)
        return
    _exit_if_refused("resume", answer)
    click.echo(f"run {run_id}: {decision or answer.state or 'resumed'}")


@click.command()
@click.argument("run_id")
@click.pass_context
def kill(ctx: click.Context, run_id: str) -> None:
    """Kill a run's whole agent (its cgroup, under the daemon); the client exits 137."""
    answer = _daemon_request("kill", run_id=run_id)
    if answer is None or answer.unknown:
        ctx.invoke(cli_run.kill, run_id=run_id)
        return
    _exit_if_refused("kill", answer)
    click.echo(f"run {run_id}: killed")
