"""One run's network plane: the namespace, the DNS stub and the proxy, wired to the policy.

Owns the composition: ``NetworkPlane.start`` builds the agent's network namespace
(``netns.AgentNetwork``), starts the DNS stub and the HTTP proxy on the supervisor's end of the
veth, points the namespace's redirects at them, and hands the supervisor three things: a child
step (``enter``: the agent's process joins the namespace between fork and exec), the proxy
variables for the agent's environment, and a ``decide.NetworkView`` (names the stub resolved,
the plane's own endpoints) for judging connect() at the tracer. The proxy's judge evaluates
``network_request`` on the method and full URL (``https://host:port/`` for TLS) together with
``network_connect`` on ``host:port`` and on the address it will really connect to, with
``method``, ``headers`` and ``dest_ip`` in the context; the most restrictive answer wins, and
every evaluation is recorded in the run's FlightRecorder from the thread that made it (the
recorders are thread-safe). A kill verdict from the proxy kills the agent tree; a stop verdict
is refused like a block (a request cannot be held for review: the agent's TCP client would time
out). Any error while judging refuses (fail closed). Two kinds share that logic
(``PolicyPlane``): ``NetworkPlane`` (root: a veth to the supervisor, nftables redirects) and
``UsernsPlane`` (no root: the agent's child makes a user + network namespace with loopback only,
and hands the supervisor sockets bound there for the stub and the proxy, ``userns.py``; no
transparent redirect). When neither can be built, ``start`` raises ``PlaneUnavailable`` with the
reason, and the caller warns and keeps the connect()-level control of the tracer.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from agentd.trace import decide
from agentd.trace.decode import Action

from .dns import DnsStub, DnsStubError, NameBook, system_nameservers
from .proxy import EgressProxy
from .userns import PROXY_ADDRESS, NamespaceHandoff, namespace_nameservers, userns_unavailable

if TYPE_CHECKING:
    from .netns import AgentNetwork
if os.geteuid() == 0:
    # Only root builds the veth plane (netns.py), and its pyroute2 costs ~70 ms to import: an
    # unprivileged run (the user namespace plane) skips it. Root processes import it here, once;
    # the daemon imports this module before it forks supervisors.
    from . import netns as _netns  # noqa: F401

__all__ = [
    "PolicyPlane",
    "NetworkPlane",
    "UsernsPlane",
    "PlaneUnavailable",
    "PROXY_VARIABLES",
    "NO_PROXY_VARIABLES",
    "LOOPBACK_BYPASS",
]

log = logging.getLogger("agentd.netplane")

# Both spellings: curl and Python read the lower-case ones, many other tools the upper-case.
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
# The agent's loopback is its own namespace's: servers it starts there (a test suite's local
# HTTP server) are out of the proxy's reach, so clients must not send those requests to it.
# Names and addresses for urllib (exact host or suffix match), the CIDR for requests and curl.
LOOPBACK_BYPASS = ("localhost", "127.0.0.1", "::1", "127.0.0.0/8")
NO_PROXY_VARIABLES = ("NO_PROXY", "no_proxy")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class PlaneUnavailable(RuntimeError):
    """The network plane cannot be built here (not root, no nftables, no namespaces)."""


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _default_upstream() -> list[tuple[str, int]]:
    try:
        return system_nameservers()
    except DnsStubError as exc:
        # A host without a resolver: the agent's names fail (SERVFAIL), as they would
        # without agentd; literal addresses still work through the proxy.
        log.warning("the DNS stub has no upstream: %s", exc)
        return []


class PolicyPlane:
    """What every kind of plane does with the policy: judge the proxy's requests, resolve for
    the proxy through the run's stub, record the stub's queries and the proxy's other answers.
    ``session`` is the run's ``Session`` (its ``policy`` is read at each decision, so a daemon
    reload applies at once; its ``record`` writes the audit log); ``kill_agent`` kills the agent
    tree (a kill verdict from the proxy). A subclass sets ``dns``, ``proxy``, ``endpoints`` and
    says where the supervisor itself reaches the stub (``_lookup_address``)."""

    # Whether ``enter`` leaves the agent's child in a user namespace of its own, holding every
    # capability there until the bounding set is dropped (run/assembly.py: its IPC namespace).
    user_namespace = False

    def __init__(self, session, book: NameBook):
        self.session = session
        self.book = book
        self.dns: DnsStub | None = None
        self.proxy: EgressProxy | None = None
        self.endpoints: frozenset[str] = frozenset()
        self.kill_agent: Callable[[], None] | None = None

    # -- what the supervisor uses ---------------------------------------------------------
    def enter(self) -> None:
        """Child step, after the tracer seized the child and before Landlock and seccomp."""
        raise NotImplementedError

    def started(self, pid: int) -> None:
        """The agent's process exists (the supervisor, after the fork)."""

    def attach(self, tracer) -> None:
        """A kill verdict from the proxy kills ``tracer``'s agent tree (``kill_tree`` is safe
        to call from the proxy's thread)."""
        self.kill_agent = tracer.kill_tree

    def proxy_url(self) -> str:
        raise NotImplementedError

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The variables the agent gets on top of ``base`` (its environment): the proxy, and
        the loopback addresses added to whatever no-proxy list ``base`` already has."""
        url = self.proxy_url()
        variables = {name: url for name in PROXY_VARIABLES}
        for name in NO_PROXY_VARIABLES:
            given = [entry.strip() for entry in (base or {}).get(name, "").split(",")]
            entries = [entry for entry in given if entry]
            entries += [entry for entry in LOOPBACK_BYPASS if entry not in entries]
            variables[name] = ",".join(entries)
        return variables

    def view(self) -> decide.NetworkView:
        return decide.NetworkView(self.book.names_for, self.endpoints, own_loopback=True)

    def _lookup_address(self) -> tuple[str, int]:
        raise NotImplementedError

    # -- the proxy's and the stub's callbacks (their threads) -------------------------------
    def _resolve(self, host: str) -> list[str]:
        """Addresses for ``host``: a literal stays itself; a name the agent resolved through
        the stub gets the same answer (what the agent saw is what is judged); any other name is
        asked of the stub itself, so the proxy and the agent see one answer, from one upstream,
        recorded once, and the name book learns it."""
        if _is_address(host.strip("[]")):
            return [host.strip("[]")]
        known = self.book.addresses_for(host)
        if known:
            return list(known)
        import dns.resolver

        resolver = dns.resolver.Resolver(configure=False)
        ip, port = self._lookup_address()
        resolver.nameservers = [ip]
        resolver.port = port
        resolver.lifetime = 5.0
        found: list[str] = []
        for qtype in ("A", "AAAA"):
            try:
                found += [rdata.to_text() for rdata in resolver.resolve(host, qtype)]
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as exc:
                if not found:
                    raise OSError(f"cannot resolve {host}: {exc}") from None
        return found

    def _judge(
        self, method: str, url: str, headers: dict[str, str], dest_ip: str
    ) -> decide.Evaluation:
        session = self.session
        context = {
            "agent_id": session.agent_id,
            "method": method,
            "headers": headers,
            "dest_ip": dest_ip,
            "syscall": "proxy",
        }
        try:
            parts = urllib.parse.urlsplit(url)
            host = (parts.hostname or "").lower()
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
            names = () if _is_address(host) else (host,)
            policy = session.current_policy()  # a reload applies to the next request
            evaluations = [decide.evaluate_action(policy, Action("network_request", url), context)]
            if dest_ip:
                ip_form = f"[{dest_ip}]:{port}" if ":" in dest_ip else f"{dest_ip}:{port}"
                evaluations += decide.connect_evaluations(
                    policy,
                    Action("network_connect", ip_form),
                    context,
                    decide.NetworkView(lambda ip: names),
                )
            else:  # the name did not resolve: judged by name (the proxy then answers 502)
                del context["dest_ip"]
                evaluations += [
                    decide.evaluate_action(
                        policy, Action("network_connect", f"{name}:{port}"), context
                    )
                    for name in names
                ]
        except Exception as exc:  # INVARIANT: an error while deciding denies (fail closed)
            evaluations = [
                decide.Evaluation(
                    "network_request",
                    url,
                    "deny",
                    decide.Outcome.BLOCK,
                    f"fail closed: error while judging: {exc!r}",
                    ("agentd:fail_closed",),
                )
            ]
        worst = max(evaluations, key=lambda e: decide.OUTCOME_RANK[e.outcome])
        enforced: str = worst.outcome  # the audit record's word (an Outcome is its own word)
        if enforced == "stop":
            enforced = "block (a proxied request cannot be held for review)"
        if session.audit_only and worst.outcome not in ("allow", "warn"):
            enforced = "allow (audit mode)"
        for evaluation in evaluations:
            if not session.record(None, "proxy", evaluation, enforced=enforced, method=method):
                # INVARIANT: nothing passes unrecorded
                return decide.Evaluation(
                    "network_request",
                    url,
                    "deny",
                    decide.Outcome.BLOCK,
                    "fail closed: the audit record could not be written",
                    ("agentd:fail_closed",),
                )
        if session.audit_only:
            return decide.Evaluation(
                worst.action_type,
                worst.target,
                "allow",
                decide.Outcome.ALLOW,
                f"audit mode: {worst.reason}",
                worst.pattern_ids,
            )
        if worst.outcome == "kill" and self.kill_agent is not None:
            session.killed = True
            self.kill_agent()
        return worst

    def _proxy_outcome(self, record: dict) -> None:
        """What the judge did not see: a malformed request (400/431/501) and an upstream that
        could not be reached (502). Judged requests were recorded by ``_judge``."""
        status = record.get("status")
        if record.get("evaluation") is not None and status != 502:
            return
        target = record.get("url") or f"{record.get('host')}:{record.get('port')}"
        reason = record.get("reason") or f"HTTP {status}"
        evaluation = decide.Evaluation(
            "network_request",
            str(target),
            "deny",
            decide.Outcome.BLOCK,
            f"proxy answered {status}: {reason}",
        )
        self.session.record(
            None, "proxy", evaluation, enforced="block", status=status, client=record.get("client")
        )

    def _dns_query(self, report: dict) -> None:
        refused = bool(report.get("refused"))
        addresses = report.get("addresses") or ()
        if refused:
            reason = f"refused at the DNS stage: {report.get('reason') or ''}".rstrip(": ")
        elif report.get("reason"):
            reason = f"{report.get('rcode')}: {report['reason']}"
        else:
            reason = (
                f"resolved through the run's DNS stub ({report.get('rcode')}): "
                f"{', '.join(addresses) or 'no address'}"
            )
        evaluation = decide.Evaluation(
            "dns_query",
            f"{report.get('name')} {report.get('qtype')}",
            "deny" if refused else "allow",
            decide.Outcome.BLOCK if refused else decide.Outcome.ALLOW,
            reason,
        )
        self.session.record(
            None,
            "dns",
            evaluation,
            enforced=evaluation.outcome,
            client=report.get("client"),
            rcode=report.get("rcode"),
            addresses=list(addresses),
        )


class NetworkPlane(PolicyPlane):
    """The root plane: the agent's namespace has one veth to the supervisor, where the stub and
    the proxy listen; nftables inside it redirects DNS and web traffic to them."""

    # Never None here: the stub and the proxy are made before the plane (``start``).
    dns: DnsStub
    proxy: EgressProxy

    def __init__(self, session, network: AgentNetwork, dns: DnsStub, proxy: EgressProxy):
        super().__init__(session, dns.book)
        self.network = network
        self.dns = dns
        self.proxy = proxy
        host = network.host_address
        self.endpoints = frozenset({f"{host}:{dns.addresses[0][1]}", f"{host}:{proxy.address[1]}"})

    # -- building -------------------------------------------------------------------------
    @classmethod
    def start(
        cls, session, run_id: str, *, upstream: list[tuple[str, int]] | None = None
    ) -> NetworkPlane:
        from .netns import AgentNetwork, NetnsError, NetnsUnavailable

        try:
            network = AgentNetwork.create(run_id)
        except (NetnsUnavailable, NetnsError, OSError) as exc:
            raise PlaneUnavailable(str(exc)) from None
        dns = proxy = None
        plane: NetworkPlane | None = None

        def built() -> NetworkPlane:
            # INVARIANT: the stub and the proxy call back only once started, after the plane
            assert plane is not None
            return plane

        if upstream is None:
            upstream = _default_upstream()
        try:
            book = NameBook()
            dns = DnsStub(
                [(network.host_address, 0)],
                upstream=upstream,
                book=book,
                on_query=lambda report: built()._dns_query(report),
            )
            proxy = EgressProxy(
                (network.host_address, 0),
                judge=lambda *args: built()._judge(*args),
                resolve=lambda host: built()._resolve(host),
                quick_resolve=book.addresses_for,  # no thread hop when known
                on_decision=lambda record: built()._proxy_outcome(record),
                # the DNAT happened in the agent's namespace: its conntrack
                # knows the original destination, SO_ORIGINAL_DST here does not
                original_destination=network.redirected_destination,
            )
            plane = cls(session, network, dns, proxy)
            dns.start()
            proxy.start()
            network.install_redirects(dns.addresses[0][1], proxy.address[1])
        except BaseException as exc:
            for part in (proxy, dns, network):
                if part is not None:
                    try:
                        part.close()
                    except Exception:  # noqa: BLE001 - the first error is the one to report
                        log.exception("closing the half-built network plane")
            if isinstance(exc, (NetnsUnavailable, NetnsError)):
                raise PlaneUnavailable(str(exc)) from None
            raise
        return plane

    def close(self) -> None:
        for part in (self.proxy, self.dns, self.network):
            try:
                part.close()
            except Exception:  # noqa: BLE001 - close every part
                log.exception("closing the network plane")

    def enter(self) -> None:
        """Child step: the agent's process joins the namespace (before the privilege drop)."""
        self.network.enter()

    def proxy_url(self) -> str:
        return f"http://{self.network.host_address}:{self.proxy.address[1]}"

    def _lookup_address(self) -> tuple[str, int]:
        return self.dns.addresses[0]

    def describe(self) -> str:
        return (
            f"network namespace with one veth to {self.network.host_address}; DNS stub "
            f"{self.network.host_address}:{self.dns.addresses[0][1]} (upstream "
            f"{', '.join(f'{ip}:{port}' for ip, port in self.dns.upstream)}), proxy "
            f"{self.network.host_address}:{self.proxy.address[1]}"
        )


