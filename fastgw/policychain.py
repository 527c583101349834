"""Compiles `policies` (top-level and per route) into one core PolicyChain per route.

Top-level policies are built once and shared by every route's chain (one object, one state); a
route's chain is the top-level policies it does not skip, then its own, in the order written. Each
policy has a stable key (`policies/<name>` or `routes/<route>/<name>`): a reload hands the new
policy the old one of the same key (`adopt`), and a plugin whose module and config did not change
keeps its instance, so what it holds survives the reload.
"""

from __future__ import annotations

from . import _core
from .accesslog import access_log_policy
from .auth.build import build_auth_policy
from .config import GatewayConfig
from .config.auth import AUTH_POLICIES
from .config.cors import CorsPolicy
from .config.external_auth import ExternalAuthPolicy
from .config.jwt import JwtPolicy
from .config.policies import (
    NoopPolicy,
    PluginPolicy,
    Policy,
    RateLimitPolicy,
    RespondPolicy,
    load_plugin_class,
    plugin_config,
    policy_names,
)
from .ratelimits import build_rate_limit


def _build(entry: Policy, name: str, key: str, old: dict, cfg: GatewayConfig | None = None) -> _core.Policy:
    if isinstance(entry, NoopPolicy):
        policy = _core.NoopPolicy(name, key, entry)
    elif isinstance(entry, RespondPolicy):
        policy = _core.RespondPolicy(name, key, entry.status, list(entry.headers.items()), entry.body,
                                     entry.on_upstream_status, entry)
    elif isinstance(entry, PluginPolicy):
        previous = old.get(key)
        if isinstance(previous, _core.PluginPolicy) and previous.config == entry:
            instance = previous.instance
        else:
            cls = load_plugin_class(entry.module)
            instance = cls(plugin_config(cls, entry.config))
            carry = getattr(instance, "carry_over", None)
            if previous is not None and callable(carry) and isinstance(previous, _core.PluginPolicy):
                carry(previous.instance)
        policy = _core.PluginPolicy(name, key, entry.module, instance, entry.timeout, entry.budget, entry)
    elif isinstance(entry, JwtPolicy):
        from .auth.build import consumer_table
        from .jwt_auth import build_jwt_policy
        policy = build_jwt_policy(entry, name, key)
        table = consumer_table(cfg)
        policy.consumers = table if len(table) else None
        policy.set_access()      # X-Consumer-Name upstream, as the other methods send it
    elif isinstance(entry, ExternalAuthPolicy):
        from .auth.build import consumer_table
        from .external_auth import build_external_auth_policy
        policy = build_external_auth_policy(entry, name, key)
        table = consumer_table(cfg)
        policy.consumers = table if len(table) else None
        policy.set_access()      # X-Consumer-Name upstream for the consumer_header's consumer
    elif isinstance(entry, CorsPolicy):
        from .cors import build_cors_policy
        policy = build_cors_policy(entry, name, key)
    elif isinstance(entry, AUTH_POLICIES):
        policy = build_auth_policy(entry, name, key, cfg)
    elif isinstance(entry, RateLimitPolicy):
        policy = build_rate_limit(entry, name, key, cfg.redis if cfg is not None else None)
    else:  # pragma: no cover - the schema's union is closed
        raise TypeError(f"unknown policy {entry!r}")
    if key in old:
        policy.adopt(old[key])
    return policy


def compile_chains(cfg: GatewayConfig, previous: _core.Runtime | None = None
                   ) -> tuple[_core.PolicyChain, dict[str, _core.PolicyChain], dict[str, _core.Policy]]:
    """(the chain of exchanges no route took, {route name: chain}, {key: policy})."""
    old = dict(previous.policies) if previous is not None else {}
    built: dict[str, _core.Policy] = {}
    top = []
    for entry, name in zip(cfg.policies, policy_names(cfg.policies), strict=True):
        key = f"policies/{name}"
        built[key] = _build(entry, name, key, old, cfg)
        top.append((name, built[key]))
    chains = {}
    for route in cfg.routes:
        skip = set(route.skip_policies or ())
        own = []
        for entry, name in zip(route.policies or (), policy_names(route.policies), strict=True):
            key = f"routes/{route.name}/{name}"
            built[key] = _build(entry, name, key, old, cfg)
            own.append(built[key])
        chains[route.name] = _core.PolicyChain([p for n, p in top if n not in skip] + own,
                                               access_log_policy(cfg, route))
    return _core.PolicyChain([p for _, p in top], access_log_policy(cfg, None)), chains, built
