"""fastgw configuration: msgspec Structs (the schema) and loading YAML/JSON/TOML with `$.path` errors.

`loads_native(text, fmt)` returns a frozen `GatewayConfig` or raises `ConfigError` listing every issue
(file, line, `$.path`, message); `fastgw.sources.load_config(path)` picks the format of a file. Durations are float seconds: `cfg.upstreams["users"].timeouts.connect == 2.0`.
See docs/config.md.
"""

from .errors import ConfigError, ConfigIssue
from .loader import FORMATS, load_config, loads_config, loads_native
from .schema import (
    GatewayConfig,
    Keepalive,
    Limits,
    Listener,
    Match,
    PathMatch,
    Route,
    Server,
    Target,
    Timeouts,
    Upstream,
    json_schema,
)
from .values import parse_address, parse_duration

__all__ = [
    "FORMATS",
    "ConfigError",
    "ConfigIssue",
    "GatewayConfig",
    "Keepalive",
    "Limits",
    "Listener",
    "Match",
    "PathMatch",
    "Route",
    "Server",
    "Target",
    "Timeouts",
    "Upstream",
    "json_schema",
    "load_config",
    "loads_config",
    "loads_native",
    "parse_address",
    "parse_duration",
]
