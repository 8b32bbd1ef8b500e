"""The ``agentd`` console entry: ``agentd run`` without click on its common path.

Owns only the dispatch. ``agentd run`` with a well-formed command line (see
``run_fast.parse_run_line``) goes straight to the daemon's client (``agentd.daemon.client.run``)
when a daemon runs, else to ``agentd.run.standalone.run_agent``: importing click and building the
command groups costs about 15 ms, a fifth of a run through the daemon, and agents start many short
commands. Every other command line,
``--help`` and every malformed one included, goes to the click group ``agentd.cli.main.main``,
which stays the reference for parsing and messages.
"""

from __future__ import annotations

import os
import sys

__all__ = ["main"]


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["run"]:
        from .run_fast import parse_run_line

        parsed = parse_run_line(args[1:])
        if parsed is not None:
            params, given = parsed
            embedded = params.pop("embedded")
            params.pop("explain_sandbox")  # always False here: that option goes to click
            from agentd.daemon import client

            if embedded or not client.available():
                from agentd.run.standalone import run_agent

                run_agent(**params)  # exits with the agent's status
                return
            code = _through_daemon(client, params, given)
            # The agent has exited and the daemon has written everything: skip the
            # interpreter's teardown (~4 ms of every run through the daemon).
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(code)
    from .main import main as click_main

    click_main()


def _through_daemon(client, params: dict, given: frozenset[str]) -> int:
    """What ``agentd.cli.run.run`` does when a daemon runs, without click; ``given``: the options
    the command line named."""
    from .run_fast import DAEMON_NETWORK_NOTE

    if given & {"--network", "--dns-upstream"}:
        os.write(2, DAEMON_NETWORK_NOTE.encode() + b"\n")
    return client.run(
        list(params["command"]),
        policy=params["policy_name"],
        workspace=params["workspace"],
        agent_id=params["agent_id"],
        mode=params["mode"],
        audit_log=params["audit_log"],
        seccomp_profile=params["seccomp_profile"],
    )


if __name__ == "__main__":  # pragma: no cover
    main()
