"""The hand-written half of the syscall ledger: why each syscall the filter lets run is harmless.

Owns the one-line reasons of ``docs/syscalls.md``, and nothing that the filter itself says: which
syscalls are traced, refused or argument-filtered is computed from the run's ``FilterSpec`` by
``agentd.run.syscall_ledger``. A reason exists for every syscall the kernel may run without a
tracer stop: the plain-allowed ones, and the remainder of an argument-filtered one whose base is
ALLOW. Each carries a status:

- ``contained``: cannot reach outside the agent's tree and the files its judged opens gave it;
- ``reads``: may read state outside the agent (metadata, other processes' settings), changes
  nothing;
- ``bounded``: may hold up processes outside the agent (a lock), no longer than it lives;
- ``OPEN``: may change something outside the agent; not closed yet (issue 12);
- ``commands``: depends on the command: ``PRCTL_COMMANDS``, ``FCNTL_COMMANDS``, or for ioctl
  ``agentd.kernel.ioctl_ledger``.

``PRCTL_COMMANDS`` and ``FCNTL_COMMANDS`` do the same for every ``PR_*`` / ``F_*`` command the
headers know; ``PRCTL_ARGUMENTS`` / ``FCNTL_ARGUMENTS`` name the header constants that are
arguments of a command rather than commands (by prefix), so that every name is accounted for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "CONTAINED",
    "READS",
    "BOUNDED",
    "OPEN",
    "COMMANDS",
    "STATUSES",
    "Reason",
    "ALLOWED",
    "PRCTL_COMMANDS",
    "PRCTL_ARGUMENTS",
    "FCNTL_COMMANDS",
    "FCNTL_ARGUMENTS",
]

CONTAINED = "contained"
READS = "reads"
BOUNDED = "bounded"
OPEN = "OPEN"
COMMANDS = "commands"
STATUSES = (CONTAINED, READS, BOUNDED, OPEN, COMMANDS)


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a syscall (or command) the filter lets run cannot reach outside, or that it can."""

    status: str
    text: str

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"reason status {self.status!r} is not one of {STATUSES}")


def _each(status: str, text: str, *names: str) -> dict[str, Reason]:
    """One reason shared by several names (a family the kernel treats alike)."""
    return {name: Reason(status, text) for name in names}


_HELD_FD = "data through a descriptor the agent holds: its open, connect or accept was judged"
_OWN_MEMORY = "the agent's own address space"
_OWN_SIGNALS = "the caller's own signal state, timers and waits"
_SELF_READ = "reads the caller's own identity or state"
_METADATA = (
    "reads metadata of a path the agent names (file_read rules judge content, not metadata): "
    "existence, size, mode, link targets may leak; nothing changes"
)
_NOT_IMPLEMENTED = "not implemented on x86_64 (sys_ni_syscall): the kernel answers ENOSYS"
_OWN_CREDS = (
    "changes the caller's own credentials (a root agent may become any user; its syscalls stay "
    "traced and kill stays tree-checked)"
)
_SYSV = (
    "names IPC objects by key, id or name, which are global to an IPC namespace: the agent has "
    "one of its own (kernel/ipc_namespace.py), and where it cannot (an ordinary user's run "
    "without the plane) the filter refuses this call (EPERM)"
)
_OTHER_PID_READ = "aimed at any pid, read-only: another process's scheduling or identity"
_PIDFD_ONLY = (
    "takes a pidfd: pidfd_open is traced and refuses targets outside the tree, clone's "
    "CLONE_PIDFD names only children, pidfd_getfd is refused"
)

