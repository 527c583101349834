"""Policies: a tagged union keyed by `type`, one Struct a kind, and their semantic checks.

A route's chain is the top-level `policies` (minus those the route names in `skip_policies`)
followed by the route's own, in the order written; docs/policies.md has the phases each kind runs in.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from msgspec import Meta

from .base import Base, Name
from .positions import Token
from .values import PositiveDuration

if TYPE_CHECKING:
    from .schema import GatewayConfig

__all__ = ["Consumer", "NoopPolicy", "PluginPolicy", "Policy", "PolicyBase", "RespondPolicy", "check_policies",
           "load_plugin_class", "plugin_config"]

ModuleRef = Annotated[
    str,
    Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$",
         description="package.module:Class", examples=["examples.plugins.tenant:TenantRouter"]),
]
Status = Annotated[int, Meta(ge=100, le=599)]
FinalStatus = Annotated[int, Meta(ge=200, le=599, description="A final status: an interim (1xx) one cannot end an exchange.")]
_GATEWAY_FIELDS = frozenset(("content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection",
                             "te", "trailer", "upgrade", "x-request-id"))
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class PolicyBase(Base, tag_field="type", kw_only=True):
    """What every policy has: an optional name (routes refer to top-level policies by it, and state
    carries over a reload by it; default: the type and its position)."""

    name: Name | None = None


class NoopPolicy(PolicyBase, tag="noop", kw_only=True):
    """Runs in every phase and does nothing: a placeholder, and the measure of the chain's own cost."""


class RespondPolicy(PolicyBase, tag="respond", kw_only=True):
    """Answers with a fixed response in the request phase (nginx's `return`); with
    `on_upstream_status`, in the response phase in place of an upstream response with one of those
    statuses (nginx's `error_page`)."""

    status: FinalStatus
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    body: str = ""
    on_upstream_status: Annotated[list[Status], Meta(min_length=1)] | None = None


class PluginPolicy(PolicyBase, tag="plugin", kw_only=True):
    """An in-process Python plugin: `module` names a class whose hooks (`on_request`, `on_response`,
    `on_log`; plain or `async def`) run in the worker. docs/plugins.md."""

    module: ModuleRef
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    """Handed to the class; validated against its `Config` Struct when it declares one."""
    timeout: PositiveDuration = 5.0
    """How long an `async` hook may keep the exchange paused (then 504)."""
    budget: PositiveDuration = 0.01
    """A hook slower than this is logged (at most once a second per plugin and phase)."""


# the auth and rate-limit policies' Structs live in their own modules, which build on PolicyBase above
from .auth import (  # noqa: E402
    ApiKeyPolicy,
    AuthPolicy,
    BasicAuthPolicy,
    Consumer,
    GroupsPolicy,
    IpAllowPolicy,
    IpDenyPolicy,
    TrustedProxiesPolicy,
    check_auth,
    check_auth_policy,
)
from .cors import CorsPolicy, check_cors  # noqa: E402
from .external_auth import ExternalAuthPolicy, check_external_auth  # noqa: E402
from .jwt import JwtPolicy, check_jwt  # noqa: E402
from .ratelimit import RateLimitPolicy, check_rate_limit, check_redis, route_capture_names  # noqa: E402

Policy = (NoopPolicy | RespondPolicy | PluginPolicy | ApiKeyPolicy | BasicAuthPolicy | AuthPolicy | GroupsPolicy
          | IpAllowPolicy | IpDenyPolicy | TrustedProxiesPolicy | JwtPolicy | ExternalAuthPolicy | CorsPolicy
          | RateLimitPolicy)

HOOKS = ("on_request", "on_response", "on_log")


