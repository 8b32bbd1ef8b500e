"""``agentd run``'s command line read without click: the fast path of the console entry.

Owns ``parse_run_args``: it understands the well-formed ``agentd run`` command lines and gives
the parameters exactly as the click command (``agentd.cli.run``) would; anything else
(``--help``, an unknown or incomplete option, a workspace that is not a directory) returns None
and the caller hands the line to click, whose messages are the reference. click costs ~15 ms to
import, and agents start many short commands: this module imports nothing but ``os``
(tests/test_run_entry.py checks that it reads every line as click does).
"""

from __future__ import annotations

import os

__all__ = ["parse_run_args", "parse_run_line", "NETWORK_MODES", "DAEMON_NETWORK_NOTE"]

# option -> (parameter name, takes a value)
_OPTIONS = {
    "--policy": ("policy_name", True),
    "--workspace": ("workspace", True),
    "--agent-id": ("agent_id", True),
    "--audit-log": ("audit_log", True),
    "--mode": ("mode", True),
    "--seccomp-profile": ("seccomp_profile", True),
    "--embedded": ("embedded", False),
    "--network": ("network", True),
    "--dns-upstream": ("dns_upstream", True),
}
NETWORK_MODES = ("auto", "plane", "off")

# Said (on stderr) when a run goes to the daemon with --network or --dns-upstream on its line
DAEMON_NETWORK_NOTE = (
    "agentd run: note: the agentd daemon supervises this run, and its configuration decides "
    "the network plane (network:, dns_upstream: in /etc/agentd/agentd.yaml); --network and "
    "--dns-upstream apply to --embedded runs"
)


def parse_run_args(args: list[str]) -> dict | None:
    """The parameters of ``agentd run ARGS`` as click would give them; None lets click parse."""
    parsed = parse_run_line(args)
    return parsed[0] if parsed is not None else None


def parse_run_line(args: list[str]) -> tuple[dict, frozenset[str]] | None:
    """``parse_run_args``, and the options the line names itself (``--network``, ...): what
    click calls their parameter source COMMANDLINE. None lets click parse."""
    params: dict = {
        "policy_name": "strict",
        "workspace": None,
        "agent_id": None,
        "audit_log": None,
        "mode": "enforce",
        "seccomp_profile": None,
        "embedded": False,
        "explain_sandbox": False,  # always: --explain-sandbox itself goes to click
        "network": os.environ.get("AGENTD_NETWORK") or "auto",
        "dns_upstream": None,
    }
    given = set()
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break  # the command (options end at the first argument, like click here)
        name, has_value, value = arg.partition("=")
        spec = _OPTIONS.get(name)
        if spec is None:
            return None  # --help, -h, a typo: click says what is wrong
        param, takes_value = spec
        given.add(name)
        if not takes_value:
            if has_value:
                return None
            params[param] = True
            i += 1
            continue
        if not has_value:
            if i + 1 >= len(args):
                return None
            value = args[i + 1]
            i += 1
        params[param] = value
        i += 1
    command = tuple(args[i:])
    if (
        not command
        or params["mode"] not in ("enforce", "audit")
        or params["network"] not in NETWORK_MODES
    ):
        return None
    if params["workspace"] is not None and not os.path.isdir(params["workspace"]):
        return None
    profile = params["seccomp_profile"]
    if profile is not None and (not os.path.exists(profile) or os.path.isdir(profile)):
        return None
    params["command"] = command
    return params, frozenset(given)
