"""The network plane's HTTP egress proxy (being split up: ``server`` holds all of it for now)."""

from .server import (HOP_BY_HOP, IP6T_SO_ORIGINAL_DST, SO_ORIGINAL_DST, BadRequest,
                     EgressProxy, Limits, RequestHead, client_hello_sni, normalise_path,
                     original_destination, parse_authority, parse_request_head)

__all__ = ["EgressProxy", "Limits", "RequestHead", "BadRequest", "parse_request_head",
           "parse_authority", "normalise_path", "client_hello_sni", "original_destination",
           "HOP_BY_HOP", "SO_ORIGINAL_DST", "IP6T_SO_ORIGINAL_DST"]