# The table: one family a group, names filled to the line: laid out by hand.
# fmt: off
ALLOWED: Mapping[str, Reason] = MappingProxyType(
    {
        # --- data through descriptors the agent holds ---------------------------------------------
        **_each(
            CONTAINED,
            _HELD_FD,
            "read", "write", "pread64", "pwrite64", "readv", "writev", "preadv", "pwritev",
            "preadv2", "pwritev2", "lseek", "sendfile", "splice", "tee", "copy_file_range",
            "recvfrom", "recvmsg", "recvmmsg", "getdents", "getdents64",
        ),
        "vmsplice": Reason(CONTAINED, "moves the agent's own pages into or out of a pipe it holds"),
        "close": Reason(CONTAINED, "closes a descriptor of the agent"),
        "close_range": Reason(CONTAINED, "closes descriptors of the agent"),
        **_each(CONTAINED, "a new number for a descriptor the agent holds", "dup", "dup2", "dup3"),
        **_each(
            CONTAINED,
            "changes a file through a descriptor the agent holds: opening it for writing was "
            "judged (file_write)",
            "ftruncate", "fallocate",
        ),
        **_each(
            CONTAINED,
            "writes back what the agent already wrote to a file it holds",
            "fsync", "fdatasync", "sync_file_range",
        ),
        "sync": Reason(CONTAINED, "writes back dirty pages host-wide: I/O load, no change"),
        "syncfs": Reason(CONTAINED, "writes back one filesystem's dirty pages: I/O load only"),
        **_each(
            CONTAINED,
            "advice about a descriptor the agent holds (page cache only)",
            "fadvise64", "readahead",
        ),
        "fstat": Reason(CONTAINED, "metadata of a descriptor the agent holds"),
        "fstatfs": Reason(CONTAINED, "filesystem statistics of a descriptor the agent holds"),
        "fgetxattr": Reason(CONTAINED, "reads an attribute of a descriptor the agent holds"),
        "flistxattr": Reason(CONTAINED, "lists the attributes of a descriptor the agent holds"),
        "cachestat": Reason(READS, "page-cache residency of a file the agent holds (side channel)"),
        **_each(
            CONTAINED,
            "waits on descriptors the agent holds",
            "poll", "select", "pselect6", "ppoll", "epoll_create", "epoll_create1", "epoll_ctl",
            "epoll_wait", "epoll_pwait", "epoll_pwait2",
        ),
        **_each(
            CONTAINED,
            "a new pair of descriptors connected only to each other",
            "pipe", "pipe2", "socketpair",
        ),
        **_each(
            CONTAINED,
            "asynchronous reads and writes on descriptors the agent holds (unlike io_uring, "
            "no opens or connects)",
            "io_setup", "io_destroy", "io_getevents", "io_submit", "io_cancel", "io_pgetevents",
        ),
        # --- sockets the agent holds --------------------------------------------------------------
        **_each(
            CONTAINED,
            "a socket the agent holds: its address came from bind (traced for unix paths) and, "
            "with the network plane, lives in the agent's own network namespace; inbound only",
            "listen", "accept", "accept4",
        ),
        **_each(
            CONTAINED,
            "addresses of a socket the agent holds",
            "getsockname", "getpeername",
        ),
        **_each(
            CONTAINED,
            "options of a socket the agent holds (options that reach the host's network, such "
            "as SO_MARK, need CAP_NET_ADMIN, dropped from root agents)",
            "setsockopt", "getsockopt",
        ),
        "shutdown": Reason(CONTAINED, "ends a connection of a socket the agent holds"),
        # --- metadata of paths: not judged by file_read -------------------------------------------
        **_each(
            READS,
            _METADATA,
            "stat", "lstat", "newfstatat", "statx", "access", "faccessat", "faccessat2",
            "readlink", "readlinkat", "getxattr", "lgetxattr", "getxattrat", "listxattr",
            "llistxattr", "listxattrat", "statfs", "file_getattr",
        ),
        "ustat": Reason(READS, "statistics of a mounted filesystem (deprecated)"),
        "sysfs": Reason(READS, "the names of the filesystem types the kernel knows"),
        "statmount": Reason(READS, "a mount's attributes (the mount table is readable anyway)"),
        "listmount": Reason(READS, "the ids of the mounts below a mount"),
        **_each(
            READS,
            "watches a path the agent names (not judged by file_read): reveals names and events "
            "in it, changes nothing",
            "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
        ),
        **_each(
            READS,
            "filesystem events; permission events and mount or filesystem marks need "
            "CAP_SYS_ADMIN (dropped from root agents), so it only observes inodes",
            "fanotify_init", "fanotify_mark",
        ),
        # --- memory -------------------------------------------------------------------------------
        **_each(
            CONTAINED,
            _OWN_MEMORY,
            "mmap", "mprotect", "munmap", "brk", "mremap", "msync", "mincore", "madvise", "mlock",
            "munlock", "mlockall", "munlockall", "mlock2", "remap_file_pages", "pkey_mprotect",
            "pkey_alloc", "pkey_free", "mseal", "memfd_secret",
        ),
        "map_shadow_stack": Reason(CONTAINED, "a shadow stack in the agent's own address space"),
        "memfd_create": Reason(CONTAINED, "an anonymous file only the agent holds"),
        "membarrier": Reason(
            CONTAINED, "memory barriers for the agent's threads (the global one only costs time)"
        ),
        **_each(
            CONTAINED,
            "the NUMA memory policy of the agent's own memory or threads",
            "mbind", "set_mempolicy", "get_mempolicy", "set_mempolicy_home_node",
        ),
        "process_madvise": Reason(CONTAINED, _PIDFD_ONLY),
        "process_mrelease": Reason(CONTAINED, _PIDFD_ONLY),
        # --- signals, timers, waiting -------------------------------------------------------------
        **_each(
            CONTAINED,
            _OWN_SIGNALS,
            "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigtimedwait",
            "rt_sigsuspend", "sigaltstack", "pause", "alarm", "getitimer", "setitimer",
            "nanosleep", "clock_nanosleep", "timerfd_create", "timerfd_settime",
            "timerfd_gettime", "signalfd", "signalfd4", "eventfd", "eventfd2", "restart_syscall",
            "timer_gettime", "timer_getoverrun", "timer_delete", "timer_settime",
        ),
        "timer_create": Reason(
            CONTAINED,
            "a timer whose signal goes to the caller's own thread group (the kernel checks "
            "SIGEV_THREAD_ID)",
        ),
        **_each(
            CONTAINED,
            "waits and wakes on memory the agent maps",
            "futex", "futex_waitv", "futex_wake", "futex_wait", "futex_requeue",
        ),
        **_each(
            CONTAINED, "waits only for the caller's own children", "wait4", "waitid"
        ),
        **_each(CONTAINED, "ends the caller", "exit", "exit_group"),
        **_each(
            CONTAINED,
            "a child the tracer follows (PTRACE_O_TRACEFORK / TRACEVFORK)",
            "fork", "vfork",
        ),
        **_each(
            CONTAINED,
            "the calling thread's own bookkeeping",
            "set_tid_address", "set_robust_list", "rseq", "arch_prctl", "sched_yield",
        ),
        "get_robust_list": Reason(
            READS, "aimed at any pid (with ptrace read access): another thread's robust-list head"
        ),
        # --- identity and credentials -------------------------------------------------------------
        **_each(
            CONTAINED,
            _SELF_READ,
            "getpid", "getppid", "gettid", "getuid", "getgid", "geteuid", "getegid",
            "getgroups", "getresuid", "getresgid", "getpgrp", "getrlimit", "getrusage", "times",
            "getcpu", "umask",
        ),
        **_each(
            READS,
            "aimed at any pid, read-only: another process's group, session or capabilities",
            "getpgid", "getsid", "capget",
        ),
        **_each(
            CONTAINED,
            _OWN_CREDS,
            "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid",
            "setfsgid", "setgroups", "capset",
        ),
        "setpgid": Reason(
            CONTAINED, "moves the caller or its own child into a process group of its session"
        ),
        "setsid": Reason(CONTAINED, "a new session for the caller"),
        **_each(CONTAINED, "the caller's own working directory", "chdir", "fchdir", "getcwd"),
        "chroot": Reason(
            CONTAINED,
            "needs CAP_SYS_CHROOT, which root agents lose (kernel/capabilities.py) and no other "
            "agent gains (no_new_privs, no user namespace of its own), so EPERM",
        ),
        "setrlimit": Reason(
            CONTAINED,
            "the caller's own limits; RLIMIT_CORE's hard limit is 0 for the tree and root "
            "agents lose CAP_SYS_RESOURCE, so no core limit comes back",
        ),
        # --- scheduling and priorities ------------------------------------------------------------
        **_each(
            READS,
            _OTHER_PID_READ,
            "getpriority", "sched_getparam", "sched_getscheduler", "sched_getaffinity",
            "sched_getattr", "sched_rr_get_interval", "ioprio_get",
        ),
        "kcmp": Reason(
            READS,
            "aimed at two pids (with ptrace read access): whether they share a kernel object; "
            "changes nothing",
        ),
        **_each(
            CONTAINED,
            "constants of the scheduler",
            "sched_get_priority_max", "sched_get_priority_min",
        ),
        # --- the host, read only ------------------------------------------------------------------
        **_each(
            CONTAINED,
            "reads the clock or host facts every process may read",
            "uname", "sysinfo", "gettimeofday", "time", "clock_gettime", "clock_getres",
            "getrandom",
        ),
        **_each(
            CONTAINED,
            "the host's name (the UTS namespace is the host's): needs CAP_SYS_ADMIN, which root "
            "agents lose (kernel/capabilities.py), so EPERM",
            "sethostname", "setdomainname",
        ),
        # --- IPC: the agent's own namespace ------------------------------------------------------
        **_each(
            CONTAINED,
            _SYSV,
            "shmget", "shmat", "shmctl", "semget", "semop", "semtimedop", "semctl", "msgget",
            "msgsnd", "msgrcv", "msgctl",
        ),
        "shmdt": Reason(CONTAINED, "detaches a segment from the agent's own address space"),
        **_each(CONTAINED, _SYSV, "mq_open", "mq_unlink"),
        **_each(
            CONTAINED,
            "on a queue descriptor the agent holds (the door is mq_open)",
            "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
        ),
        # --- self-restriction ---------------------------------------------------------------------
        **_each(
            CONTAINED,
            "only restricts the caller further",
            "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
        ),
        **_each(
            CONTAINED,
            "the caller's own LSM attributes (the LSM's policy decides a change)",
            "lsm_get_self_attr", "lsm_set_self_attr", "lsm_list_modules",
        ),
        # --- commands: see the command ledgers ----------------------------------------------------
        "prctl": Reason(COMMANDS, "the prctl command ledger below"),
        "fcntl": Reason(COMMANDS, "the fcntl command ledger below"),
        "flock": Reason(
            BOUNDED,
            "locks a file the agent holds, even one opened read-only: cooperating processes "
            "outside wait until the agent lets go or ends",
        ),
        # --- the remainder of argument-filtered syscalls with an ALLOW base -----------------------
        "clone": Reason(
            CONTAINED,
            "without CLONE_UNTRACED or a namespace flag: a child or thread the tracer follows",
        ),
        "unshare": Reason(
            CONTAINED, "without a namespace flag: unshares the caller's own files, fs or semundo"
        ),
        "personality": Reason(CONTAINED, "PER_LINUX or the query: nothing changes"),
        "seccomp": Reason(
            CONTAINED,
            "a filter of the caller's own: the kernel keeps the most restrictive action",
        ),
        "socket": Reason(
            CONTAINED,
            "other families and types: their connect, sendto and sendmsg are traced",
        ),
        "ioctl": Reason(
            COMMANDS,
            "request codes: kernel/ioctl_ledger.py says for each whether it is traced, refused "
            "or runs untraced, and why",
        ),
        # --- entries with no implementation -------------------------------------------------------
        **_each(
            CONTAINED,
            _NOT_IMPLEMENTED,
            "_sysctl", "create_module", "get_kernel_syms", "query_module", "getpmsg", "putpmsg",
            "afs_syscall", "tuxcall", "security", "vserver", "epoll_ctl_old", "epoll_wait_old",
            "set_thread_area", "get_thread_area",
        ),
        **_each(
            CONTAINED,
            "valid only from the kernel's uprobe trampoline; elsewhere the caller gets SIGILL",
            "uretprobe", "uprobe",
        ),
    }
)
# fmt: on


