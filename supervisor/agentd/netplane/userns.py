"""The unprivileged agent's network namespace: a user + network namespace made by the agent's child.

For ``agentd run`` without root, where the veth plane (``netns.py``) cannot be built.
``userns_unavailable`` says, from ``/proc``, whether the host lets an ordinary user create a user
namespace (and why not); ``NamespaceHandoff.probe`` tries it in a throwaway child (what /proc
cannot show: a container's seccomp profile, a limit set in a parent namespace).
``NamespaceHandoff`` is prepared in the supervisor before ``fork()`` (a socketpair, the
``ifreq`` buffers, the addresses to bind, ``unshare`` from libc); its
``child_step`` runs in the agent's child after the tracer seized it and before Landlock and the
seccomp filter: ``unshare(CLONE_NEWUSER | CLONE_NEWNET)``, the identity maps (the agent keeps
its uid and gid), ``lo`` up, the nameserver addresses that are not 127.x on ``lo`` as /32
aliases, then the DNS stub's UDP and TCP sockets and the proxy's TCP socket bound there and
sent to the supervisor (``SCM_RIGHTS``); it waits for a one-byte acknowledgement (the stub and
the proxy serve them) and returns. The namespace has loopback only: no route out, no
transparent redirect; the sockets live in it while the supervisor's threads serve them from its
own namespace. Every failure in the child raises ``OSError`` naming the step (``spawn_traced``
writes it on fd 2 and exits 126: fail closed). The child makes syscalls only: everything it
touches (modules, buffers, the libc function) is ready before the fork.
"""

from __future__ import annotations

import ctypes
import fcntl
import ipaddress
import os
import socket
import sys
from collections.abc import Callable

__all__ = [
    "userns_unavailable",
    "namespace_nameservers",
    "NamespaceHandoff",
    "HandoffError",
    "PROXY_ADDRESS",
    "USERNS_SYSCTLS",
]

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFADDR = 0x8916
SIOCSIFNETMASK = 0x891C
IFF_UP = 0x1
IFREQ_SIZE = 40  # struct ifreq on 64-bit Linux: 16 bytes of name, a 24-byte union

# The namespace is new and empty: the usual proxy port is free there.
PROXY_ADDRESS = ("127.0.0.1", 3128)
# systemd-resolved's address: where a resolver without nameservers is most likely to look.
FALLBACK_NAMESERVER = "127.0.0.53"

# (path, value that refuses, why): what stops an ordinary user from creating a user namespace.
USERNS_SYSCTLS = (
    (
        "/proc/sys/kernel/unprivileged_userns_clone",
        lambda v: v == "0",
        "kernel.unprivileged_userns_clone = 0 (Debian/Ubuntu switch: user namespaces are for root)",
    ),
    (
        "/proc/sys/user/max_user_namespaces",
        lambda v: v.isdigit() and int(v) == 0,
        "user.max_user_namespaces = 0 (no user namespace may be created)",
    ),
    (
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
        lambda v: v == "1",
        "kernel.apparmor_restrict_unprivileged_userns = 1 (AppArmor takes every capability from an "
        "unprivileged user namespace, so its loopback cannot be brought up)",
    ),
)


class HandoffError(OSError):
    """The child did not hand over its sockets (it failed, or took too long)."""


