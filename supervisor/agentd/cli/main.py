"""The ``agentd`` command line.

This module only assembles the click groups; each command family lives in its own module of
``agentd.cli`` and is imported lazily, so that ``agentd run`` does not pay for importing the code of
``agentd policy`` or ``agentd audit``.
"""

from __future__ import annotations

import importlib

import click

# command name -> (module, attribute). Imported only when the command is invoked or listed.
_LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "policy": ("agentd.cli.policy", "policy"),
    "audit": ("agentd.cli.audit", "audit"),
    "run": ("agentd.cli.run", "run"),
    "ps": ("agentd.cli.daemon", "ps"),  # daemon runs first, then cli/run.py's
    "resume": ("agentd.cli.daemon", "resume"),
    "kill": ("agentd.cli.daemon", "kill"),
    "daemon": ("agentd.cli.daemon", "daemon"),
    "reload": ("agentd.cli.daemon", "reload"),
    "stop": ("agentd.cli.daemon", "stop"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in _LAZY_COMMANDS:
            module_name, attr = _LAZY_COMMANDS[name]
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="agentd")
def main() -> None:
    """agentd: put an AI agent under a policy it cannot talk its way out of.

    \b
    agentd run [OPTIONS] -- CMD [ARGS...]       run an agent under a policy
    agentd ps | resume | kill                   act on running agents
    agentd policy validate|show|explain|test   work with policies
    agentd audit show|verify                    read and verify the FlightRecorder log
    """


if __name__ == "__main__":  # pragma: no cover
    main()
