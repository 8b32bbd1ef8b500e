"""Landlock: the kernel's allow-list of file hierarchies, TCP ports and scopes (defence in depth).

This module owns everything agentd says to Landlock (``linux/landlock.h``, Linux 6.18, ABI 7): the
three system calls, the access-right bits and which ABI version introduced each, the probe of the
running kernel's ABI, and a ruleset described as data (``RulesetSpec``) that is fitted to that ABI,
best effort, as the kernel documentation's example does (rights the kernel does not know are
dropped and each drop is reported). ``prepare`` runs in the supervisor before ``fork()``: it opens
an ``O_PATH`` descriptor per rule, creates the kernel ruleset and adds every rule, so that
``PreparedRuleset.apply`` in the forked child makes only two system calls (``prctl(NO_NEW_PRIVS)``
and ``landlock_restrict_self``). It knows nothing about policies: which rights to handle and which
hierarchies to allow is decided by ``agentd.run.sandbox_plan``. A kernel without Landlock is not an
error here: ``probe`` and ``prepare`` return the reason as a warning and the caller decides what
to say; nothing is printed and nothing degrades silently.
"""

from __future__ import annotations

import ctypes
import errno as errno_codes
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from agentd.kernel import libc
from agentd.kernel.consts import PR_SET_NO_NEW_PRIVS
from agentd.kernel.syscall_numbers import SYSCALL_NUMBERS

SYS_LANDLOCK_CREATE_RULESET = SYSCALL_NUMBERS["landlock_create_ruleset"]  # 444 on x86_64
SYS_LANDLOCK_ADD_RULE = SYSCALL_NUMBERS["landlock_add_rule"]  # 445
SYS_LANDLOCK_RESTRICT_SELF = SYSCALL_NUMBERS["landlock_restrict_self"]  # 446

# --- linux/landlock.h (Linux 6.18). The host's header is older (ABI 2); values from the kernel's.
LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_CREATE_RULESET_ERRATA = 1 << 1

LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_RULE_NET_PORT = 2

LANDLOCK_ACCESS_FS_EXECUTE = 1 << 0
LANDLOCK_ACCESS_FS_WRITE_FILE = 1 << 1
LANDLOCK_ACCESS_FS_READ_FILE = 1 << 2
LANDLOCK_ACCESS_FS_READ_DIR = 1 << 3
LANDLOCK_ACCESS_FS_REMOVE_DIR = 1 << 4
LANDLOCK_ACCESS_FS_REMOVE_FILE = 1 << 5
LANDLOCK_ACCESS_FS_MAKE_CHAR = 1 << 6
LANDLOCK_ACCESS_FS_MAKE_DIR = 1 << 7
LANDLOCK_ACCESS_FS_MAKE_REG = 1 << 8
LANDLOCK_ACCESS_FS_MAKE_SOCK = 1 << 9
LANDLOCK_ACCESS_FS_MAKE_FIFO = 1 << 10
LANDLOCK_ACCESS_FS_MAKE_BLOCK = 1 << 11
LANDLOCK_ACCESS_FS_MAKE_SYM = 1 << 12
LANDLOCK_ACCESS_FS_REFER = 1 << 13  # ABI 2
LANDLOCK_ACCESS_FS_TRUNCATE = 1 << 14  # ABI 3
LANDLOCK_ACCESS_FS_IOCTL_DEV = 1 << 15  # ABI 5

LANDLOCK_ACCESS_NET_BIND_TCP = 1 << 0  # ABI 4
LANDLOCK_ACCESS_NET_CONNECT_TCP = 1 << 1  # ABI 4

LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
LANDLOCK_SCOPE_SIGNAL = 1 << 1  # ABI 6

LANDLOCK_RESTRICT_SELF_LOG_SAME_EXEC_OFF = 1 << 0  # ABI 7
LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON = 1 << 1  # ABI 7
LANDLOCK_RESTRICT_SELF_LOG_SUBDOMAINS_OFF = 1 << 2  # ABI 7

