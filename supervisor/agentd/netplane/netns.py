"""The per-agent network namespace: loopback plus one veth pair whose only peer is the supervisor.

Owns creating, wiring and removing one agent's network namespace (docs/network.md
"Namespace"). The namespace is anonymous: a thread ``unshare(CLONE_NEWNET)``s and opens its
``/proc/thread-self/ns/net``; the supervisor holds that fd, the agent enters it with
``setns`` after fork, and the kernel destroys the namespace (and with it both veth ends) when the
last holder is gone, so nothing outlives the supervisor and its agent, and no ``/run/netns``
mount is left behind by a crash. The host end of the veth gets the first address of a /30 from a
pool (picked under a lock file, skipping every network the host already uses or names as its
nameserver), with forwarding off and strict reverse-path filtering on that interface; the agent
end gets the second address, no IPv6, and stays down until ``install_redirects`` has loaded an
nftables table inside the namespace that sends DNS to the supervisor's DNS stub and ports
80/443 to its proxy and refuses everything else at once (TCP reset or ICMP admin-prohibited, so
the agent's connect() fails fast); only then does it come up with a default route via the host
end. Everything that must run "inside" runs in
a short-lived thread that ``setns``es first: the thread's sockets, ``/proc/sys/net`` writes and
forked children (``nft``) belong to the agent's namespace, the rest of the process is untouched.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import ipaddress
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agentd.kernel.consts import CLONE_NEWNET

from .sockets import bound_socket

__all__ = [
    "DEFAULT_POOL",
    "AGENT_IFNAME",
    "NetnsUnavailable",
    "NetnsError",
    "AgentNetwork",
    "cleanup_stale",
]

# 10.255.0.0/16 is rarely routed anywhere; collisions with what the host does use are skipped
# at allocation time (addresses, routes, nameservers), and the pool is a parameter.
DEFAULT_POOL = "10.255.0.0/16"
AGENT_IFNAME = "eth0"
HOST_IFNAME_PREFIX = "agd"  # + 8 hex digits of the subnet: at most 11 characters (IFNAMSIZ 16)
ALIAS_PREFIX = "agentd-netplane"
LOCK_PATH = "/run/agentd/netplane.lock"
SUBNET_PREFIX = 30

IFA_F_NOPREFIXROUTE = 0x200
RTNH_F_ONLINK = 0x4

# Per-interface sysctls as data: (family, key, value, why). Written before the link goes up.
HOST_END_SYSCTLS = (
    ("ipv4", "forwarding", "0", "nothing the agent sends is routed on, even with ip_forward=1"),
    (
        "ipv4",
        "rp_filter",
        "1",
        "strict: a packet from the agent must come from the agent's address",
    ),
    ("ipv4", "accept_local", "0", "a packet claiming one of the host's own addresses is dropped"),
    ("ipv4", "accept_source_route", "0", "no source-routed packets from the agent"),
    ("ipv4", "accept_redirects", "0", "the agent cannot rewrite the host's routes"),
    ("ipv4", "send_redirects", "0", "the host never points the agent elsewhere"),
    ("ipv4", "proxy_arp", "0", "the host end answers ARP for its own address only"),
    ("ipv4", "arp_ignore", "1", "... and only for the address on this interface"),
    ("ipv6", "forwarding", "0", "no IPv6 forwarding either"),
    ("ipv6", "accept_ra", "0", "no router advertisements from the agent"),
    ("ipv6", "disable_ipv6", "1", "no IPv6 on the veth: no link-local path to the host's services"),
)
AGENT_END_SYSCTLS = (
    ("ipv4", "rp_filter", "1", "strict reverse-path filtering inside too"),
    (
        "ipv4",
        "route_localnet",
        "1",
        "replies to a redirected loopback nameserver (127.0.0.53) come back through the veth",
    ),
    ("ipv6", "accept_ra", "0", "no router advertisements"),
    ("ipv6", "disable_ipv6", "1", "no IPv6 route out: an IPv6 connect fails with ENETUNREACH"),
)

# The ruleset inside the agent's namespace. Hook order on output: nat (dstnat, -100) rewrites
# the destination first, then the filter (0) sees the rewritten one and lets through only what
# goes to the supervisor's two ports; everything else leaving by the veth is refused at once.
RULESET_TEMPLATE = """\
table inet agentd
delete table inet agentd
table inet agentd {{
    counter redirected_dns {{ }}
    counter redirected_web {{ }}
    counter refused_tcp {{ }}
    counter refused_other {{ }}
    chain to_supervisor {{
        type nat hook output priority -100; policy accept;
{loopback_dns}        oifname "{agent_if}" meta l4proto {{ tcp, udp }} th dport 53 counter name redirected_dns dnat ip to {host}:{dns_port}
        oifname "{agent_if}" tcp dport {{ 80, 443 }} counter name redirected_web dnat ip to {host}:{proxy_port}
    }}
    chain loopback_source {{
        type nat hook postrouting priority 100; policy accept;
        oifname "{agent_if}" ip saddr 127.0.0.0/8 snat ip to {agent}
    }}
    chain egress {{
        type filter hook output priority 0; policy accept;
        oifname != "{agent_if}" accept
        ip daddr {host} tcp dport {{ {dns_port}, {proxy_port} }} accept
        ip daddr {host} udp dport {dns_port} accept
        meta l4proto tcp counter name refused_tcp reject with tcp reset
        counter name refused_other reject with icmpx admin-prohibited
    }}
}}
"""  # noqa: E501 (nft rules read best one to a line)
LOOPBACK_DNS_RULE = (
    "        ip daddr 127.0.0.0/8 meta l4proto {{ tcp, udp }} th dport 53 "
    "counter name redirected_dns dnat ip to {host}:{dns_port}\n"
)


class NetnsUnavailable(RuntimeError):
    """This host or this process cannot build a network namespace; the message says why."""


class NetnsError(RuntimeError):
    """A step of building, wiring or removing the namespace failed; the message names the step."""


@dataclass(frozen=True)
class _Libc:
    """The two namespace calls, resolved before any fork (``enter`` runs in a forked child)."""

    setns: Callable[[int, int], int]  # setns(fd, nstype)
    unshare: Callable[[int], int]  # unshare(flags)

    @classmethod
    def load(cls) -> _Libc:
        libc = ctypes.CDLL(None, use_errno=True)
        setns, unshare = libc.setns, libc.unshare
        setns.argtypes, setns.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        unshare.argtypes, unshare.restype = (ctypes.c_int,), ctypes.c_int
        return cls(setns=setns, unshare=unshare)

    def enter(self, fd: int) -> None:
        if self.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns(CLONE_NEWNET) on fd {fd}: {os.strerror(err)}")


NEW_NETNS = "new"  # _in_thread: unshare a fresh namespace first
HOST_NETNS = "host"  # _in_thread: stay in the supervisor's namespace


def _in_thread(libc: _Libc, where, fn, *args):
    """Run ``fn(*args)`` in a new thread that first enters ``where``: a namespace fd,
    ``NEW_NETNS`` or ``HOST_NETNS``. Even host-side netlink work runs here: pyroute2's
    synchronous API drives its own asyncio loop, which must not meet a loop the caller runs.

    INVARIANT: only this short-lived thread ever changes namespace; it ends when ``fn`` returns,
    so the caller's threads stay in the supervisor's namespace.
    """
    result: dict = {}

    def body() -> None:
        try:
            if where == NEW_NETNS:
                if libc.unshare(CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
            elif where != HOST_NETNS:
                libc.enter(where)
            result["value"] = fn(*args)
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=body, name="agentd-netns", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def _open_own_netns() -> int:
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def _write_sysctls(ifname: str, table) -> None:
    for family, key, value, why in table:
        path = f"/proc/sys/net/{family}/conf/{ifname}/{key}"
        try:
            with open(path, "w", encoding="ascii") as handle:
                handle.write(value)
        except OSError as exc:
            raise NetnsError(f"cannot set {path}={value} ({why}): {exc}") from None


def _read_sysctl(ifname: str, family: str, key: str) -> str:
    with open(f"/proc/sys/net/{family}/conf/{ifname}/{key}", encoding="ascii") as handle:
        return handle.read().strip()


def _process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot): tells a reused pid from its owner."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


# systemd-resolved keeps its upstream servers in the second file (the first may say 127.0.0.53)
RESOLV_CONF_PATHS = ("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf")


def _nameservers(*paths: str) -> list[ipaddress.IPv4Network]:
    found = []
    for path in paths or RESOLV_CONF_PATHS:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    fields = line.split()
                    if len(fields) >= 2 and fields[0] == "nameserver":
                        try:
                            found.append(ipaddress.IPv4Network(fields[1]))
                        except ValueError:
                            pass  # IPv6 nameservers cannot clash with an IPv4 pool
        except OSError:
            pass
    return found


def _networks_in_use(ipr: IPRoute) -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host has an address in, routes to (except the default) or asks
    for names: a /30 overlapping one of them would take its traffic away from the host."""
    used = []
    for msg in ipr.addr("dump", family=socket.AF_INET):
        address = msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL")
        if address:
            used.append(ipaddress.IPv4Interface(f"{address}/{msg['prefixlen']}").network)
    for msg in ipr.route("dump", family=socket.AF_INET):
        if msg["dst_len"] == 0 or msg.get_attr("RTA_TABLE") == 255:  # default; local table
            continue
        dst = msg.get_attr("RTA_DST")
        if dst:
            used.append(ipaddress.IPv4Network(f"{dst}/{msg['dst_len']}", strict=False))
    used.extend(_nameservers())
    return used


