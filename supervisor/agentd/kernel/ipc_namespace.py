"""The agent's own IPC namespace: System V IPC and POSIX message queues the host cannot share.

Owns one child step. System V shared memory, semaphores and message queues, and POSIX message
queues, are named by keys and ids that are global to an IPC namespace (``/proc/sysvipc`` lists
them), and no syscall of theirs names a path a policy could judge: an agent in the host's IPC
namespace could attach to another program's shared memory, post to its queues, or remove them
(``shmctl(IPC_RMID)``), and a root agent passes every permission check (CAP_IPC_OWNER). In a
namespace of its own the agent's tree sees and makes only its own objects, which vanish with
it. ``PrivateIpc`` runs in the agent's child after the seize and after the network plane's
step (the user namespace plane's child holds CAP_SYS_ADMIN in its own user namespace), before
the bounding set is dropped and the filter goes in. It needs CAP_SYS_ADMIN: a root agent, or an
agent in the plane's user namespace. An ordinary user's agent without the plane (``--network
off``, no user namespaces) stays in the host's namespace; there the filter refuses the syscalls
that name IPC objects by key, id or name (``SHARED_NAMESPACE_SYSCALLS``, EPERM), as
``run/supervise.filter_spec(shared_ipc=True)`` adds them.
"""

from __future__ import annotations

import os

from . import libc
from .syscall_numbers import SYSCALL_NUMBERS

__all__ = ["CLONE_NEWIPC", "PrivateIpc", "SHARED_NAMESPACE_SYSCALLS"]

CLONE_NEWIPC = 0x08000000
_SYS_UNSHARE = SYSCALL_NUMBERS["unshare"]

# What reaches another program's IPC objects in a shared namespace: keys and ids are global
# (an id need not come from the agent's own *get), names of POSIX queues too. The calls on a
# queue descriptor (mq_timedsend, ...) and shmdt act on what the agent already holds.
SHARED_NAMESPACE_SYSCALLS = (
    "shmget", "shmat", "shmctl",
    "semget", "semop", "semtimedop", "semctl",
    "msgget", "msgsnd", "msgrcv", "msgctl",
    "mq_open", "mq_unlink",
)  # fmt: skip


class PrivateIpc:
    """A child step (``run.supervise.spawn_traced``): ``unshare(CLONE_NEWIPC)``; OSError naming
    the step when the kernel refuses (the child then exits 126: fail closed)."""

    def __call__(self) -> None:
        if libc.syscall(_SYS_UNSHARE, CLONE_NEWIPC) != 0:
            code = libc.last_errno()
            raise OSError(code, f"ipc: unshare(CLONE_NEWIPC): {os.strerror(code)}")