def _read_proc(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None


def userns_unavailable(read: Callable[[str], str | None] = _read_proc) -> str | None:
    """Why an ordinary user cannot make a user + network namespace here, or None.

    ``read(path)`` returns the stripped content of a /proc file, or None when it is missing
    (the switch does not exist on this kernel, which means it does not refuse)."""
    for path, refuses, why in USERNS_SYSCTLS:
        value = read(path)
        if value is not None and refuses(value):
            return why
    if not os.path.exists("/proc/self/ns/user"):
        return "the kernel has no user namespaces (CONFIG_USER_NS is off)"
    return None


def namespace_nameservers(path: str = "/etc/resolv.conf") -> list[str]:
    """The IPv4 nameservers the agent's resolver will ask (``nameserver`` lines of ``path``),
    each once; ``[127.0.0.53]`` when there is none. IPv6 nameservers are left out."""
    found: list[str] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                address = ipaddress.ip_address(fields[1])
            except ValueError:
                continue
            if address.version == 4 and str(address) not in found:
                found.append(str(address))
    return found or [FALLBACK_NAMESERVER]


def _ifreq(name: str, payload: bytes = b"") -> bytes:
    return name.encode().ljust(16, b"\0") + payload.ljust(IFREQ_SIZE - 16, b"\0")


def _sockaddr_in(address: str) -> bytes:
    # sa_family in host order, port 0, the address in network order
    return socket.AF_INET.to_bytes(2, sys.byteorder) + b"\0\0" + socket.inet_aton(address)


class NamespaceHandoff:
    """Made in the supervisor before the fork. ``child_step`` runs in the agent's child;
    ``receive(timeout)`` and ``acknowledge()`` in the supervisor, after the fork
    (``forked()`` first: it drops the supervisor's copy of the child's end)."""

    def __init__(self, nameservers: list[str], proxy: tuple[str, int] = PROXY_ADDRESS):
        self.nameservers = list(nameservers)
        self.proxy = proxy
        self.supervisor_end, self.child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        libc = ctypes.CDLL(None, use_errno=True)
        self._unshare = libc.unshare
        self._unshare.argtypes = [ctypes.c_int]
        uid, gid = os.geteuid(), os.getegid()
        self._maps = (
            ("/proc/self/setgroups", b"deny"),  # before gid_map: the kernel's rule
            ("/proc/self/uid_map", f"{uid} {uid} 1".encode()),
            ("/proc/self/gid_map", f"{gid} {gid} 1".encode()),
        )
        self._lo = _ifreq("lo")
        # (label, SIOCSIFADDR ifreq, SIOCSIFNETMASK ifreq)
        self._aliases: list[tuple[str, bytes, bytes]] = []
        for address in self.nameservers:
            if ipaddress.ip_address(address) in ipaddress.ip_network("127.0.0.0/8"):
                continue  # lo's 127.0.0.1/8 holds it already
            label = f"lo:{len(self._aliases) + 1}"
            self._aliases.append(
                (
                    label,
                    _ifreq(label, _sockaddr_in(address)),
                    _ifreq(label, _sockaddr_in("255.255.255.255")),
                )
            )
        # (type, address): the stub's UDP and TCP on each nameserver's port 53, then the proxy
        self._binds = [
            (kind, (address, 53))
            for address in self.nameservers
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM)
        ]
        proxy_ip, proxy_port = proxy  # bind() takes a tuple, whatever sequence was given
        self._binds.append((socket.SOCK_STREAM, (proxy_ip, proxy_port)))

    # -- the child (after fork, before Landlock and seccomp) ---------------------------------
    def _make_namespace(self) -> None:
        """unshare, the identity maps, ``lo`` up with the aliases; OSError naming the step."""
        if self._unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(
                errno, f"network: unshare(CLONE_NEWUSER|CLONE_NEWNET): {os.strerror(errno)}"
            )
        for path, text in self._maps:
            try:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, text)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"network: writing {text.decode()!r} to {path}: {exc.strerror}"
                ) from None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as control:  # in the new namespace
            step = "bringing lo up (SIOCSIFFLAGS)"
            try:
                flags = fcntl.ioctl(control, SIOCGIFFLAGS, self._lo)
                up = int.from_bytes(flags[16:18], sys.byteorder) | IFF_UP
                fcntl.ioctl(
                    control,
                    SIOCSIFFLAGS,
                    self._lo[:16] + up.to_bytes(2, sys.byteorder) + self._lo[18:],
                )
                for label, address, netmask in self._aliases:
                    step = f"giving {label} its address (SIOCSIFADDR, SIOCSIFNETMASK /32)"
                    fcntl.ioctl(control, SIOCSIFADDR, address)
                    fcntl.ioctl(control, SIOCSIFNETMASK, netmask)
            except OSError as exc:
                raise OSError(exc.errno, f"network: {step}: {exc.strerror or exc}") from None

    def child_step(self) -> None:
        self.supervisor_end.close()
        self._make_namespace()
        sockets: list[socket.socket] = []
        step = ""
        try:
            for kind, address in self._binds:
                proto = "UDP" if kind == socket.SOCK_DGRAM else "TCP"
                step = f"binding {proto} {address[0]}:{address[1]}"
                sock = socket.socket(socket.AF_INET, kind)
                sockets.append(sock)
                if kind == socket.SOCK_STREAM:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
            step = "handing the sockets to the supervisor"
            socket.send_fds(self.child_end, [b"F"], [sock.fileno() for sock in sockets])
            step = "waiting for the supervisor's DNS stub and proxy"
            if self.child_end.recv(1) != b"A":
                raise OSError(0, "the supervisor closed the handoff")
        except OSError as exc:
            raise OSError(exc.errno, f"network: {step}: {exc.strerror or exc}") from None
        finally:
            for sock in sockets:
                sock.close()
            self.child_end.close()

    # -- the supervisor (before the fork) --------------------------------------------------
    def probe(self) -> str | None:
        """Why the namespace cannot be made here, or None: the namespace steps (unshare, maps,
        ``lo``) in a throwaway child, about 2 ms. Catches what ``userns_unavailable`` cannot
        read in /proc: a container's seccomp profile refusing ``unshare``, a read-only
        ``uid_map``, a namespace without the capabilities to configure ``lo``."""
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the probe child: syscalls only, then _exit
            code = 0
            try:
                os.close(read_end)
                self._make_namespace()
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                code = 1
                try:
                    os.write(write_end, str(exc).encode(errors="replace")[:1000])
                except BaseException:  # noqa: BLE001
                    pass
            os._exit(code)
        os.close(write_end)
        try:
            chunks = []
            while chunk := os.read(read_end, 1024):
                chunks.append(chunk)
        finally:
            os.close(read_end)
            _, status = os.waitpid(pid, 0)
        message = b"".join(chunks).decode(errors="replace")
        if os.waitstatus_to_exitcode(status) == 0 and not message:
            return None
        return message or f"the probe process ended with status {status}"

    # -- the supervisor (after the fork) ---------------------------------------------------
    def forked(self) -> None:
        """The fork is done: the child has its own copy of its end; ours goes, so a child that
        dies before handing over reads as end of file, not as a long wait."""
        self.child_end.close()

    def receive(self, timeout: float) -> list[socket.socket]:
        """The sockets bound inside the agent's namespace, in ``_binds`` order: (UDP, TCP) per
        nameserver, then the proxy's. HandoffError when the child failed or took too long."""
        self.supervisor_end.settimeout(timeout)
        try:
            message, fds, _flags, _addr = socket.recv_fds(self.supervisor_end, 16, len(self._binds))
        except TimeoutError:
            raise HandoffError(
                f"the agent's child did not hand over its sockets within {timeout:g} s"
            ) from None
        sockets = [socket.socket(fileno=fd) for fd in fds]
        for sock in sockets:
            sock.set_inheritable(False)  # recvmsg gave them without close-on-exec
        if message != b"F" or len(sockets) != len(self._binds):
            for sock in sockets:
                sock.close()
            raise HandoffError(
                "the agent's child failed before it handed over its sockets "
                "(its reason is on stderr)"
            )
        return sockets

    def acknowledge(self) -> None:
        self.supervisor_end.sendall(b"A")

    def shutdown(self) -> None:
        """Wakes a ``receive`` waiting in another thread (it then fails); a child still waiting
        for the acknowledgement reads end of file and exits 126. Idempotent."""
        try:
            self.supervisor_end.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        """``shutdown``, then the sockets go. Idempotent; not while ``receive`` runs."""
        self.shutdown()
        self.supervisor_end.close()
        self.child_end.close()