def _pick_subnet(pool: ipaddress.IPv4Network, used) -> ipaddress.IPv4Network | None:
    for candidate in pool.subnets(new_prefix=SUBNET_PREFIX):
        if not any(candidate.overlaps(other) for other in used):
            return candidate
    return None


class _PoolLock:
    """flock on LOCK_PATH: allocation and address assignment are one step across processes."""

    def __enter__(self) -> _PoolLock:
        os.makedirs(os.path.dirname(LOCK_PATH), mode=0o755, exist_ok=True)
        self.fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)  # releases the lock


def _host_ifname(subnet: ipaddress.IPv4Network) -> str:
    return f"{HOST_IFNAME_PREFIX}{int(subnet.network_address):08x}"


def _add_host_end(pool: ipaddress.IPv4Network, run_id: str, netns_fd: int) -> ipaddress.IPv4Network:
    """In the supervisor's namespace, under the pool lock: pick a free /30, make the veth pair
    (the peer born inside the agent's namespace) and set up the host end. Returns the /30."""
    pid = os.getpid()
    alias = (
        f"{ALIAS_PREFIX} run={''.join(run_id.split())[:64]} pid={pid} "
        f"start={_process_start_time(pid)}"
    )
    with _PoolLock(), IPRoute() as ipr:
        chosen = _pick_subnet(pool, _networks_in_use(ipr))
        if chosen is None:
            raise NetnsError(
                f"no free /{SUBNET_PREFIX} left in the pool {pool} (each running agent holds one)"
            )
        host_ifname, host_address = _host_ifname(chosen), str(next(chosen.hosts()))
        ipr.link(
            "add",
            ifname=host_ifname,
            kind="veth",
            peer={"ifname": AGENT_IFNAME, "net_ns_fd": netns_fd},
        )
        try:
            index = ipr.link_lookup(ifname=host_ifname)[0]
            ipr.link("set", index=index, ifalias=alias)
            _write_sysctls(host_ifname, HOST_END_SYSCTLS)
            ipr.addr("add", index=index, address=host_address, prefixlen=SUBNET_PREFIX)
            ipr.link("set", index=index, state="up")
        except BaseException:
            ipr.link("del", ifname=host_ifname)
            raise
    return chosen


