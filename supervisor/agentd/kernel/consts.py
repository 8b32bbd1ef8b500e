"""Kernel ABI constants that python-ptrace and the standard library do not provide (x86_64).

This module spells the kernel numbers of the ptrace and seccomp machinery: seccomp return values,
modes and flags, the ``seccomp_data`` layout, ptrace options, events and requests python-ptrace
lacks, audit architectures, clone flags, prctl options and the few ioctls the seccomp filter
looks at. Every value is copied from the Linux UAPI headers (``linux/seccomp.h``,
``linux/ptrace.h``, ``linux/audit.h``, ``linux/sched.h``, ``linux/prctl.h``,
``asm-generic/ioctls.h``, Linux 6.18); ``tests/test_seccomp.py::test_kernel_consts_match_headers``
compiles a C program against the headers on the host and compares every constant those headers
define. Plain ints, no logic. Syscall numbers live in ``syscall_numbers``; a subsystem with an ABI
of its own keeps its constants with its binding (Landlock's access rights in ``landlock``).
"""

from __future__ import annotations

# --- seccomp(2): operations, filter flags, return actions (linux/seccomp.h) ------------------
SECCOMP_SET_MODE_STRICT = 0
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_GET_ACTION_AVAIL = 2
SECCOMP_GET_NOTIF_SIZES = 3

SECCOMP_MODE_DISABLED = 0  # prctl(PR_GET_SECCOMP) / "Seccomp:" in /proc/PID/status
SECCOMP_MODE_STRICT = 1
SECCOMP_MODE_FILTER = 2

SECCOMP_FILTER_FLAG_TSYNC = 1 << 0
SECCOMP_FILTER_FLAG_LOG = 1 << 1
SECCOMP_FILTER_FLAG_SPEC_ALLOW = 1 << 2
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_FILTER_FLAG_TSYNC_ESRCH = 1 << 4
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5

# Return actions, most restrictive first. When several filters are stacked the kernel runs all of
# them and keeps the action with the lowest value taken as a *signed* 32-bit int (KILL_PROCESS,
# 0x80000000, is negative and beats everything).
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_KILL_THREAD = 0x00000000
SECCOMP_RET_KILL = SECCOMP_RET_KILL_THREAD
SECCOMP_RET_TRAP = 0x00030000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_RET_TRACE = 0x7FF00000
SECCOMP_RET_LOG = 0x7FFC0000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ACTION_FULL = 0xFFFF0000
SECCOMP_RET_ACTION = 0x7FFF0000
SECCOMP_RET_DATA = 0x0000FFFF

# Seccomp user notification (SECCOMP_RET_USER_NOTIF) ioctls and flags.
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1 << 0
SECCOMP_ADDFD_FLAG_SETFD = 1 << 0
SECCOMP_ADDFD_FLAG_SEND = 1 << 1
SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100  # _IOWR('!', 0, struct seccomp_notif)      (80 bytes)
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101  # _IOWR('!', 1, struct seccomp_notif_resp) (24 bytes)
SECCOMP_IOCTL_NOTIF_ID_VALID = 0x40082102  # _IOW('!', 2, __u64)
SECCOMP_IOCTL_NOTIF_ADDFD = 0x40182103  # _IOW('!', 3, struct seccomp_notif_addfd) (24 bytes)
SECCOMP_IOCTL_NOTIF_SET_FLAGS = 0x40082104  # _IOW('!', 4, __u64)

# struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
SECCOMP_DATA_NR_OFFSET = 0
SECCOMP_DATA_ARCH_OFFSET = 4
SECCOMP_DATA_IP_OFFSET = 8
SECCOMP_DATA_ARGS_OFFSET = 16
SECCOMP_DATA_SIZE = 64

# Classic BPF program limit (linux/bpf_common.h).
BPF_MAXINSNS = 4096

# --- audit architectures (linux/audit.h) and the x32 marker (asm/unistd.h) --------------------
AUDIT_ARCH_X86_64 = 0xC000003E  # EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
AUDIT_ARCH_I386 = 0x40000003  # EM_386 | __AUDIT_ARCH_LE: what `int 0x80` reports
X32_SYSCALL_BIT = 0x40000000  # __X32_SYSCALL_BIT: set in nr for the x32 ABI