# --- what each ABI version knows (Documentation/userspace-api/landlock.rst) -----------------------
_FS_ABI1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
FS_RIGHTS_BY_ABI: Mapping[int, int] = MappingProxyType(
    {
        1: _FS_ABI1,
        2: _FS_ABI1 | LANDLOCK_ACCESS_FS_REFER,
        3: _FS_ABI1 | LANDLOCK_ACCESS_FS_REFER | LANDLOCK_ACCESS_FS_TRUNCATE,
        4: _FS_ABI1 | LANDLOCK_ACCESS_FS_REFER | LANDLOCK_ACCESS_FS_TRUNCATE,
        5: _FS_ABI1
        | LANDLOCK_ACCESS_FS_REFER
        | LANDLOCK_ACCESS_FS_TRUNCATE
        | LANDLOCK_ACCESS_FS_IOCTL_DEV,
    }
)
LATEST_ABI = 7  # the newest ABI this module knows (Linux 6.15 .. 6.18)
NET_RIGHTS_ABI = 4
SCOPES_ABI = 6
RESTRICT_FLAGS_ABI = 7
ALL_NET_RIGHTS = LANDLOCK_ACCESS_NET_BIND_TCP | LANDLOCK_ACCESS_NET_CONNECT_TCP
ALL_SCOPES = LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE_SIGNAL

# The rights a rule on a non-directory may carry (the kernel refuses the others with EINVAL).
FILE_RIGHTS = (
    LANDLOCK_ACCESS_FS_EXECUTE
    | LANDLOCK_ACCESS_FS_WRITE_FILE
    | LANDLOCK_ACCESS_FS_READ_FILE
    | LANDLOCK_ACCESS_FS_TRUNCATE
    | LANDLOCK_ACCESS_FS_IOCTL_DEV
)

FS_RIGHT_NAMES: Mapping[int, str] = MappingProxyType(
    {
        LANDLOCK_ACCESS_FS_EXECUTE: "execute",
        LANDLOCK_ACCESS_FS_WRITE_FILE: "write_file",
        LANDLOCK_ACCESS_FS_READ_FILE: "read_file",
        LANDLOCK_ACCESS_FS_READ_DIR: "read_dir",
        LANDLOCK_ACCESS_FS_REMOVE_DIR: "remove_dir",
        LANDLOCK_ACCESS_FS_REMOVE_FILE: "remove_file",
        LANDLOCK_ACCESS_FS_MAKE_CHAR: "make_char",
        LANDLOCK_ACCESS_FS_MAKE_DIR: "make_dir",
        LANDLOCK_ACCESS_FS_MAKE_REG: "make_reg",
        LANDLOCK_ACCESS_FS_MAKE_SOCK: "make_sock",
        LANDLOCK_ACCESS_FS_MAKE_FIFO: "make_fifo",
        LANDLOCK_ACCESS_FS_MAKE_BLOCK: "make_block",
        LANDLOCK_ACCESS_FS_MAKE_SYM: "make_sym",
        LANDLOCK_ACCESS_FS_REFER: "refer",
        LANDLOCK_ACCESS_FS_TRUNCATE: "truncate",
        LANDLOCK_ACCESS_FS_IOCTL_DEV: "ioctl_dev",
    }
)
NET_RIGHT_NAMES: Mapping[int, str] = MappingProxyType(
    {
        LANDLOCK_ACCESS_NET_BIND_TCP: "bind_tcp",
        LANDLOCK_ACCESS_NET_CONNECT_TCP: "connect_tcp",
    }
)
SCOPE_NAMES: Mapping[int, str] = MappingProxyType(
    {
        LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET: "abstract_unix_socket",
        LANDLOCK_SCOPE_SIGNAL: "signal",
    }
)


def fs_rights(abi: int) -> int:
    """The filesystem rights ABI ``abi`` knows (0 without Landlock)."""
    if abi < 1:
        return 0
    return FS_RIGHTS_BY_ABI[min(abi, max(FS_RIGHTS_BY_ABI))]


def net_rights(abi: int) -> int:
    return ALL_NET_RIGHTS if abi >= NET_RIGHTS_ABI else 0


def scopes(abi: int) -> int:
    return ALL_SCOPES if abi >= SCOPES_ABI else 0


def right_names(mask: int, names: Mapping[int, str] = FS_RIGHT_NAMES) -> list[str]:
    """``mask`` spelt as names, lowest bit first; unknown bits as hex."""
    out = [name for bit, name in names.items() if mask & bit]
    unknown = mask & ~sum(names)
    if unknown:
        out.append(hex(unknown))
    return out


