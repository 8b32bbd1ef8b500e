"""Named IP address sets and the destination of a network action, for the address conditions.

This module owns the address sets a policy may name (``loopback``, ``private``, ``link_local``,
``metadata``, ``ula``, ``cgnat``, ``multicast``, ``unspecified``, ``reserved``, their union
``internal`` and its complement ``public``), literal CIDRs as set items, and how an address is
read from a ``network_connect`` target (``1.2.3.4:443``, ``[::1]:80``, ``name:443``,
``unix:...``) or a ``network_request`` URL. An IPv6 address that carries an IPv4 address the
packets really go to (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible ``::a.b.c.d``, NAT64
``64:ff9b::/96``) belongs to the named sets of that IPv4 address; a 6to4 address (``2002::/16``)
to those of both. Pure Python (``ipaddress``), no I/O, no name resolution: a host name has no
address here, and callers treat that as missing evidence. All tables are immutable constants.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# The named sets. An address may be in several (169.254.169.254 is link_local and metadata).
ADDRESS_SETS: Mapping[str, tuple[IPNetwork, ...]] = types.MappingProxyType(
    {
        "loopback": _networks("127.0.0.0/8", "::1/128"),
        "private": _networks("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"),
        "link_local": _networks("169.254.0.0/16", "fe80::/10"),
        # Instance metadata and credential endpoints: AWS/GCP/Azure/Oracle 169.254.169.254, AWS IPv6
        # fd00:ec2::254, AWS ECS task credentials 169.254.170.2, Alibaba 100.100.100.200, Azure's
        # WireServer 168.63.129.16 (a platform address inside public space).
        "metadata": _networks(
            "169.254.169.254/32",
            "169.254.170.2/32",
            "fd00:ec2::254/128",
            "100.100.100.200/32",
            "168.63.129.16/32",
        ),
        "ula": _networks("fc00::/7"),
        "cgnat": _networks("100.64.0.0/10"),
        "multicast": _networks("224.0.0.0/4", "ff00::/8"),
        "unspecified": _networks("0.0.0.0/8", "::/128"),
        # Not reachable as public internet services: IETF protocol assignments, documentation and
        # benchmarking ranges (198.18/15 is also what fake-IP DNS proxies hand out), 240/4 and the
        # limited broadcast, the IPv6 discard prefix, documentation prefixes, deprecated site-local,
        # local-use NAT64. Every IPv6 address outside 2000::/3 that no other set names is reserved
        # too.
        "reserved": _networks(
            "192.0.0.0/24",
            "192.0.2.0/24",
            "198.18.0.0/15",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "240.0.0.0/4",
            "100::/64",
            "2001:2::/48",
            "2001:db8::/32",
            "3fff::/20",
            "fec0::/10",
            "64:ff9b:1::/48",
        ),
    }
)
INTERNAL_PARTS = frozenset(ADDRESS_SETS)  # every named set above is internal
# The same sets as integer ranges per IP version, for a classification without object compares.
_RANGES: Mapping[int, tuple[tuple[str, int, int], ...]] = types.MappingProxyType(
    {
        version: tuple(
            (name, int(net.network_address), int(net.broadcast_address))
            for name, networks in ADDRESS_SETS.items()
            for net in networks
            if net.version == version
        )
        for version in (4, 6)
    }
)
SET_NAMES: tuple[str, ...] = (*ADDRESS_SETS, "internal", "public")

_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
_V4_PART = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")
_PORT = re.compile(r"[0-9]{1,5}")
_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?")
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# characters that make URL parsers disagree about the host (the SSRF parser-differential tricks)
_AMBIGUOUS_NETLOC = re.compile(r"[\\\s\x00-\x1f\x7f]")


# --- reading addresses ------------------------------------------------------------------------


def parse_address(text: str) -> IPAddress:
    """A canonical IPv4 or IPv6 address (``1.2.3.4``, ``::1``, ``fe80::1%eth0``); ValueError."""
    if not isinstance(text, str):
        raise ValueError(f"an IP address must be a string, got {type(text).__name__}")
    return ipaddress.ip_address(text.strip())


def parse_host(host: str) -> IPAddress | None:
    """The address a host part of a target names, or None for a name.

    Besides canonical forms this reads the numeric IPv4 forms ``inet_aton`` (and so
    ``getaddrinfo``) accepts, ``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``: a client
    connects to 127.0.0.1 for each of them. IPv6 hosts come with or without brackets.
    """
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    return _inet_aton(host)


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_V4_PART.fullmatch(p) for p in parts):
        return None
    values = [
        int(p, 16) if p[:2] in ("0x", "0X") else int(p, 8) if len(p) > 1 and p[0] == "0" else int(p)
        for p in parts
    ]
    *head, last = values
    if any(v > 255 for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    number = last
    for index, value in enumerate(head):
        number |= value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def split_connect_target(target: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``network_connect`` target, or None (unix sockets, malformed).

    ``1.2.3.4:443`` -> ``("1.2.3.4", 443)``; ``[::1]:80`` -> ``("::1", 80)``;
    ``api.github.com:443`` -> ``("api.github.com", 443)``; ``unix:/run/x.sock`` -> None.
    An unbracketed IPv6 address (``::1:80``) is ambiguous and gives None.
    """
    if not isinstance(target, str) or target.startswith("unix:"):
        return None
    host, sep, port = target.rpartition(":")
    if not sep or not _PORT.fullmatch(port) or int(port) > 65535 or not host:
        return None
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            return None
        inner = host[1:-1]
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            return None
        return inner, int(port)
    if ":" in host or not _HOST_NAME.fullmatch(host):
        return None
    return host, int(port)


