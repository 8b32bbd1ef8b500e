"""The daemon's configuration: ``/etc/agentd/agentd.yaml`` as a validated pydantic model.

Owns what an administrator can set for ``agentd daemon`` and nothing else: where policies,
the control socket, the runs directory and the audit log live, who may launch agents under
which policies (grants), and how the audit log is written. Unknown keys are rejected
(``extra="forbid"``) so a misspelt setting fails loudly instead of silently meaning its default.
Every field carries its default and a description; ``agentd daemon --print-config`` shows the
effective values. A missing file means "all defaults" (only root may launch agents then).
"""

from __future__ import annotations

import grp
import pwd
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AuditSettings",
    "Grant",
    "DaemonConfig",
    "ConfigError",
    "load_config",
]

DEFAULT_CONFIG_PATH = "/etc/agentd/agentd.yaml"


class ConfigError(ValueError):
    """The configuration file is unreadable or invalid; the message names the file and keys."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuditSettings(_Strict):
    """Where and how the FlightRecorder writes every decision of every agent."""

    path: str = Field(
        "/var/log/agentd/flight.jsonl",
        description="The hash-chained audit log (one writer: the daemon).",
    )
    fsync: Literal["always", "interval", "never"] = Field(
        "interval",
        description="always: fsync every record; interval: at most every "
        "fsync_interval seconds; never: leave it to the OS (head written on close).",
    )
    fsync_interval: float = Field(1.0, gt=0, description="Seconds between fsyncs for 'interval'.")
    rotate_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="Rotate the log when it grows past this size "
        "(0: never). The new file links to the old one.",
    )


class Grant(_Strict):
    """Who (users and/or groups) may launch agents under which policies."""

    users: list[str] = Field(default_factory=list, description="User names or numeric uids.")
    groups: list[str] = Field(
        default_factory=list,
        description="Group names or gids; a member (primary or "
        "supplementary) of any of them is granted.",
    )
    policies: list[str] = Field(
        default_factory=list,
        description="Policy names (files in policy_dir or built-ins); '*' grants every policy.",
    )
    audit_mode: bool = Field(
        False,
        description="May these callers use --mode audit (which "
        "blocks nothing)? Off by default: it would lift the policy.",
    )

    def covers(self, uid: int, gids: set[int]) -> bool:
        for user in self.users:
            if user.isdigit() and int(user) == uid:
                return True
            try:
                if pwd.getpwnam(user).pw_uid == uid:
                    return True
            except KeyError:
                pass
        for group in self.groups:
            try:
                gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
            except KeyError:
                continue
            if gid in gids:
                return True
        return False


class DaemonConfig(_Strict):
    """Everything ``agentd daemon`` reads from its configuration file."""

    policy_dir: str = Field(
        "/etc/agentd/policies",
        description="Policies by name: <policy_dir>/<name>.yaml, searched "
        "before the built-ins (strict, permissive, read_only).",
    )
    socket_path: str = Field(
        "/run/agentd/agentd.sock",
        description="The control socket (mode 0666; callers are identified by SO_PEERCRED).",
    )
    runs_dir: str = Field(
        "/run/agentd/runs", description="Per-run registration files and hold sockets (root only)."
    )
    cgroup_base: str | None = Field(
        None,
        description="cgroup v2 directory under which each agent gets its own cgroup. "
        "None: the daemon's own (systemd-delegated) cgroup, found from /proc/self/cgroup.",
    )
    require_cgroups: bool = Field(
        True,
        description="Refuse to start without a writable cgroup "
        "v2 subtree (freeze/kill of whole agents need it).",
    )
    seccomp_profile: str | None = Field(
        None,
        description="OCI seccomp profile for every agent (None: seccomp_profiles/default.json).",
    )
    grants: list[Grant] = Field(
        default_factory=list,
        description="Who may launch agents under which policies. Root "
        "may always launch any policy; nobody else unless granted.",
    )
    audit: AuditSettings = Field(default_factory=AuditSettings)
    max_runs: int = Field(256, ge=1, description="Concurrent agents; more are refused.")
    network: Literal["plane", "off"] = Field(
        "plane",
        description="plane: each agent gets its own network namespace whose only ways "
        "out are its supervisor's DNS stub and HTTP proxy (names and URLs are judged; "
        "docs/network.md); off: connect() is judged by address only.",
    )
    dns_upstream: list[str] = Field(
        default_factory=list,
        description="Resolvers (IP or IP:PORT) the DNS stubs forward to "
        "(empty: the nameservers of /etc/resolv.conf).",
    )

    def may_launch(self, uid: int, gids: set[int], policy: str, mode: str) -> str | None:
        """None when allowed, else the reason for the refusal."""
        if uid == 0:
            return None
        matching = [
            g
            for g in self.grants
            if g.covers(uid, gids) and ("*" in g.policies or policy in g.policies)
        ]
        if not matching:
            return (
                f"uid {uid} is not granted policy {policy!r} (grants in the daemon's "
                "configuration; ask an administrator)"
            )
        if mode == "audit" and not any(g.audit_mode for g in matching):
            return f"uid {uid} may not use --mode audit under policy {policy!r}"
        return None


def load_config(path: str | None = None) -> DaemonConfig:
    """The configuration at ``path`` (default ``/etc/agentd/agentd.yaml``); all defaults when
    that file does not exist and no path was given explicitly."""
    import yaml

    explicit = path is not None
    path = path or DEFAULT_CONFIG_PATH
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path}: no such configuration file") from None
        return DaemonConfig()
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, not {type(data).__name__}")
    try:
        return DaemonConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "(top level)"
            lines.append(f"{path}: {where}: {error['msg']}")
        raise ConfigError("\n".join(lines)) from None
