"""A GatewayConfig as a minimal plain dict (defaults left out), for `fastgw convert`."""

from __future__ import annotations

from typing import Any

import msgspec
import yaml

from ..config.schema import Backend, GatewayConfig, Match

__all__ = ["config_to_dict", "config_to_yaml"]


def _plain(value: Any) -> Any:
    if isinstance(value, msgspec.Struct):
        out: dict[str, Any] = {}
        for f in msgspec.structs.fields(value):
            v = getattr(value, f.name)
            if f.default is not msgspec.NODEFAULT:
                default = f.default
            elif f.default_factory is not msgspec.NODEFAULT:
                default = f.default_factory()
            else:
                out[f.encode_name] = _plain(v)
                continue
            if isinstance(value, Match) and f.name == "path" and value.grpc is not None:
                continue          # `grpc` sets the path
            if v != default or (isinstance(value, Backend) and f.name == "upstream"):
                out[f.encode_name] = _plain(v)
        tagged = value.__struct_config__
        if tagged.tag_field is not None:      # a member of a tagged union (a policy) says which
            out = {tagged.tag_field: tagged.tag, **out}
        return out
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def config_to_dict(cfg: GatewayConfig) -> dict[str, Any]:
    """`cfg` as plain data that decodes back to an equal GatewayConfig; fields equal to their default
    are left out (except a backend's `upstream`: `upstream: null` says that backend answers 500)."""
    return _plain(cfg)


def config_to_yaml(cfg: GatewayConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False, allow_unicode=True)