def url_host(url: str) -> str | None:
    """The host of a ``network_request`` URL (brackets removed), or None if it is unclear."""
    if not isinstance(url, str) or not _URL_SCHEME.match(url):
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises for a malformed port
    except ValueError:
        return None
    if not host or _AMBIGUOUS_NETLOC.search(parts.netloc):
        return None
    return host


def target_host(target: str) -> str | None:
    """The host a connect target or a URL names (an address or a name); None for unix sockets."""
    if isinstance(target, str) and _URL_SCHEME.match(target):
        return url_host(target)
    split = split_connect_target(target)
    return split[0] if split else None


def target_address(target: str) -> IPAddress | None:
    """The literal address in a connect target or URL, or None (a name, unix, malformed)."""
    host = target_host(target)
    return parse_host(host) if host is not None else None


# --- classifying --------------------------------------------------------------------------------


def effective_addresses(address: IPAddress) -> tuple[IPAddress, ...]:
    """The addresses packets to ``address`` really go to, for matching named sets.

    IPv4-mapped, IPv4-compatible (but not ``::`` and ``::1``) and NAT64 addresses are their IPv4
    address; a 6to4 address is itself and its embedded IPv4 address; others are themselves.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return (address.ipv4_mapped,)
        if address in _NAT64 or (address in _COMPATIBLE and int(address) > 1):
            return (ipaddress.IPv4Address(int(address) & 0xFFFFFFFF),)
        if address.sixtofour is not None:
            return (address, address.sixtofour)
    return (address,)


def _named_sets(address: IPAddress) -> set[str]:
    number = int(address)
    names = {name for name, low, high in _RANGES[address.version] if low <= number <= high}
    if not names and address.version == 6 and address not in _GLOBAL_UNICAST_V6:
        names.add("reserved")
    return names


def classify(address: IPAddress | str) -> frozenset[str]:
    """Every set name ``address`` belongs to: e.g. ``{"loopback", "internal"}`` or ``{"public"}``.

    A string is parsed with ``parse_address`` (ValueError when it is not an address).
    """
    if not isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        address = parse_address(address)
    names: set[str] = set()
    for form in effective_addresses(address):
        names |= _named_sets(form)
    names.add("internal" if names & INTERNAL_PARTS else "public")
    return frozenset(names)


# --- set lists as condition values --------------------------------------------------------------


@dataclass(frozen=True)
class AddressSets:
    """A validated list of set names and CIDRs; ``match`` says which item holds an address."""

    names: frozenset[str]
    networks: tuple[tuple[str, IPNetwork], ...]  # (as written, parsed)

    def match(self, address: IPAddress) -> str | None:
        """The first item (set name or CIDR as written) containing ``address``, or None."""
        if self.names:
            hit = self.names & classify(address)
            if hit:
                return sorted(hit)[0]
        forms = {address, *effective_addresses(address)}
        for written, network in self.networks:
            if any(f.version == network.version and f in network for f in forms):
                return written
        return None


def _item_problem(item: Any) -> str | None:
    if not isinstance(item, str) or not item.strip():
        return f"{item!r} is not a set name or CIDR (a string)"
    text = item.strip()
    if text in SET_NAMES:
        return None
    if not (text[0].isdigit() or ":" in text or "/" in text or "." in text):
        close = difflib.get_close_matches(text, SET_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown address set {text!r}{hint}; known: {', '.join(SET_NAMES)}, or a CIDR"
    try:
        ipaddress.ip_network(text)
    except ValueError as exc:
        fix = ""
        try:
            fix = f" (did you mean {str(ipaddress.ip_network(text, strict=False))!r}?)"
        except ValueError:
            pass
        return f"invalid CIDR {text!r}: {exc}{fix}"
    return None


def validate_address_sets(items: Any) -> str | None:
    """The problem with a condition value (a non-empty list of set names / CIDRs), or None."""
    if not isinstance(items, (list, tuple)) or not items:
        return (
            f"expected a non-empty list of address set names ({', '.join(SET_NAMES)}) "
            f"or CIDRs like '10.1.0.0/16', got {items!r}"
        )
    problems = [p for p in (_item_problem(item) for item in items) if p]
    return "; ".join(problems) if problems else None


def compile_address_sets(items: Iterable[Any]) -> AddressSets:
    """An ``AddressSets`` from a validated list; ValueError naming the bad item otherwise."""
    items = list(items) if not isinstance(items, (list, tuple)) else items
    problem = validate_address_sets(items)
    if problem:
        raise ValueError(problem)
    return build_address_sets(items)


def build_address_sets(items: Iterable[str]) -> AddressSets:
    """``compile_address_sets`` for a list already validated (a pattern's condition value).

    Skips the diagnostics; an item that is neither a set name nor a CIDR still raises ValueError.
    """
    names: list[str] = []
    networks: list[tuple[str, IPNetwork]] = []
    for item in items:
        text = item.strip()
        if text in SET_NAMES:
            names.append(text)
        else:
            networks.append((text, ipaddress.ip_network(text)))
    return AddressSets(frozenset(names), tuple(networks))


# --- the destination of an action ---------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """The addresses known for an action's destination, and where they came from."""

    addresses: tuple[IPAddress, ...]  # empty: unknown
    source: str  # human-readable: "dest_ip 10.0.0.5", "target host", or why it is unknown


def destination(target: str, context: Mapping[str, Any]) -> Destination:
    """Every address known for where ``target`` goes: ``dest_ip`` and a literal target host.

    ``dest_ip`` (a string or a list of strings) is set by the supervisor after resolution; a
    literal address in the target is evidence too. A malformed ``dest_ip`` makes the destination
    unknown (not merely the target's address): callers fail closed on an empty result.
    """
    known: list[IPAddress] = []
    sources: list[str] = []
    dest_ip = context.get("dest_ip")
    if dest_ip is not None:
        values = dest_ip if isinstance(dest_ip, (list, tuple)) else [dest_ip]
        if not values:
            return Destination((), "dest_ip is empty")
        for value in values:
            try:
                known.append(parse_address(value))
            except ValueError:
                return Destination((), f"dest_ip {value!r} is not an IP address")
        sources.append(f"dest_ip {', '.join(str(a) for a in known)}")
    host = target_host(target) if isinstance(target, str) else None
    literal = parse_host(host) if host is not None else None
    if literal is not None:
        if literal not in known:
            known.append(literal)
        sources.append(f"target host {literal}")
    if known:
        return Destination(tuple(known), " and ".join(sources))
    if host is None:
        return Destination((), "no dest_ip, and the target has no host")
    return Destination((), f"no dest_ip, and the target host {host!r} is a name")