# --- prctl(2) (linux/prctl.h) ------------------------------------------------------------------
PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_GET_SECCOMP = 21
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_SET_PTRACER = 0x59616D61
PR_SET_CHILD_SUBREAPER = 36

# --- ptrace(2) (linux/ptrace.h): what python-ptrace's binding lacks -----------------------------
PTRACE_TRACEME = 0
PTRACE_CONT = 7
PTRACE_KILL = 8
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_SETSIGINFO = 0x4203
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208
PTRACE_SECCOMP_GET_FILTER = 0x420C
PTRACE_GET_SYSCALL_INFO = 0x420E
PTRACE_SET_SYSCALL_INFO = 0x4212  # Linux 6.16

PTRACE_SYSCALL_INFO_NONE = 0
PTRACE_SYSCALL_INFO_ENTRY = 1
PTRACE_SYSCALL_INFO_EXIT = 2
PTRACE_SYSCALL_INFO_SECCOMP = 3

PTRACE_O_TRACESYSGOOD = 0x00000001
PTRACE_O_TRACEFORK = 0x00000002
PTRACE_O_TRACEVFORK = 0x00000004
PTRACE_O_TRACECLONE = 0x00000008
PTRACE_O_TRACEEXEC = 0x00000010
PTRACE_O_TRACEVFORKDONE = 0x00000020
PTRACE_O_TRACEEXIT = 0x00000040
PTRACE_O_TRACESECCOMP = 0x00000080
PTRACE_O_EXITKILL = 0x00100000
PTRACE_O_SUSPEND_SECCOMP = 0x00200000

PTRACE_EVENT_FORK = 1
PTRACE_EVENT_VFORK = 2
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_VFORK_DONE = 5
PTRACE_EVENT_EXIT = 6
PTRACE_EVENT_SECCOMP = 7
PTRACE_EVENT_STOP = 128

NT_PRSTATUS = 1  # regset for PTRACE_GETREGSET: struct user_regs_struct

# --- wait(2) flags the os module lacks ---------------------------------------------------------
WALL = 0x40000000  # __WALL: wait for all children, clone or not
WCLONE = 0x80000000  # __WCLONE
WNOTHREAD = 0x20000000  # __WNOTHREAD

# --- clone(2) flags (linux/sched.h) ------------------------------------------------------------
CSIGNAL = 0x000000FF
CLONE_NEWTIME = 0x00000080  # only valid in clone3/unshare: it shares bits with CSIGNAL
CLONE_VM = 0x00000100
CLONE_FS = 0x00000200
CLONE_FILES = 0x00000400
CLONE_SIGHAND = 0x00000800
CLONE_PIDFD = 0x00001000
CLONE_PTRACE = 0x00002000
CLONE_VFORK = 0x00004000
CLONE_PARENT = 0x00008000
CLONE_THREAD = 0x00010000
CLONE_NEWNS = 0x00020000
CLONE_SYSVSEM = 0x00040000
CLONE_SETTLS = 0x00080000
CLONE_PARENT_SETTID = 0x00100000
CLONE_CHILD_CLEARTID = 0x00200000
CLONE_DETACHED = 0x00400000
CLONE_UNTRACED = 0x00800000
CLONE_CHILD_SETTID = 0x01000000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_IO = 0x80000000
CLONE_CLEAR_SIGHAND = 0x100000000  # clone3 only
CLONE_INTO_CGROUP = 0x200000000  # clone3 only
# Every namespace flag clone(2) and unshare(2) accept (CLONE_NEWTIME: unshare only).
CLONE_NAMESPACE_FLAGS = (
    CLONE_NEWNS
    | CLONE_NEWCGROUP
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNET
    | CLONE_NEWTIME
)

# --- personality(2) (linux/personality.h) -------------------------------------------------------
PER_LINUX = 0x0000
PER_LINUX32 = 0x0008
ADDR_NO_RANDOMIZE = 0x0040000
PERSONALITY_QUERY = 0xFFFFFFFF  # personality(0xffffffff) reads the persona without changing it

# --- tty ioctls (asm-generic/ioctls.h) ---------------------------------------------------------
TIOCSTI = 0x5412  # push a byte into the terminal's input queue: keystroke injection
TIOCLINUX = 0x541C  # console subcommands, TIOCL_SETSEL/PASTESEL paste into the console input

# --- misc ---------------------------------------------------------------------------------------
AT_FDCWD = -100