# Every PR_* command of <linux/prctl.h>; one command a line: laid out by hand.
PRCTL_COMMANDS: Mapping[str, Reason] = MappingProxyType(
    {
        "PR_SET_PDEATHSIG": Reason(CONTAINED, "the signal the caller gets when its parent dies"),
        "PR_GET_PDEATHSIG": Reason(CONTAINED, _SELF_READ),
        "PR_GET_DUMPABLE": Reason(CONTAINED, _SELF_READ),
        "PR_SET_DUMPABLE": Reason(
            CONTAINED,
            "dumpable or not, RLIMIT_CORE is 0 (soft and hard) for the tree and root agents lose "
            "CAP_SYS_RESOURCE: no core file lands in the cwd",
        ),
        "PR_GET_UNALIGN": Reason(CONTAINED, "not on x86_64: EINVAL"),
        "PR_SET_UNALIGN": Reason(CONTAINED, "not on x86_64: EINVAL"),
        "PR_GET_KEEPCAPS": Reason(CONTAINED, _SELF_READ),
        "PR_SET_KEEPCAPS": Reason(CONTAINED, "the caller's own capabilities across setuid"),
        "PR_GET_FPEMU": Reason(CONTAINED, "not on x86_64: EINVAL"),
        "PR_SET_FPEMU": Reason(CONTAINED, "not on x86_64: EINVAL"),
        "PR_GET_FPEXC": Reason(CONTAINED, "not on x86_64: EINVAL"),
        "PR_SET_FPEXC": Reason(CONTAINED, "not on x86_64: EINVAL"),
        "PR_GET_TIMING": Reason(CONTAINED, _SELF_READ),
        "PR_SET_TIMING": Reason(CONTAINED, "only the statistical timing exists"),
        "PR_SET_NAME": Reason(
            CONTAINED, "the calling thread's own name (comm; audit records name the pid too)"
        ),
        "PR_GET_NAME": Reason(CONTAINED, _SELF_READ),
        "PR_GET_ENDIAN": Reason(CONTAINED, "not on x86_64: EINVAL"),
        "PR_SET_ENDIAN": Reason(CONTAINED, "not on x86_64: EINVAL"),
        "PR_GET_SECCOMP": Reason(CONTAINED, _SELF_READ),
        "PR_SET_SECCOMP": Reason(
            CONTAINED,
            "strict mode or a filter of the caller's own (no listener flag here): only restricts",
        ),
        "PR_CAPBSET_READ": Reason(CONTAINED, _SELF_READ),
        "PR_CAPBSET_DROP": Reason(CONTAINED, "only lowers the caller's own bounding set"),
        "PR_GET_TSC": Reason(CONTAINED, _SELF_READ),
        "PR_SET_TSC": Reason(CONTAINED, "whether the caller itself may read the TSC"),
        "PR_GET_SECUREBITS": Reason(CONTAINED, _SELF_READ),
        "PR_SET_SECUREBITS": Reason(CONTAINED, "the caller's own securebits"),
        "PR_SET_TIMERSLACK": Reason(CONTAINED, "the caller's own timer slack"),
        "PR_GET_TIMERSLACK": Reason(CONTAINED, _SELF_READ),
        "PR_TASK_PERF_EVENTS_DISABLE": Reason(CONTAINED, "the caller's own perf counters"),
        "PR_TASK_PERF_EVENTS_ENABLE": Reason(CONTAINED, "the caller's own perf counters"),
        "PR_MCE_KILL": Reason(CONTAINED, "the caller's own machine-check kill policy"),
        "PR_MCE_KILL_GET": Reason(CONTAINED, _SELF_READ),
        "PR_SET_MM": Reason(
            CONTAINED,
            "the caller's own memory map fields: CAP_SYS_RESOURCE (root agents lose it), or for "
            "PR_SET_MM_MAP CAP_CHECKPOINT_RESTORE (kept): the caller's own map and exe link only",
        ),
        "PR_SET_PTRACER": Reason(
            CONTAINED, "who may attach to the caller: it is traced already, so nobody else can"
        ),
        "PR_SET_CHILD_SUBREAPER": Reason(
            CONTAINED, "orphans below the caller (its own tree) reparent to it"
        ),
        "PR_GET_CHILD_SUBREAPER": Reason(CONTAINED, _SELF_READ),
        "PR_SET_NO_NEW_PRIVS": Reason(CONTAINED, "one-way restriction of the caller"),
        "PR_GET_NO_NEW_PRIVS": Reason(CONTAINED, _SELF_READ),
        "PR_GET_TID_ADDRESS": Reason(CONTAINED, _SELF_READ),
        "PR_SET_THP_DISABLE": Reason(CONTAINED, "transparent huge pages for the caller"),
        "PR_GET_THP_DISABLE": Reason(CONTAINED, _SELF_READ),
        "PR_MPX_ENABLE_MANAGEMENT": Reason(CONTAINED, "removed (Linux 5.4): EINVAL"),
        "PR_MPX_DISABLE_MANAGEMENT": Reason(CONTAINED, "removed (Linux 5.4): EINVAL"),
        "PR_SET_FP_MODE": Reason(CONTAINED, "MIPS only: EINVAL on x86_64"),
        "PR_GET_FP_MODE": Reason(CONTAINED, "MIPS only: EINVAL on x86_64"),
        "PR_CAP_AMBIENT": Reason(CONTAINED, "the caller's own ambient capabilities"),
        "PR_SVE_SET_VL": Reason(CONTAINED, "arm64 only: EINVAL on x86_64"),
        "PR_SVE_GET_VL": Reason(CONTAINED, "arm64 only: EINVAL on x86_64"),
        "PR_GET_SPECULATION_CTRL": Reason(CONTAINED, _SELF_READ),
        "PR_SET_SPECULATION_CTRL": Reason(CONTAINED, "the caller's own speculation mitigations"),
        "PR_PAC_RESET_KEYS": Reason(CONTAINED, "arm64 only: EINVAL on x86_64"),
        "PR_SET_TAGGED_ADDR_CTRL": Reason(CONTAINED, "arm64/riscv only: EINVAL on x86_64"),
        "PR_GET_TAGGED_ADDR_CTRL": Reason(CONTAINED, "arm64/riscv only: EINVAL on x86_64"),
        "PR_SET_IO_FLUSHER": Reason(
            CONTAINED, "the caller's own memory reclaim; needs CAP_SYS_RESOURCE (dropped): EPERM"
        ),
        "PR_GET_IO_FLUSHER": Reason(CONTAINED, _SELF_READ),
        "PR_SET_SYSCALL_USER_DISPATCH": Reason(
            CONTAINED,
            "turns the caller's own syscalls from a range into SIGSYS: fewer syscalls, never "
            "one the filter does not see",
        ),
        "PR_PAC_SET_ENABLED_KEYS": Reason(CONTAINED, "arm64 only: EINVAL on x86_64"),
        "PR_PAC_GET_ENABLED_KEYS": Reason(CONTAINED, "arm64 only: EINVAL on x86_64"),
        "PR_SCHED_CORE": Reason(
            CONTAINED,
            "SHARE_TO / SHARE_FROM / CREATE take any pid: traced unless aimed at the caller, and "
            "judged like kill (inside the tree only); GET only reads",
        ),
        "PR_SME_SET_VL": Reason(CONTAINED, "arm64 only: EINVAL on x86_64"),
        "PR_SME_GET_VL": Reason(CONTAINED, "arm64 only: EINVAL on x86_64"),
        "PR_SET_VMA": Reason(CONTAINED, "names the caller's own anonymous memory"),
    }
)