# --- the system calls -----------------------------------------------------------------------------


class _Syscalls:
    """The Landlock system calls through ``libc.syscall`` (declared before any fork)."""

    prctl = staticmethod(libc.prctl)
    get_errno = staticmethod(libc.last_errno)

    def call(self, number: int, a: int = 0, b: int = 0, c: int = 0, d: int = 0) -> tuple[int, int]:
        """(return value, errno): the errno is only meaningful when the value is negative."""
        ctypes.set_errno(0)
        result = libc.syscall(number, a, b, c, d)
        return result, (libc.last_errno() if result < 0 else 0)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # the kernel's struct is __attribute__((packed)): 12 bytes
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


# INVARIANT: the sizes the kernel checks (security/landlock/syscalls.c build_check_abi()).
assert ctypes.sizeof(_PathBeneathAttr) == 12 and ctypes.sizeof(_NetPortAttr) == 16
assert ctypes.sizeof(_RulesetAttr) == 24


# --- probing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LandlockSupport:
    """What the running kernel offers: the ABI version (0: none), its errata, and why if none."""

    abi: int
    errata: int = 0
    problem: str | None = None

    @property
    def available(self) -> bool:
        return self.abi >= 1

    def describe(self) -> str:
        if not self.available:
            return f"Landlock is not available: {self.problem}"
        return f"Landlock ABI {self.abi}" + (f" (errata {self.errata:#x})" if self.errata else "")


_PROBE_PROBLEMS = {
    errno_codes.ENOSYS: "the kernel has no Landlock system calls (built without "
    "CONFIG_SECURITY_LANDLOCK, or an outer seccomp profile refuses them)",
    errno_codes.EOPNOTSUPP: "Landlock is built into the kernel but not enabled at boot "
    "(add 'landlock' to the lsm= kernel parameter)",
    errno_codes.EPERM: "an outer seccomp profile refuses the Landlock system calls (containers)",
}


