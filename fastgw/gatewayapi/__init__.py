"""Kubernetes Gateway API front end: Gateway, HTTPRoute, Service and EndpointSlice manifests as config.

`load_manifests(text, file)` maps a multi-document YAML stream to a validated native `GatewayConfig`
(errors: `ConfigError` with `$[<document>].<path>` and lines in the manifests);
`manifests_to_native` gives the plain native dict; `config_to_yaml` prints a config in the native
format (`fastgw convert`). See docs/gateway-api.md.
"""

from .convert import config_to_dict, config_to_yaml
from .frontend import GATEWAY_GROUP, PortMap, load_manifests, manifests_to_native
from .manifests import looks_like_manifests

__all__ = [
    "GATEWAY_GROUP",
    "PortMap",
    "config_to_dict",
    "config_to_yaml",
    "load_manifests",
    "looks_like_manifests",
    "manifests_to_native",
]