# Header constants that are arguments of a command, not commands: prefix -> the command.
PRCTL_ARGUMENTS: Mapping[str, str] = MappingProxyType(
    {
        "PR_UNALIGN_": "PR_SET_UNALIGN",
        "PR_FPEMU_": "PR_SET_FPEMU",
        "PR_FP_EXC_": "PR_SET_FPEXC",
        "PR_TIMING_": "PR_SET_TIMING",
        "PR_ENDIAN_": "PR_SET_ENDIAN",
        "PR_TSC_": "PR_SET_TSC",
        "PR_MCE_KILL_": "PR_MCE_KILL",
        "PR_SET_MM_": "PR_SET_MM",
        "PR_SET_PTRACER_ANY": "PR_SET_PTRACER",
        "PR_FP_MODE_": "PR_SET_FP_MODE",
        "PR_CAP_AMBIENT_": "PR_CAP_AMBIENT",
        "PR_SVE_": "PR_SVE_SET_VL",
        "PR_SPEC_": "PR_SET_SPECULATION_CTRL",
        "PR_PAC_AP": "PR_PAC_RESET_KEYS",
        "PR_TAGGED_ADDR_": "PR_SET_TAGGED_ADDR_CTRL",
        "PR_MTE_": "PR_SET_TAGGED_ADDR_CTRL",
        "PR_SYS_DISPATCH_": "PR_SET_SYSCALL_USER_DISPATCH",
        "PR_SCHED_CORE_": "PR_SCHED_CORE",
        "PR_SME_": "PR_SME_SET_VL",
        "PR_SET_VMA_": "PR_SET_VMA",
    }
)

