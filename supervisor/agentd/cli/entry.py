"""The ``agentd`` console entry: ``agentd run`` without click on its common path.

Owns only the dispatch. ``agentd run`` with a well-formed command line (see
``run_fast.parse_run_args``) and no daemon to hand over to goes straight to
``agentd.run.standalone.run_agent``: importing click and building the command groups costs more
than a
quarter of the start-up budget, and agents start many short commands. Every other command line,
``--help`` and every malformed one included, goes to the click group ``agentd.cli.main.main``,
which stays the reference for parsing and messages.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["run"]:
        from .run_fast import parse_run_args

        params = parse_run_args(args[1:])
        if params is not None:
            embedded = params.pop("embedded")
            params.pop("explain_sandbox")  # always False here: that option goes to click
            from agentd.daemon.client import available

            if embedded or not available():
                from agentd.run.standalone import run_agent

                run_agent(**params)  # exits with the agent's status
                return
    from .main import main as click_main

    click_main()


if __name__ == "__main__":  # pragma: no cover
    main()
