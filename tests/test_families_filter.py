"""The four containment families of issue 12 in the filter and the decoders (no kernel needed).

ioctls that change a file (the ledger: traced, refused, allowed), device nodes (mknod of a
character or block device refused in the kernel), syscalls aimed at another process (traced only
when the target is not the caller, decoded into process targets and contained like signals), and
the ledger's codes checked against the kernel headers. The escape probes are in
tests/escapes/test_escape_families.py.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess

import pytest

from agentd.kernel import bpf, ioctl_ledger, seccomp
from agentd.kernel import consts as kc
from agentd.kernel.bpf import SeccompData
from agentd.kernel.syscall_numbers import SYSCALL_NUMBERS
from agentd.run.supervise import filter_spec
from agentd.trace import decide
from agentd.trace.decode import SignalTarget, decode_syscall
from agentd.trace.syscall_table import traced_syscalls

ALLOW, TRACE = kc.SECCOMP_RET_ALLOW, kc.SECCOMP_RET_TRACE
EPERM = kc.SECCOMP_RET_ERRNO | errno.EPERM
ORDINARY_IOCTLS = {"TCGETS": 0x5401, "TCSETS": 0x5402, "TIOCGWINSZ": 0x5413, "FIONREAD": 0x541B,
                   "FIONBIO": 0x5421, "FIOCLEX": 0x5451, "TIOCGPGRP": 0x540F,
                   "FS_IOC_GETFLAGS": 0x80086601, "FS_IOC_FIEMAP": 0xC020660B,
                   "FS_IOC_FSGETXATTR": 0x801C581F, "BLKGETSIZE64": 0x80081272}


@pytest.fixture(scope="module")
def program():
    """The filter as ``agentd run`` builds it: default profile, the tracer's table, the
    untraced rules."""
    return seccomp.build_filter(filter_spec(None, traced_syscalls()))


def run(program, name: str, *args: int) -> int:
    data = SeccompData(SYSCALL_NUMBERS[name], kc.AUDIT_ARCH_X86_64,
                       tuple(args) + (0,) * (6 - len(args)))
    return bpf.run(program, data)


# --- family 1: ioctls --------------------------------------------------------------------------

@pytest.mark.parametrize("request_", ioctl_ledger.LEDGER, ids=lambda r: r.name)
def test_each_ledger_code_is_handled_as_the_ledger_says(program, request_):
    expected = {ioctl_ledger.TRACED: TRACE, ioctl_ledger.REFUSED: EPERM,
                ioctl_ledger.WRITE_FD: ALLOW}[request_.handling]
    assert run(program, "ioctl", 3, request_.code) == expected
    # the kernel reads the command as a 32-bit int: upper bits change nothing
    assert run(program, "ioctl", 3, (0xDEAD << 32) | request_.code) == expected


@pytest.mark.parametrize("name", sorted(ORDINARY_IOCTLS))
def test_ordinary_ioctls_run_without_a_stop(program, name):
    assert run(program, "ioctl", 1, ORDINARY_IOCTLS[name]) == ALLOW


def test_an_ioctl_costs_a_handful_of_instructions(program):
    cost = seccomp.measure_cost(program)
    print(f"\nthe run's filter: {cost}")
    assert cost.max_executed <= 26
    for code in list(ORDINARY_IOCTLS.values()) + list(ioctl_ledger.codes(ioctl_ledger.TRACED)):
        data = SeccompData(SYSCALL_NUMBERS["ioctl"], kc.AUDIT_ARCH_X86_64, (1, code, 0, 0, 0, 0))
        assert bpf.execute(program, data).executed <= 26


HEADERS = ["linux/fs.h", "linux/fsverity.h", "linux/fscrypt.h", "linux/btrfs.h", "linux/blkpg.h",
           "linux/blktrace_api.h", "linux/blkzoned.h", "linux/pr.h", "linux/loop.h",
           "linux/sockios.h", "sys/ioctl.h"]
# ext4's ioctls are not in the uapi headers: their definitions, from fs/ext4/ext4.h
EXT4 = """
struct ext4_new_group_input { __u32 group; __u64 block_bitmap; __u64 inode_bitmap;
                              __u64 inode_table; __u32 blocks_count; __u16 reserved_blocks;
                              __u16 unused; };
