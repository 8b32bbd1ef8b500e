"""The network plane's HTTP egress proxy: judges the agent's web traffic before it leaves.

Owns the proxy and nothing else of the plane: ``server`` accepts the agent's connections,
judges each request (``network_request`` on method + URL, host + port for TLS), connects to
the one judged address and relays; ``http1`` is HTTP/1.1 as the proxy reads and writes it
(framed by h11, with agentd's stricter rules and its URL normalisation); ``tls_sni`` reads
the server name of a TLS ClientHello. The layers point one way: ``server`` uses ``http1`` and
``tls_sni``, which use neither ``server`` nor each other.

May import: the standard library, h11, ``agentd.trace`` (``Evaluation``), ``agentd.kernel``
and ``agent_os``, like the rest of ``agentd.netplane``; never ``agentd.run``,
``agentd.daemon`` or ``agentd.cli`` (tests/test_layers.py holds the layers). The policy, the
resolver and the audit log come in as callables (``plane.py`` wires them).
"""

from .http1 import (
    HOP_BY_HOP,
    BadRequest,
    RequestHead,
    normalise_path,
    parse_authority,
    parse_request_head,
)
from .server import IP6T_SO_ORIGINAL_DST, SO_ORIGINAL_DST, EgressProxy, Limits, original_destination
from .tls_sni import client_hello_sni

__all__ = [
    "EgressProxy",
    "Limits",
    "RequestHead",
    "BadRequest",
    "parse_request_head",
    "parse_authority",
    "normalise_path",
    "client_hello_sni",
    "original_destination",
    "HOP_BY_HOP",
    "SO_ORIGINAL_DST",
    "IP6T_SO_ORIGINAL_DST",
]