def _delete_link(ifname: str) -> bool:
    """Delete ``ifname`` (a veth takes its peer with it); False if it was already gone."""
    try:
        with IPRoute() as ipr:
            ipr.link("del", ifname=ifname)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise
        return False
    return True


def _configure_inside(agent: str) -> None:
    """In the agent's namespace: lo up, the veth end addressed but still down (no way out)."""
    _write_sysctls(AGENT_IFNAME, AGENT_END_SYSCTLS)
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        index = ipr.link_lookup(ifname=AGENT_IFNAME)[0]
        # No prefix route: the main table will hold exactly one route, the default.
        ipr.addr(
            "add",
            index=index,
            address=agent,
            prefixlen=SUBNET_PREFIX,
            IFA_FLAGS=IFA_F_NOPREFIXROUTE,
        )


def _open_inside(nft: str, ruleset: str, host: str) -> None:
    """In the agent's namespace: load the ruleset, then (never before) raise the veth end and
    route everything via the host end."""
    _run_nft(nft, ruleset, "-f", "-")
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=AGENT_IFNAME)[0]
        ipr.link("set", index=index, state="up")
        ipr.route("replace", dst="0.0.0.0/0", gateway=host, oif=index, flags=RTNH_F_ONLINK)


def _run_nft(nft: str, script: str, *args: str) -> str:
    """Run nft in the calling thread's namespace (the child inherits it) and return stdout."""
    proc = subprocess.run(
        [nft, *args], input=script, capture_output=True, text=True, check=False, timeout=30
    )
    if proc.returncode != 0:
        raise NetnsError(
            f"nft {' '.join(args)} in the agent's namespace failed "
            f"(exit {proc.returncode}): {proc.stderr.strip()}"
        )
    return proc.stdout


