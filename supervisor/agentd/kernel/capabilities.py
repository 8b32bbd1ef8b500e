"""Capabilities an agent must never carry: dropped from its bounding set before exec.

Owns one child step. The network plane needs CAP_SYS_ADMIN (setns into the agent's namespace)
and CAP_NET_ADMIN (the veth, the nftables table) in the supervisor, and the agent's child holds
them until it execs. A root agent would keep them across exec (root's permitted set after exec
is its bounding set): with CAP_NET_ADMIN it could flush the nftables table of its own
namespace, or, without the plane, change the host's addresses and routes over netlink (which
agentd does not judge as a network connection). Every root agent therefore loses them, plane or
not. Five more reach outside the workspace by other doors and are dropped with them
(``AGENT_DROPPED_CAPS``, docs/security.md, issue 12): CAP_MKNOD (a device node is a second name
for a device), CAP_SYS_CHROOT (after a chroot the agent's absolute paths name other files than
the ones the policy was asked about), CAP_SYS_RESOURCE (it would raise RLIMIT_CORE's hard limit
back, grow a file system, exceed the pipe and queue limits), CAP_SYS_NICE (real-time priority
starves the supervisor and the rest of the host; renicing other users' processes) and
CAP_SYS_TTY_CONFIG (keyboard maps and virtual consoles of the host's console through a
descriptor opened for reading). ``BoundingDrop`` removes them from the child's bounding set
(``PR_CAPBSET_DROP``, which needs CAP_SETPCAP, dropped last), so no exec can give them back. An
agent of another user loses every capability anyway when its child switches uid; the drop costs
a few prctl calls.
A failure is an ``OSError``: the child reports it and exits (fail closed).
"""

from __future__ import annotations

import os

from agentd.kernel import libc

__all__ = [
    "AGENT_DROPPED_CAPS",
    "BoundingDrop",
    "CAP_MKNOD",
    "CAP_NET_ADMIN",
    "CAP_SETPCAP",
    "CAP_SYS_ADMIN",
    "CAP_SYS_CHROOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TTY_CONFIG",
    "PLANE_CAPS",
]

PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
CAP_SETPCAP = 8
CAP_NET_ADMIN = 12
CAP_SYS_CHROOT = 18
CAP_SYS_ADMIN = 21
CAP_SYS_NICE = 23
CAP_SYS_RESOURCE = 24
CAP_SYS_TTY_CONFIG = 26
CAP_MKNOD = 27
# What the network plane needs in the supervisor and no agent may keep; CAP_SETPCAP last.
PLANE_CAPS = (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_SETPCAP)
# What every root agent loses: the plane's, and those that reach outside by other doors.
AGENT_DROPPED_CAPS = (
    CAP_NET_ADMIN,
    CAP_SYS_ADMIN,
    CAP_MKNOD,
    CAP_SYS_CHROOT,
    CAP_SYS_RESOURCE,
    CAP_SYS_NICE,
    CAP_SYS_TTY_CONFIG,
    CAP_SETPCAP,
)


class BoundingDrop:
    """A child step (``run.supervise.spawn_traced``): drop ``caps`` from the bounding set, in order.
    A capability already outside the bounding set is skipped. Prepared in the parent (libc)."""

    def __init__(self, caps: tuple[int, ...] = AGENT_DROPPED_CAPS):
        self.caps = caps

    def __call__(self) -> None:
        for cap in self.caps:
            present = libc.prctl(PR_CAPBSET_READ, cap)
            if present == 0:
                continue
            if present < 0 or libc.prctl(PR_CAPBSET_DROP, cap) != 0:
                code = libc.last_errno()
                raise OSError(
                    code,
                    f"cannot drop capability {cap} from the bounding set: "
                    f"{os.strerror(code)} (the supervisor needs CAP_SETPCAP)",
                )