struct fsuuid { __u32 fsu_len; __u32 fsu_flags; __u8 fsu_uuid[]; };
#define EXT4_IOC_SETVERSION _IOW('f', 4, long)
#define EXT4_IOC32_SETVERSION _IOW('f', 4, int)
#define EXT4_IOC_GROUP_EXTEND _IOW('f', 7, unsigned long)
#define EXT4_IOC_GROUP_ADD _IOW('f', 8, struct ext4_new_group_input)
#define EXT4_IOC_MIGRATE _IO('f', 9)
#define EXT4_IOC_ALLOC_DA_BLKS _IO('f', 12)
#define EXT4_IOC_RESIZE_FS _IOW('f', 16, __u64)
#define EXT4_IOC_SWAP_BOOT _IO('f', 17)
#define EXT4_IOC_CHECKPOINT _IOW('f', 43, __u32)
#define EXT4_IOC_SETFSUUID _IOW('f', 44, struct fsuuid)
#define EXT4_IOC_SHUTDOWN _IOR('X', 125, __u32)
"""


def test_ledger_codes_match_the_kernel_headers(tmp_path):
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler: cannot compare the ledger with the kernel headers")
    source = tmp_path / "codes.c"
    lines = [f"#include <{header}>" for header in HEADERS] + ["#include <stdio.h>", EXT4,
                                                              "int main(void) {"]
    lines += [f'    printf("%s %#x\\n", "{r.name}", (unsigned)({r.name}));'
              for r in ioctl_ledger.LEDGER]
    source.write_text("\n".join(lines + ["    return 0;", "}"]) + "\n")
    built = subprocess.run([compiler, "-o", str(tmp_path / "codes"), str(source)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    printed = subprocess.run([str(tmp_path / "codes")], capture_output=True, text=True,
                             check=True).stdout.split("\n")
    from_headers = {line.split()[0]: int(line.split()[1], 16) for line in printed if line}
    assert {r.name: r.code for r in ioctl_ledger.LEDGER} == from_headers


# --- family 2: device nodes --------------------------------------------------------------------

@pytest.mark.parametrize("mode,expected", [
    (0o020644, EPERM), (0o060644, EPERM),           # S_IFCHR, S_IFBLK
    (0o010644, TRACE), (0o140644, TRACE), (0o100644, TRACE), (0o644, TRACE),  # fifo, socket, reg
    ((1 << 20) | 0o020644, EPERM),                   # bits above umode_t hide nothing
])
def test_device_nodes_are_refused_in_the_kernel(program, mode, expected):
    assert run(program, "mknod", 0x1000, mode, 0x0103) == expected
    assert run(program, "mknodat", 3, 0x1000, mode, 0x0103) == expected


# --- family 3: another process -----------------------------------------------------------------

@pytest.mark.parametrize("name,args,expected", [
    ("prlimit64", (0, 4, 0x1000), ALLOW),             # the caller itself
    ("prlimit64", (4242, 4, 0x1000), TRACE),          # another pid, a new limit
    ("prlimit64", (4242, 4, 0, 0x1000), ALLOW),       # another pid, only reading
    ("setpriority", (0, 0, 5), ALLOW),                # PRIO_PROCESS, self
    ("setpriority", (0, 4242, 5), TRACE),
    ("setpriority", (1, 0, 5), TRACE),                # PRIO_PGRP, own group (may hold others)
    ("setpriority", (2, 0, 5), TRACE),                # PRIO_USER
    ("ioprio_set", (1, 0, 0x6000), ALLOW),
    ("ioprio_set", (1, 4242, 0x6000), TRACE),
    ("ioprio_set", (3, 0, 0x6000), TRACE),
    ("sched_setaffinity", (0, 8, 0x1000), ALLOW),
    ("sched_setaffinity", (4242, 8, 0x1000), TRACE),
    ("sched_setscheduler", (4242, 0, 0x1000), TRACE),
    ("sched_setparam", (4242, 0x1000), TRACE),
    ("sched_setattr", (4242, 0x1000, 0), TRACE),
    ("migrate_pages", (4242, 2, 0x1000, 0x2000), TRACE),
    ("move_pages", (4242, 1, 0x1000, 0x2000, 0x3000, 0), TRACE),
    ("move_pages", (4242, 1, 0x1000, 0, 0x3000, 0), ALLOW),   # no nodes: a query
    ("fcntl", (3, 8, 4242), TRACE),                   # F_SETOWN another pid
    ("fcntl", (3, 8, 0), ALLOW),                      # F_SETOWN 0: no owner
    ("fcntl", (3, 15, 0x1000), EPERM),                # F_SETOWN_EX: the pid is in memory
    ("fcntl", (3, 3, 0), ALLOW),                      # F_GETFL
    ("fcntl", (3, 10, 9), ALLOW),                     # F_SETSIG: whom it reaches is the owner
    ("prctl", (62, 2, 4242, 0, 0), TRACE),            # PR_SCHED_CORE_SHARE_TO another pid
    ("prctl", (62, 0, 4242, 0, 0x1000), ALLOW),       # PR_SCHED_CORE_GET
    ("prctl", (15, 0x1000), ALLOW),                   # PR_SET_NAME
    ("ioctl", (3, 0x8901, 0x1000), EPERM),            # FIOSETOWN
])
def test_process_syscalls_stop_only_when_aimed_at_another(program, name, args, expected):
    assert run(program, name, *args) == expected


PID = os.getpid()


def decoded_targets(name: str, *args: int):
    padded = tuple(a & 0xFFFFFFFFFFFFFFFF for a in args) + (0,) * (6 - len(args))
    return decode_syscall(PID, name, SYSCALL_NUMBERS[name], padded).process_targets


@pytest.mark.parametrize("name,args,targets", [
    ("prlimit64", (4242, 4, 0x1000), (SignalTarget("pid", 4242),)),
    ("prlimit64", (4242, 4, 0), ()),
    ("prlimit64", (0, 4, 0x1000), ()),
    ("setpriority", (0, 4242, 5), (SignalTarget("pid", 4242),)),
    ("setpriority", (1, 77, 5), (SignalTarget("pgrp", 77),)),
    ("setpriority", (1, 0, 5), (SignalTarget("pgrp", os.getpgid(0)),)),
    ("setpriority", (2, 0, 5), (SignalTarget("all", 0),)),
    ("setpriority", (9, 4242, 5), ()),               # unknown which: the kernel's EINVAL
    ("ioprio_set", (2, 77, 0), (SignalTarget("pgrp", 77),)),
    ("ioprio_set", (3, 1000, 0), (SignalTarget("all", 1000),)),
    ("sched_setaffinity", (4242, 8, 0x1000), (SignalTarget("pid", 4242),)),
    ("fcntl", (3, 8, 4242), (SignalTarget("pid", 4242),)),
    ("fcntl", (3, 8, -77), (SignalTarget("pgrp", 77),)),
    ("fcntl", (3, 1, 4242), ()),                     # F_GETFD: not F_SETOWN
    ("prctl", (62, 2, 4242, 2, 0), (SignalTarget("pgrp", 4242),)),
    ("prctl", (62, 0, 4242, 0, 0x1000), ()),
    ("prctl", (15, 2, 4242), ()),
])
def test_process_targets_are_decoded(name, args, targets):
    assert decoded_targets(name, *args) == targets


def test_a_process_outside_the_tree_is_refused_with_the_kernels_errno():
    tree = decide.AgentTree(lambda pid: pid == PID, lambda: [PID])
    policy = None  # containment asks no policy

    def verdict(name, *args):
        padded = tuple(a & 0xFFFFFFFFFFFFFFFF for a in args) + (0,) * (6 - len(args))
        decoded = decode_syscall(PID, name, SYSCALL_NUMBERS[name], padded)
        return decide.decide(decoded, policy, {}, tree)

    own = verdict("prlimit64", PID, 4, 0x1000)
    assert own.outcome == decide.Outcome.ALLOW
    outside = verdict("prlimit64", 1, 4, 0x1000)
    assert outside.outcome == decide.Outcome.BLOCK and outside.errno == errno.EPERM
    assert outside.evaluations[0].action_type == "process_control"
    assert outside.evaluations[0].pattern_ids == ("agentd:containment",)
    gone = verdict("sched_setaffinity", 4_000_000, 8, 0x1000)  # above pid_max: no such process
    assert gone.outcome == decide.Outcome.BLOCK and gone.errno == errno.ESRCH
    assert verdict("setpriority", 2, 0, 5).errno == errno.EPERM  # PRIO_USER


# --- the compiler's set test ---------------------------------------------------------------------

def test_set_tests_decide_as_the_rules_they_fold():
    """Long runs of one-value tests become a search tree: every value and its neighbours
    still get the outcome of the rules they were (a reference evaluation)."""
    rng = random.Random(12)
    for _ in range(30):
        denied = sorted(rng.sample(range(0, 1 << 32, 4099), rng.randint(5, 40)))
        stopping = sorted(rng.sample(range(1 << 31, 1 << 32, 7919), rng.randint(5, 60)))
        rules = [seccomp.ArgRule("ioctl", (seccomp.ArgCondition(1, "eq", v, width=32),),
                                 seccomp.EPERM) for v in denied]
        rules.append(seccomp.ArgRule(
            "ioctl", tuple(seccomp.ArgCondition(1, "ne", v, width=32) for v in stopping),
            seccomp.UNTRACED))
        program = seccomp.build_filter(seccomp.FilterSpec(traced={"ioctl"}, arg_rules=rules))
        probes = set(denied) | set(stopping) | {v + 1 for v in denied + stopping} | {0, 0x5401}
        for value in probes:
            value &= 0xFFFFFFFF
            if value in (kc.TIOCSTI, kc.TIOCLINUX):
                continue
            expected = EPERM if value in denied else TRACE if value in stopping else ALLOW
            assert run(program, "ioctl", 3, value) == expected, hex(value)
