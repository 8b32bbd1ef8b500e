"""``agentd run``, ``agentd ps``, ``agentd resume`` and ``agentd kill``.

Owns the click surface of supervised runs: the options of ``agentd run`` (with ``--help``, and
the messages for a wrong command line), the daemon hand-off, and ``ps``/``resume``/``kill``. The
run itself is ``agentd.run.standalone.run_agent``; on a well-formed command line the console entry
(``agentd.cli.entry``) calls it without importing click at all, so that ``agentd run -- /bin/true``
starts fast. Heavy modules are imported inside the commands.
"""

from __future__ import annotations

import sys

import click

__all__ = ["run", "ps", "resume", "kill"]


@click.command(context_settings={"allow_interspersed_args": False})
@click.option(
    "--policy",
    "policy_name",
    default="strict",
    show_default=True,
    help="Built-in policy name or path to a policy YAML file.",
)
@click.option(
    "--workspace",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="The agent's workspace, bound to ${WORKSPACE} (default: current directory).",
)
@click.option("--agent-id", default=None, help="Agent id for policies and the audit log.")
@click.option("--audit-log", default=None, help="FlightRecorder log file (default: agentd's).")
@click.option(
    "--mode",
    type=click.Choice(["enforce", "audit"]),
    default="enforce",
    show_default=True,
    help="audit: decide and record, but block nothing.",
)
@click.option(
    "--seccomp-profile",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="OCI seccomp profile with the baseline denials (default: seccomp_profiles/default.json).",
)
@click.option(
    "--embedded",
    is_flag=True,
    help="Supervise here even when the agentd daemon runs (default: use the daemon).",
)
@click.option(
    "--network",
    type=click.Choice(["auto", "plane", "off"]),
    default="auto",
    show_default=True,
    envvar="AGENTD_NETWORK",
    show_envvar=True,
    help="plane: the agent gets its own network namespace whose only ways out are "
    "agentd's DNS stub and HTTP proxy, so names and URLs are judged (root: a veth "
    "with ports 53/80/443 redirected; other users: a user namespace reached "
    "through HTTP(S)_PROXY only); off: connect() is judged by address only; "
    "auto: plane when possible, else off with a warning.",
)
@click.option(
    "--dns-upstream",
    default=None,
    metavar="IP[:PORT],...",
    help="Resolvers the run's DNS stub forwards to (default: /etc/resolv.conf's).",
)
@click.option(
    "--explain-sandbox",
    is_flag=True,
    help="Print which layer (tracer, Landlock, seccomp baseline) enforces each part of "
    "the policy on this kernel, then exit without running anything.",
)
@click.argument("command", nargs=-1, required=False, type=click.UNPROCESSED)
def run(
    policy_name: str,
    workspace: str | None,
    agent_id: str | None,
    audit_log: str | None,
    mode: str,
    seccomp_profile: str | None,
    embedded: bool,
    network: str,
    dns_upstream: str | None,
    explain_sandbox: bool,
    command: tuple[str, ...],
) -> None:
    """Run CMD under a policy enforced at the OS level (ptrace + seccomp-bpf, and Landlock where
    the policy's file rules are directory hierarchies).

    \b
    agentd run --policy strict -- python3 agent.py
    agentd run --mode audit --policy read_only -- make test
    agentd run --policy strict --explain-sandbox
    """
    # Long because its docstring is `agentd run --help`; the code itself is short.
    if explain_sandbox:
        from agentd.run.standalone import explain_sandbox as explain

        click.echo(explain(policy_name, workspace, mode))
        import textwrap

        from agentd.run.standalone import explain_network

        click.echo("\n" + textwrap.fill(explain_network(network), 100, subsequent_indent="  "))
        if not embedded:
            from agentd.daemon import client as daemon_client

            if daemon_client.available():
                click.echo(
                    "\nNote: the agentd daemon is running, so `agentd run` without "
                    "--embedded is supervised by it, and daemon runs use no Landlock "
                    "(a policy reload may allow more than a ruleset applied at start could)."
                )
        return
    if not command:
        raise click.UsageError("missing the command to run (agentd run [OPTIONS] -- CMD [ARGS]...)")
    if not embedded:
        from agentd.daemon import (
            client as daemon_client,
        )  # the daemon's socket is there: it supervises

        if daemon_client.available():
            source = click.get_current_context().get_parameter_source
            if any(
                source(name) == click.core.ParameterSource.COMMANDLINE
                for name in ("network", "dns_upstream")
            ):
                from .run_fast import DAEMON_NETWORK_NOTE

                click.echo(DAEMON_NETWORK_NOTE, err=True)
            sys.exit(
                daemon_client.run(
                    list(command),
                    policy=policy_name,
                    workspace=workspace,
                    agent_id=agent_id,
                    mode=mode,
                    audit_log=audit_log,
                    seccomp_profile=seccomp_profile,
                )
            )
    from agentd.run.standalone import run_agent

    run_agent(
        policy_name,
        workspace,
        agent_id,
        audit_log,
        mode,
        seccomp_profile,
        command,
        network=network,
        dns_upstream=dns_upstream,
    )


def _short_command(argv: list[str], width: int = 60) -> str:
    text = " ".join(argv).replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 3] + "..."


@click.command()
def ps() -> None:
    """List the supervised runs of this user."""
    from agentd.run import registry as control

    runs = control.list_runs()
    if not runs:
        click.echo("no agentd runs")
        return
    click.echo(f"{'RUN_ID':18} {'SUPERVISOR':>10} {'AGENT':>7} {'STATE':8} {'POLICY':12} COMMAND")
    for info in runs:
        state = info.get("state", "?")
        held = info.get("held") or {}
        click.echo(
            f"{info['run_id']:18} {info.get('supervisor_pid', ''):>10} "
            f"{info.get('agent_pid') or '':>7} {state:8} {str(info.get('policy', '')):12} "
            f"{_short_command(info.get('command', []))}"
        )
        if state == "held" and held:
            batch = " (a batch: the answer covers the rest of it)" if held.get("batch") else ""
            click.echo(
                f"{'':18} held: pid {held.get('pid')} wants {held.get('what')}: "
                f"{held.get('reason')}{batch}"
            )


def decision_options(command):
    """``--allow`` / ``--deny`` of ``agentd resume`` (here and in the daemon's resume)."""
    command = click.option(
        "--deny",
        "decision",
        flag_value="deny",
        help="Refuse it (EACCES); the agent goes on. For a batch: refuse the rest of it "
        "without asking again.",
    )(command)
    return click.option(
        "--allow",
        "decision",
        flag_value="allow",
        help="Let the held syscall run once; when the run waits for confirmation of a batch "
        "(strict's deletes), confirm the whole batch.",
    )(command)


@click.command()
@click.argument("run_id")
@decision_options
def resume(run_id: str, decision: str | None) -> None:
    """Resume a run held by a SIGSTOP verdict, allowing or denying the held action."""
    from agentd.run import registry as control

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
    from agentd.run import registry as control

    try:
        pid = control.kill_run(run_id)
    except (LookupError, OSError) as exc:
        click.echo(f"agentd kill: {exc}", err=True)
        sys.exit(1)
    click.echo(f"run {run_id}: supervisor {pid} told to kill the agent")
