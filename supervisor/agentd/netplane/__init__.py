"""The network plane: a per-agent network namespace whose only way out is the supervisor.

``netns`` builds the namespace (loopback plus one veth pair to the supervisor's side,
nftables redirects of DNS and web traffic); ``dns`` is the per-run DNS stub that remembers which
names resolved to which addresses; ``proxy`` is the HTTP proxy that judges ``network_request`` on
the method and the full URL (or host and port for TLS); ``userns`` is the unprivileged variant
(the agent's child makes a user + network namespace and hands the supervisor sockets bound
inside it); ``sockets`` binds their listeners; ``plane`` composes them per run and wires them to
the policy. ``agent_os.netaddr`` names the address sets (loopback, private, link-local, ...) the
policies match on.
"""