class UsernsPlane(PolicyPlane):
    """The plane without root. ``enter`` (the agent's child) makes a user + network namespace
    with loopback only and hands the supervisor sockets bound inside it: the stub's UDP and TCP
    on port 53 of each IPv4 nameserver of /etc/resolv.conf (those not in 127/8 become /32
    aliases of ``lo``), the proxy's on 127.0.0.1:3128. ``started`` (the supervisor, after the
    fork) starts a thread that receives them, starts the stub and the proxy on them and lets
    the child go on; until then the child waits, and if anything fails it exits 126 (fail
    closed). No nftables, so no transparent redirect: the agent reaches the web only through
    ``HTTP_PROXY``, names only through the stub, and every other destination has no route
    (``ENETUNREACH``). The stub also listens on the supervisor's 127.0.0.1 (a free port) for
    the proxy's own lookups, so the proxy and the agent see one answer, recorded once."""

    HANDOFF_TIMEOUT = 10.0  # seconds for the child to unshare, configure lo and bind
    user_namespace = True

    def __init__(self, session, handoff: NamespaceHandoff, upstream: list[tuple[str, int]]):
        super().__init__(session, NameBook())
        self.handoff = handoff
        self.upstream = list(upstream)
        proxy_ip, proxy_port = handoff.proxy
        self.endpoints = frozenset(
            {f"{ip}:53" for ip in handoff.nameservers} | {f"{proxy_ip}:{proxy_port}"}
        )
        self.error: BaseException | None = None
        self._lookup: tuple[str, int] | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def start(
        cls,
        session,
        run_id: str,
        *,
        upstream: list[tuple[str, int]] | None = None,
        nameservers: list[str] | None = None,
    ) -> UsernsPlane:
        """Prepared before the fork; nothing runs until ``enter`` and ``started``.
        ``PlaneUnavailable`` when the host refuses unprivileged user namespaces (the reason).
        ``nameservers``: where the stub listens inside (default: /etc/resolv.conf's)."""
        reason = userns_unavailable()
        if reason is not None:
            raise PlaneUnavailable(f"this host refuses unprivileged user namespaces: {reason}")
        if upstream is None:
            upstream = _default_upstream()
        handoff = NamespaceHandoff(
            namespace_nameservers() if nameservers is None else nameservers, PROXY_ADDRESS
        )
        reason = handoff.probe()
        if reason is not None:
            handoff.close()
            raise PlaneUnavailable(
                f"this host refuses the agent a user + network namespace: {reason}"
            )
        return cls(session, handoff, upstream)

    # -- what the supervisor uses ---------------------------------------------------------
    def enter(self) -> None:
        self.handoff.child_step()

    def started(self, pid: int) -> None:
        self.handoff.forked()
        with self._lock:
            if self._closed:
                return
            self._thread = threading.Thread(
                target=self._bring_up, name="agentd-userns-plane", daemon=True
            )
            self._thread.start()

    def proxy_url(self) -> str:
        ip, port = self.handoff.proxy
        return f"http://{ip}:{port}"

    def _lookup_address(self) -> tuple[str, int]:
        if self._lookup is None:
            raise OSError("the run's DNS stub is not running")
        return self._lookup

    def describe(self) -> str:
        ip, port = self.handoff.proxy
        upstream = ", ".join(f"{ip}:{port}" for ip, port in self.upstream) or "none"
        return (
            f"user namespace plane (no root): the agent has loopback only; DNS stub on "
            f"{', '.join(f'{ns}:53' for ns in self.handoff.nameservers)} inside it "
            f"(upstream {upstream}), proxy {ip}:{port} (HTTP_PROXY/HTTPS_PROXY); no "
            "transparent redirect: a client that ignores the proxy variables, and any other "
            "destination, has no route (ENETUNREACH)"
        )

    def _bring_up(self) -> None:
        """The supervisor's thread: the child's sockets -> the stub and the proxy -> the ack."""
        try:
            sockets = self.handoff.receive(self.HANDOFF_TIMEOUT)
            dns_sockets, proxy_socket = sockets[:-1], sockets[-1]
            try:
                # (127.0.0.1, 0) here, in the supervisor's namespace: the proxy's own lookups
                dns = DnsStub(
                    [("127.0.0.1", 0)],
                    sockets=dns_sockets,
                    upstream=self.upstream,
                    book=self.book,
                    on_query=self._dns_query,
                )
            except BaseException:
                proxy_socket.close()
                raise
            with self._lock:
                self.dns = dns
            self._lookup = next(
                address
                for address in dns.addresses
                if f"{address[0]}:{address[1]}" not in self.endpoints
            )
            proxy = EgressProxy(
                sockets=[proxy_socket],
                judge=self._judge,
                resolve=self._resolve,
                quick_resolve=self.book.addresses_for,
                on_decision=self._proxy_outcome,
                # no redirect in this namespace: every client is explicit
                original_destination=lambda sock: None,
            )
            with self._lock:
                self.proxy = proxy
                if self._closed:
                    return
            dns.start()
            proxy.start()
            self.handoff.acknowledge()
        except BaseException as exc:  # noqa: BLE001 - the child then exits 126 (fail closed)
            self.error = exc
            with self._lock:
                closed = self._closed
            if not closed:
                sys.stderr.write(
                    f"agentd run: network: cannot start the user namespace plane: {exc}\n"
                )
                sys.stderr.flush()
            self.handoff.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
        self.handoff.shutdown()  # a thread waiting for the child's sockets wakes up
        if thread is not None:
            thread.join(self.HANDOFF_TIMEOUT + 5.0)
        self.handoff.close()
        for part in (self.proxy, self.dns):
            if part is not None:
                try:
                    part.close()
                except Exception:  # noqa: BLE001 - close every part
                    log.exception("closing the network plane")