def probe(syscalls: _Syscalls | None = None) -> LandlockSupport:
    """The kernel's Landlock ABI version: ``landlock_create_ruleset(NULL, 0, VERSION)``."""
    calls = syscalls or _Syscalls()
    abi, code = calls.call(SYS_LANDLOCK_CREATE_RULESET, 0, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 0:
        problem = _PROBE_PROBLEMS.get(
            code,
            f"landlock_create_ruleset(VERSION) failed: "
            f"{os.strerror(code) if code else 'unknown error'}",
        )
        return LandlockSupport(0, 0, problem)
    errata, code = calls.call(SYS_LANDLOCK_CREATE_RULESET, 0, 0, LANDLOCK_CREATE_RULESET_ERRATA)
    return LandlockSupport(int(abi), int(errata) if errata > 0 else 0, None)


# --- the ruleset as data --------------------------------------------------------------------------


@dataclass(frozen=True)
class PathRule:
    """Allow ``access`` beneath the directory ``path`` (or on the file ``path``)."""

    path: str
    access: int
    why: str = ""


@dataclass(frozen=True)
class PortRule:
    """Allow ``access`` (bind_tcp / connect_tcp) for TCP port ``port``."""

    port: int
    access: int
    why: str = ""


@dataclass(frozen=True)
class RulesetSpec:
    """What to handle (deny unless a rule allows it), the rules that allow, and the scopes."""

    handled_fs: int = 0
    handled_net: int = 0
    scoped: int = 0
    path_rules: tuple[PathRule, ...] = ()
    port_rules: tuple[PortRule, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.handled_fs or self.handled_net or self.scoped)


def fit_to_abi(spec: RulesetSpec, abi: int) -> tuple[RulesetSpec, tuple[str, ...]]:
    """``spec`` restricted to what ABI ``abi`` knows, and one sentence per thing dropped."""
    dropped: list[str] = []
    fs_known, net_known, scope_known = fs_rights(abi), net_rights(abi), scopes(abi)
    for label, wanted, known, names in (
        ("filesystem rights", spec.handled_fs, fs_known, FS_RIGHT_NAMES),
        ("network rights", spec.handled_net, net_known, NET_RIGHT_NAMES),
        ("scopes", spec.scoped, scope_known, SCOPE_NAMES),
    ):
        if wanted & ~known:
            dropped.append(
                f"Landlock ABI {abi} does not know the {label} "
                f"{', '.join(right_names(wanted & ~known, names))}: not enforced by "
                f"Landlock"
            )
    handled_fs, handled_net = spec.handled_fs & fs_known, spec.handled_net & net_known
    path_rules = tuple(
        PathRule(r.path, r.access & handled_fs, r.why)
        for r in spec.path_rules
        if r.access & handled_fs
    )
    port_rules = tuple(
        PortRule(r.port, r.access & handled_net, r.why)
        for r in spec.port_rules
        if r.access & handled_net
    )
    return RulesetSpec(
        handled_fs, handled_net, spec.scoped & scope_known, path_rules, port_rules
    ), tuple(dropped)


# --- compile in the parent, apply in the child ----------------------------------------------------

_RESTRICT_PROBLEMS = {
    errno_codes.EPERM: "no_new_privs is not set and the caller lacks CAP_SYS_ADMIN",
    errno_codes.E2BIG: "the process already has the maximum of 16 stacked Landlock domains",
    errno_codes.EBADFD: "the ruleset descriptor is not a Landlock ruleset (a bug in agentd)",
    errno_codes.EBADF: "the ruleset descriptor is closed (a bug in agentd: it must stay open "
    "until the child has applied it)",
    errno_codes.EINVAL: "the kernel rejected the flags (a bug in agentd)",
}


@dataclass
class PreparedRuleset:
    """A kernel ruleset built by the parent; ``apply`` in the forked child, ``close`` in the parent.

    The ruleset descriptor is close-on-exec, so the agent never holds it.
    """

    ruleset_fd: int
    restrict_flags: int
    spec: RulesetSpec
    support: LandlockSupport
    _calls: _Syscalls = field(repr=False)

    def apply(self) -> None:
        """prctl(PR_SET_NO_NEW_PRIVS, 1), then landlock_restrict_self(fd, flags).

        Only system calls: everything else was prepared before ``fork()``. Raises OSError with
        the reason; the caller (a forked child) reports it and exits.
        """
        calls = self._calls
        if calls.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            code = calls.get_errno()
            raise OSError(code, f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(code)}")
        result, code = calls.call(SYS_LANDLOCK_RESTRICT_SELF, self.ruleset_fd, self.restrict_flags)
        if result != 0:
            reason = _RESTRICT_PROBLEMS.get(code, os.strerror(code))
            raise OSError(code, f"landlock_restrict_self failed: {reason}")

    def close(self) -> None:
        if self.ruleset_fd >= 0:
            os.close(self.ruleset_fd)
            self.ruleset_fd = -1

    def __enter__(self) -> PreparedRuleset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_rule_path(path: str) -> tuple[int | None, bool, str | None]:
    """(O_PATH descriptor, is a directory, problem)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as error:
        return None, False, f"cannot open {path}: {error.strerror}"
    try:
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
    except OSError as error:
        os.close(fd)
        return None, False, f"cannot stat {path}: {error.strerror}"
    return fd, is_dir, None


def prepare(
    spec: RulesetSpec,
    support: LandlockSupport | None = None,
    *,
    log_new_exec: bool = True,
    syscalls: _Syscalls | None = None,
) -> tuple[PreparedRuleset | None, tuple[str, ...]]:
    """Build the kernel ruleset for ``spec`` now (in the parent); ``(None, warnings)`` if none.

    Best effort: rights the kernel's ABI does not know are dropped, a rule whose path cannot be
    opened is left out (so that hierarchy is refused, never silently allowed), and every such
    degradation is a sentence in the returned warnings. ``log_new_exec`` asks the kernel (ABI 7)
    to audit-log the denials of the executed agent: a denial there means the tracer was bypassed.
    """
    # One piece on purpose: every descriptor opened here is closed on every failure path by the
    # one try/finally below.
    calls = syscalls or _Syscalls()
    support = support or probe(calls)
    if spec.empty:
        return None, ()
    if not support.available:
        return None, (f"{support.describe()}; nothing is enforced by Landlock",)
    fitted, warnings_list = fit_to_abi(spec, support.abi)
    warnings = list(warnings_list)
    if fitted.empty:
        warnings.append(f"Landlock ABI {support.abi} can enforce none of the requested rights")
        return None, tuple(warnings)
    attr = _RulesetAttr(fitted.handled_fs, fitted.handled_net, fitted.scoped)
    # The smallest struct that carries every non-zero field: older kernels accept no more.
    size = 24 if fitted.scoped else 16 if fitted.handled_net else 8
    ruleset_fd, code = calls.call(SYS_LANDLOCK_CREATE_RULESET, ctypes.addressof(attr), size, 0)
    if ruleset_fd < 0:
        warnings.append(
            f"landlock_create_ruleset failed: {os.strerror(code)}; nothing is enforced by Landlock"
        )
        return None, tuple(warnings)
    applied: list[PathRule] = []
    try:
        for rule in fitted.path_rules:
            fd, is_dir, problem = _open_rule_path(rule.path)
            if fd is None:
                warnings.append(
                    f"Landlock rule for {rule.path} left out ({problem}): Landlock "
                    f"refuses {', '.join(right_names(rule.access))} there"
                )
                continue
            try:
                access = rule.access if is_dir else rule.access & FILE_RIGHTS
                if not access:
                    continue
                _add_rule(
                    calls,
                    ruleset_fd,
                    LANDLOCK_RULE_PATH_BENEATH,
                    _PathBeneathAttr(access, fd),
                    f"{rule.path}, {', '.join(right_names(access))}",
                )
                applied.append(PathRule(rule.path, access, rule.why))
            finally:
                os.close(fd)  # the ruleset keeps its own reference to the hierarchy
        for port_rule in fitted.port_rules:
            _add_rule(
                calls,
                ruleset_fd,
                LANDLOCK_RULE_NET_PORT,
                _NetPortAttr(port_rule.access, port_rule.port),
                f"port {port_rule.port}",
            )
    except BaseException:
        os.close(ruleset_fd)
        raise
    flags = 0
    if log_new_exec and support.abi >= RESTRICT_FLAGS_ABI:
        flags |= LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON
    applied_spec = RulesetSpec(
        fitted.handled_fs, fitted.handled_net, fitted.scoped, tuple(applied), fitted.port_rules
    )
    return PreparedRuleset(int(ruleset_fd), flags, applied_spec, support, calls), tuple(warnings)


def _add_rule(
    calls: _Syscalls, ruleset_fd: int, rule_type: int, attr: ctypes.Structure, what: str
) -> None:
    """landlock_add_rule(2) of one rule; OSError naming ``what`` when the kernel refuses it."""
    result, code = calls.call(
        SYS_LANDLOCK_ADD_RULE, ruleset_fd, rule_type, ctypes.addressof(attr), 0
    )
    if result != 0:
        raise OSError(code, f"landlock_add_rule({what}) failed: {os.strerror(code)}")


def describe_spec(spec: RulesetSpec) -> list[str]:
    """The ruleset in words, one line each (for ``--explain-sandbox``)."""
    lines: list[str] = []
    if spec.handled_fs:
        lines.append(f"handled filesystem rights: {', '.join(right_names(spec.handled_fs))}")
        for rule in spec.path_rules:
            lines.append(
                f"  allow {rule.path}: {', '.join(right_names(rule.access))}"
                + (f"  ({rule.why})" if rule.why else "")
            )
        if not spec.path_rules:
            lines.append("  no hierarchy is allowed: these rights are refused everywhere")
    if spec.handled_net:
        lines.append(
            f"handled network rights: {', '.join(right_names(spec.handled_net, NET_RIGHT_NAMES))}"
        )
        for port_rule in spec.port_rules:
            lines.append(
                f"  allow TCP port {port_rule.port}: "
                f"{', '.join(right_names(port_rule.access, NET_RIGHT_NAMES))}"
            )
        if not spec.port_rules:
            lines.append("  no port is allowed: refused for every port")
    if spec.scoped:
        lines.append(
            f"scoped to the agent's own domain: {', '.join(right_names(spec.scoped, SCOPE_NAMES))}"
        )
    return lines