# Every F_* command of <fcntl.h> and <linux/fcntl.h>; one command a line: laid out by hand.
FCNTL_COMMANDS: Mapping[str, Reason] = MappingProxyType(
    {
        "F_DUPFD": Reason(CONTAINED, "a new number for a descriptor the agent holds"),
        "F_DUPFD_CLOEXEC": Reason(CONTAINED, "a new number for a descriptor the agent holds"),
        "F_GETFD": Reason(CONTAINED, "the descriptor's own flags"),
        "F_SETFD": Reason(CONTAINED, "the descriptor's own close-on-exec flag"),
        "F_GETFL": Reason(CONTAINED, "the open file's status flags"),
        "F_SETFL": Reason(
            CONTAINED,
            "the access mode cannot change; O_ASYNC is refused (EPERM): on a terminal the "
            "kernel would aim SIGIO at the terminal's foreground process group (tty_fasync), "
            "which holds the supervisor and a pipeline's other commands",
        ),
        "F_GETLK": Reason(CONTAINED, "asks which lock would block: reads only"),
        "F_SETLK": Reason(
            BOUNDED,
            "a record lock on a file the agent holds (read locks need only a read-only open): "
            "cooperating processes outside wait until the agent lets go or ends",
        ),
        "F_SETLKW": Reason(BOUNDED, "as F_SETLK, waiting"),
        "F_GETLK64": Reason(CONTAINED, "32-bit value: not a command on x86_64 (EINVAL)"),
        "F_SETLK64": Reason(CONTAINED, "32-bit value: not a command on x86_64 (EINVAL)"),
        "F_SETLKW64": Reason(CONTAINED, "32-bit value: not a command on x86_64 (EINVAL)"),
        "F_OFD_GETLK": Reason(CONTAINED, "asks which lock would block: reads only"),
        "F_OFD_SETLK": Reason(BOUNDED, "as F_SETLK, owned by the open file description"),
        "F_OFD_SETLKW": Reason(BOUNDED, "as F_SETLK, waiting"),
        "F_SETOWN": Reason(
            CONTAINED,
            "names the process or group SIGIO/SIGURG go to (a root owner passes sigio_perm): "
            "traced unless it names the caller, and judged like kill: inside the tree only",
        ),
        "F_GETOWN": Reason(CONTAINED, "reads the descriptor's SIGIO owner"),
        "F_SETOWN_EX": Reason(
            CONTAINED,
            "as F_SETOWN with the owner in memory the tracer cannot pin: refused",
        ),
        "F_GETOWN_EX": Reason(CONTAINED, "reads the descriptor's SIGIO owner"),
        "F_GETOWNER_UIDS": Reason(CONTAINED, "reads the owner's uids"),
        "F_SETSIG": Reason(
            CONTAINED,
            "chooses the signal the owner gets, SIGKILL included; the owner was judged at "
            "F_SETOWN (F_SETOWN_EX, FIOSETOWN, SIOCSPGRP are refused), or is the one O_ASYNC "
            "gave (see F_SETFL)",
        ),
        "F_GETSIG": Reason(CONTAINED, "reads the descriptor's SIGIO signal"),
        "F_SETLEASE": Reason(
            CONTAINED,
            "refused (EPERM) but F_UNLCK: a lease would hold up every process outside that "
            "opens the file for writing, or truncates it, for lease-break-time, repeatedly",
        ),
        "F_GETLEASE": Reason(CONTAINED, "reads the descriptor's lease"),
        "F_CANCELLK": Reason(CONTAINED, "kernel-internal (lockd, nfsd): EINVAL from user space"),
        "F_NOTIFY": Reason(
            READS,
            "directory change notification (dnotify) to the descriptor's owner: the caller "
            "unless F_SETOWN pointed it elsewhere",
        ),
        "F_SETPIPE_SZ": Reason(CONTAINED, "the size of a pipe the agent holds"),
        "F_GETPIPE_SZ": Reason(CONTAINED, "the size of a pipe the agent holds"),
        "F_ADD_SEALS": Reason(CONTAINED, "seals a memfd the agent holds"),
        "F_GET_SEALS": Reason(CONTAINED, "reads a memfd's seals"),
        "F_GET_RW_HINT": Reason(CONTAINED, "reads a write-lifetime hint"),
        "F_SET_RW_HINT": Reason(
            CONTAINED, "a write-lifetime hint of an inode the agent holds: placement only"
        ),
        "F_GET_FILE_RW_HINT": Reason(CONTAINED, "removed (Linux 6.9): EINVAL"),
        "F_SET_FILE_RW_HINT": Reason(CONTAINED, "removed (Linux 6.9): EINVAL"),
    }
)

# Header constants that are arguments of a command, not commands: prefix -> the command.
FCNTL_ARGUMENTS: Mapping[str, str] = MappingProxyType(
    {
        "F_RDLCK": "F_SETLK",
        "F_WRLCK": "F_SETLK",
        "F_UNLCK": "F_SETLK",
        "F_EXLCK": "F_SETLK",
        "F_SHLCK": "F_SETLK",
        "F_OWNER_": "F_SETOWN_EX",
        "F_SEAL_": "F_ADD_SEALS",
        "F_LINUX_SPECIFIC_BASE": "F_SETLEASE",
    }
)