class AgentNetwork:
    """One agent's network namespace and its veth pair (see the module docstring).

    Attributes: ``run_id``, ``subnet`` (the /30), ``host_address`` (supervisor side, where the
    DNS stub and the proxy listen), ``agent_address``, ``host_ifname``, ``agent_ifname``,
    ``netns_fd`` (O_CLOEXEC: the child's ``enter()`` uses it before exec, the agent never sees
    it), ``netns_path`` (``/proc/<pid>/fd/<fd>``: for ``nsenter --net=`` while debugging).
    """

    def __init__(
        self,
        *,
        run_id: str,
        libc: _Libc,
        netns_fd: int,
        subnet: ipaddress.IPv4Network,
        host_ifname: str,
    ) -> None:
        self.run_id = run_id
        self._libc = libc
        self.netns_fd = netns_fd
        self.subnet = subnet
        hosts = list(subnet.hosts())
        self.host_address = str(hosts[0])
        self.agent_address = str(hosts[1])
        self.host_ifname = host_ifname
        self.agent_ifname = AGENT_IFNAME
        self.dns_port: int | None = None
        self.proxy_port: int | None = None
        self._nft = shutil.which("nft") or "/usr/sbin/nft"
        self._conntrack: _ConntrackLookup | None = None
        self._closed = False

    # -- building --------------------------------------------------------------------------

    @classmethod
    def create(cls, run_id: str, *, subnet: str = DEFAULT_POOL) -> AgentNetwork:
        """Build the namespace and the veth pair. ``subnet`` is the IPv4 pool a /30 is taken
        from (a /30 itself means exactly that one). Raises ``NetnsUnavailable`` when this
        process cannot (not root, no namespaces), ``NetnsError`` when a step fails."""
        if os.geteuid() != 0:
            raise NetnsUnavailable(
                f"a per-agent network namespace needs root (CAP_SYS_ADMIN for unshare/setns, "
                f"CAP_NET_ADMIN for the veth pair); this process runs with euid {os.geteuid()}"
            )
        try:
            pool = ipaddress.IPv4Network(subnet)
        except ValueError as exc:
            raise NetnsError(f"address pool {subnet!r}: {exc}") from None
        if pool.prefixlen > SUBNET_PREFIX:
            raise NetnsError(f"address pool {subnet}: needs room for a /{SUBNET_PREFIX}")
        libc = _Libc.load()
        try:
            netns_fd = _in_thread(libc, NEW_NETNS, _open_own_netns)
        except OSError as exc:
            raise NetnsUnavailable(f"cannot create a network namespace: {exc}") from None
        network = None
        try:
            chosen = _in_thread(libc, HOST_NETNS, _add_host_end, pool, run_id, netns_fd)
            network = cls(
                run_id=run_id,
                libc=libc,
                netns_fd=netns_fd,
                subnet=chosen,
                host_ifname=_host_ifname(chosen),
            )
            _in_thread(libc, netns_fd, _configure_inside, network.agent_address)
        except BaseException as exc:
            if network is not None:
                network.close()
            else:
                os.close(netns_fd)
            if isinstance(exc, NetlinkError):
                raise NetnsError(f"building the agent's network for run {run_id}: {exc}") from None
            raise
        return network

    def install_redirects(
        self, dns_port: int, proxy_port: int, *, loopback_dns: bool = True
    ) -> None:
        """Load the nftables table ``inet agentd`` inside the agent's namespace: TCP/UDP port 53
        to ``host_address:dns_port``, TCP 80/443 to ``host_address:proxy_port``, anything else
        leaving by the veth refused (TCP reset, else ICMP admin-prohibited). With
        ``loopback_dns`` port 53 on 127.0.0.0/8 (systemd-resolved's 127.0.0.53 in resolv.conf)
        is redirected too; pass False when a stub listens inside (``listen_socket_inside``).
        Only then does the agent's end of the veth come up with its default route: until this
        call the agent has loopback and nothing else (fail closed). Calling it again replaces
        the table atomically."""
        self._check_open()
        for name, port in (("dns_port", dns_port), ("proxy_port", proxy_port)):
            if not isinstance(port, int) or not 0 < port < 65536:
                raise ValueError(f"{name} must be a port number, not {port!r}")
        if not os.path.exists(self._nft):
            raise NetnsUnavailable("nft (nftables) is not installed; scripts/setup installs it")
        fields = {
            "host": self.host_address,
            "agent": self.agent_address,
            "agent_if": AGENT_IFNAME,
            "dns_port": dns_port,
            "proxy_port": proxy_port,
        }
        fields["loopback_dns"] = LOOPBACK_DNS_RULE.format(**fields) if loopback_dns else ""
        _in_thread(
            self._libc,
            self.netns_fd,
            _open_inside,
            self._nft,
            RULESET_TEMPLATE.format(**fields),
            self.host_address,
        )
        self.dns_port, self.proxy_port = dns_port, proxy_port

    # -- using -----------------------------------------------------------------------------

    def enter(self) -> None:
        """Move the calling process into the agent's namespace. For the child between fork and
        exec: one setns(2) on the fd opened before the fork, nothing else. Call it while still
        privileged and before the seccomp filter goes in. OSError if the kernel refuses."""
        self._libc.enter(self.netns_fd)

    @property
    def netns_path(self) -> str:
        return f"/proc/{os.getpid()}/fd/{self.netns_fd}"

    def run_inside(self, fn, *args):
        """``fn(*args)`` in a thread inside the agent's namespace (its sockets and forked
        children stay there); returns what ``fn`` returns, raises what it raises."""
        self._check_open()
        return _in_thread(self._libc, self.netns_fd, fn, *args)

    def listen_socket_inside(self, family: int, type: int, addr) -> socket.socket:
        """A socket created and bound inside the agent's namespace (e.g. a DNS stub on
        ``("127.0.0.53", 53)``); it stays there while the supervisor uses it from any thread.
        TCP callers still call ``listen()``."""

        return self.run_inside(bound_socket, family, type, addr)

    def original_destination(
        self, agent_port: int, proto: int = socket.IPPROTO_TCP, to_port: int | None = None
    ) -> tuple[str, int] | None:
        """Where the agent meant to go before ``install_redirects`` rewrote it: looks up the
        conntrack entry inside the namespace whose reply tuple is ``host_address:to_port ->
        agent_address:agent_port`` (``to_port`` defaults to the proxy port for TCP and the DNS
        port for UDP) and returns its original (address, port), or None if there is none.
        The proxy's accepted socket lives in the supervisor's namespace, where SO_ORIGINAL_DST
        knows nothing of this NAT."""
        self._check_open()
        if to_port is None:
            to_port = self.proxy_port if proto == socket.IPPROTO_TCP else self.dns_port
        if to_port is None:
            raise NetnsError("install_redirects has not run: there is nothing to look up")
        if self._conntrack is None:
            self._conntrack = _in_thread(self._libc, self.netns_fd, _ConntrackLookup.open_here)
        return self._conntrack.original(
            proto, self.host_address, self.agent_address, to_port, agent_port
        )

    def redirected_destination(self, sock: socket.socket) -> tuple[str, int] | None:
        """For a connection the supervisor accepted from the agent (``sock``): where the agent
        was really connecting when ``install_redirects`` sent it here, or None when it was not
        redirected (it came straight to this socket, e.g. through ``HTTP_PROXY``, or is not
        the agent's). Same shape as ``proxy.original_destination(sock)``, which reads
        ``SO_ORIGINAL_DST`` and so cannot see NAT done in this namespace: pass this method as
        the proxy's ``original_destination``."""
        local, peer = sock.getsockname(), sock.getpeername()
        if peer[0] != self.agent_address or local[0] != self.host_address:
            return None
        proto = socket.IPPROTO_TCP if sock.type == socket.SOCK_STREAM else socket.IPPROTO_UDP
        found = self.original_destination(peer[1], proto, to_port=local[1])
        if found is None or found == (self.host_address, local[1]):
            return None
        return found

    def counters(self) -> dict[str, int]:
        """Packets counted by the ruleset's named counters (``redirected_dns``,
        ``redirected_web``, ``refused_tcp``, ``refused_other``); {} before
        ``install_redirects``."""
        self._check_open()
        if self.dns_port is None:
            return {}
        text = _in_thread(
            self._libc,
            self.netns_fd,
            _run_nft,
            self._nft,
            "",
            "-j",
            "list",
            "counters",
            "table",
            "inet",
            "agentd",
        )
        found = {}
        for item in json.loads(text).get("nftables", []):
            counter = item.get("counter")
            if counter:
                found[counter["name"]] = counter["packets"]
        return found

    def host_sysctl(self, family: str, key: str) -> str:
        """The value of ``net.<family>.conf.<host end>.<key>`` (tests and diagnostics)."""
        return _read_sysctl(self.host_ifname, family, key)

    # -- ending ----------------------------------------------------------------------------

    def close(self) -> None:
        """Delete the veth pair (both ends go together) and drop our hold on the namespace;
        the kernel frees it once the agent's processes are gone too. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            _in_thread(self._libc, HOST_NETNS, _delete_link, self.host_ifname)
        except NetlinkError as exc:
            raise NetnsError(f"deleting {self.host_ifname} for run {self.run_id}: {exc}") from None
        finally:
            if self._conntrack is not None:
                self._conntrack.close()
            os.close(self.netns_fd)

    def _check_open(self) -> None:
        if self._closed:
            raise NetnsError(f"the agent network of run {self.run_id} is closed")

    def __enter__(self) -> AgentNetwork:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd {self.netns_fd}"
        return (
            f"AgentNetwork(run {self.run_id}: {self.host_ifname} {self.host_address} <-> "
            f"{self.agent_ifname} {self.agent_address}, {state})"
        )


def cleanup_stale() -> list[str]:
    """Delete host veth ends left by a supervisor that died while its agent lived on (the
    namespace outlives the supervisor only through the agent's processes). An end is stale when
    the pid in its alias is gone or is now another process. Returns the deleted names."""
    if os.geteuid() != 0:
        raise NetnsUnavailable(f"removing veth pairs needs root; euid is {os.geteuid()}")
    return _in_thread(_Libc.load(), HOST_NETNS, _remove_stale)


def _remove_stale() -> list[str]:
    removed = []
    with _PoolLock(), IPRoute() as ipr:
        for msg in ipr.link("dump"):
            name = msg.get_attr("IFLA_IFNAME") or ""
            alias = msg.get_attr("IFLA_IFALIAS") or ""
            if not name.startswith(HOST_IFNAME_PREFIX) or not alias.startswith(ALIAS_PREFIX):
                continue
            owner = dict(f.split("=", 1) for f in alias.split()[1:] if "=" in f)
            try:
                pid = int(owner.get("pid", ""))
            except ValueError:
                continue
            if _process_start_time(pid) == owner.get("start"):
                continue  # its supervisor is alive
            try:
                ipr.link("del", index=msg["index"])
                removed.append(name)
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:
                    raise
    return removed


# -- conntrack lookup (ctnetlink, hand-rolled: one request, one answer) ---------------------
# Hand-written although pyroute2 has conntrack (Conntrack, AsyncConntrack): its sync API opens
# its socket in the calling thread (so a lookup from the proxy's thread asks the host's
# namespace), closes a socket handed to it after one call, and refuses to run inside the
# proxy's running event loop; the async API works on a socket made here but takes ~360 us a
# lookup against ~15 us, and would make original_destination a coroutine. docs/network.md
# ("Where the agent meant to go") has the measurements.

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET = 1
NLM_F_REQUEST = 0x1
NLA_F_NESTED = 0x8000
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY = 1, 2
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
NLMSG_ERROR = 2


def _nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _parse_nlas(data: bytes) -> dict[int, bytes]:
    found, offset = {}, 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        found[kind & 0x3FFF] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return found


class _ConntrackLookup:
    """One ctnetlink socket opened inside the agent's namespace (it stays bound there) and
    reused for every lookup; a lock keeps request and answer together across threads."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.seq = 0

    @classmethod
    def open_here(cls) -> _ConntrackLookup:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER
        )
        sock.settimeout(2.0)
        sock.bind((0, 0))
        return cls(sock)

    def original(
        self, proto: int, host: str, agent: str, host_port: int, agent_port: int
    ) -> tuple[str, int] | None:
        """The original destination of the entry whose reply tuple is host:host_port ->
        agent:agent_port, or None when conntrack has no such entry."""
        reply = _nla(
            CTA_TUPLE_REPLY | NLA_F_NESTED,
            _nla(
                CTA_TUPLE_IP | NLA_F_NESTED,
                _nla(CTA_IP_V4_SRC, socket.inet_aton(host))
                + _nla(CTA_IP_V4_DST, socket.inet_aton(agent)),
            )
            + _nla(
                CTA_TUPLE_PROTO | NLA_F_NESTED,
                _nla(CTA_PROTO_NUM, bytes([proto]))
                + _nla(CTA_PROTO_SRC_PORT, struct.pack("!H", host_port))
                + _nla(CTA_PROTO_DST_PORT, struct.pack("!H", agent_port)),
            ),
        )
        body = struct.pack("=BBH", socket.AF_INET, 0, 0) + reply
        with self.lock:
            self.seq += 1
            # INVARIANT: no NLM_F_ACK, so a GET has exactly one answer (the entry or an error)
            header = struct.pack(
                "=IHHII",
                16 + len(body),
                (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
                NLM_F_REQUEST,
                self.seq,
                0,
            )
            self.sock.send(header + body)
            while True:
                answer = self.sock.recv(65536)
                length, kind, _flags, seq = struct.unpack_from("=IHHI", answer, 0)
                if seq == self.seq:
                    break
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", answer, 16)[0]
            if code == errno.ENOENT:
                return None
            raise NetnsError(f"conntrack lookup for {agent}:{agent_port}: {os.strerror(code)}")
        attrs = _parse_nlas(answer[20:length])
        orig = _parse_nlas(attrs.get(CTA_TUPLE_ORIG, b""))
        ip = _parse_nlas(orig.get(CTA_TUPLE_IP, b""))
        ports = _parse_nlas(orig.get(CTA_TUPLE_PROTO, b""))
        if CTA_IP_V4_DST not in ip or CTA_PROTO_DST_PORT not in ports:
            return None
        return (
            socket.inet_ntoa(ip[CTA_IP_V4_DST]),
            struct.unpack("!H", ports[CTA_PROTO_DST_PORT])[0],
        )

    def close(self) -> None:
        self.sock.close()