def load_plugin_class(ref: str) -> type:
    """Imports `package.module:Class`. Raises ValueError with a message fit for a config error."""
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import error in the plugin itself is the user's to see
        raise ValueError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise ValueError(f"module {module_name!r} has no {attr!r}")
    if not inspect.isclass(cls):
        raise ValueError(f"{ref!r} is not a class")
    if not any(callable(getattr(cls, h, None)) for h in HOOKS):
        raise ValueError(f"{ref!r} has none of the hooks {', '.join(HOOKS)}")
    return cls


def plugin_config(cls: type, config: dict[str, Any]) -> Any:
    """The plugin's config: its `Config` Struct decoded from `config`, else the dict as written.
    Raises msgspec.ValidationError."""
    config_type = getattr(cls, "Config", None)
    if isinstance(config_type, type) and issubclass(config_type, msgspec.Struct):
        return msgspec.convert(config, config_type, strict=False)
    return config


def _validation_path(message: str) -> tuple[list[Token], str]:
    """msgspec's "... - at `$.a[0].b`" split into tokens below the plugin's `config`, and the text."""
    text, sep, where = message.rpartition(" - at `$")
    if not sep:
        return [], message
    tokens: list[Token] = []
    for part in where.rstrip("`").replace("]", "").replace("[", ".").split("."):
        if part:
            tokens.append(int(part) if part.isdigit() else part)
    return tokens, text


def policy_names(policies: list[Policy] | None) -> list[str]:
    """The name of each policy, given or derived (type and position)."""
    return [p.name or f"{type(p).__struct_config__.tag}-{i}" for i, p in enumerate(policies or ())]


def _check_list(policies: list[Policy] | None, base: list[Token], out: list, cfg: GatewayConfig | None = None,
                capture_names: set[str] | None = None
                ) -> None:
    seen: dict[str, int] = {}
    for i, (policy, name) in enumerate(zip(policies or (), policy_names(policies), strict=True)):
        path = [*base, i]
        if name in seen:
            out.append(([*path, "name"], f"duplicate policy name {name!r} (first at index {seen[name]})"))
        seen.setdefault(name, i)
        if isinstance(policy, RespondPolicy):
            for key, value in policy.headers.items():
                if key.lower() in _GATEWAY_FIELDS:
                    out.append(([*path, "headers", key], f"{key} is the gateway's to set"))
                elif not _TOKEN.match(key):
                    out.append(([*path, "headers", key], f"not a valid header name: {key!r}"))
                elif any(c in value for c in "\r\n\0"):
                    out.append(([*path, "headers", key], "a header value cannot contain CR, LF or NUL"))
        if isinstance(policy, JwtPolicy):
            check_jwt(policy, path, out)
        elif isinstance(policy, ExternalAuthPolicy):
            check_external_auth(policy, path, out)
        elif isinstance(policy, CorsPolicy):
            check_cors(policy, path, out)
        elif isinstance(policy, RateLimitPolicy):
            check_rate_limit(policy, path, capture_names, out)
        if cfg is not None:
            check_auth_policy(policy, path, cfg, out)
        if isinstance(policy, PluginPolicy):
            try:
                cls = load_plugin_class(policy.module)
            except ValueError as exc:
                out.append(([*path, "module"], str(exc)))
                continue
            try:
                plugin_config(cls, policy.config)
            except msgspec.ValidationError as exc:
                tokens, text = _validation_path(str(exc))
                out.append(([*path, "config", *tokens], text))


def check_policies(cfg: GatewayConfig, out: list) -> None:
    check_auth(cfg, out)
    _check_list(cfg.policies, ["policies"], out, cfg)
    check_redis(cfg, out)
    top = set(policy_names(cfg.policies))
    for i, route in enumerate(cfg.routes):
        _check_list(route.policies, ["routes", i, "policies"], out, cfg, route_capture_names(route))
        for j, name in enumerate(route.skip_policies or ()):
            if name not in top:
                shown = ", ".join(sorted(top)) or "none defined"
                out.append((["routes", i, "skip_policies", j],
                            f"no top-level policy named {name!r} (known: {shown})"))
