"""The consumer table and the core policies of fastgw.config.auth, built once per config."""

from __future__ import annotations

from .. import _core
from ..config import GatewayConfig
from ..config.auth import (
    ApiKeyPolicy,
    AuthPolicy,
    BasicAuthPolicy,
    ConsumerHeaders,
    GroupsPolicy,
    IpAllowPolicy,
    IpDenyPolicy,
    TrustedProxiesPolicy,
    read_secret,
)
from ..config.external_auth import ExternalAuthPolicy
from ..config.jwt import JwtPolicy
from .hashes import verify_password
from .htpasswd import read_htpasswd
from .ipsets import ip_set

__all__ = ["build_auth_policy", "consumer_table", "with_credentials_redacted"]

# The table of the config being compiled: every policy of one config shares its records (all_of
# compares consumers by identity). The config is kept with it, so an id is never reused meanwhile.
_last: tuple[GatewayConfig, _core.ConsumerTable] | None = None


def consumer_table(cfg: GatewayConfig) -> _core.ConsumerTable:
    """The consumers of `cfg` as core Consumer records (one table per config object), with the
    JWT bindings the jwt policy looks verified tokens up by (`table.for_jwt(iss, sub)`)."""
    global _last
    if _last is not None and _last[0] is cfg:
        return _last[1]
    by_name = {}
    jwt = {}
    for c in cfg.consumers:
        record = _core.Consumer(c.name, c.groups, c.metadata)
        by_name[c.name] = record
        for b in c.credentials.jwt:
            jwt[(b.issuer, b.subject)] = record
    table = _core.ConsumerTable(by_name, jwt)
    _last = (cfg, table)
    return table


def _chosen(cfg: GatewayConfig, names: list[str] | None):
    wanted = set(names) if names is not None else None
    return [c for c in cfg.consumers if wanted is None or c.name in wanted]


def _api_keys(entry: ApiKeyPolicy, cfg: GatewayConfig, table) -> _core.SecretDigests:
    pairs = []
    for c in _chosen(cfg, entry.consumers):
        for ref in c.credentials.api_keys:
            pairs.append((read_secret(ref).encode(), table.get(c.name)))
    return _core.SecretDigests(pairs)


def _users(entry: BasicAuthPolicy, cfg: GatewayConfig, table) -> dict:
    users = {}
    for c in _chosen(cfg, entry.consumers):
        cred = c.credentials.basic_auth
        if cred is not None and cred.password_hash is not None:
            users[cred.username.encode()] = _core.UserHash(read_secret(cred.password_hash).strip().encode(),
                                                           table.get(c.name))
    # An htpasswd user is the consumer that has that basic-auth username, else the consumer of that
    # name, else a consumer of its own (no groups) so logs and rate limits still name someone.
    by_username = {c.credentials.basic_auth.username: c.name for c in cfg.consumers if c.credentials.basic_auth}
    for path in entry.htpasswd:
        for user, h in read_htpasswd(path).items():
            key = user.encode()
            if key in users:
                continue
            name = by_username.get(user, user)
            if entry.consumers is not None and name not in entry.consumers:
                continue
            record = table.implied(name)
            users[key] = _core.UserHash(h.encode(), record)
    return users


def _access(policy: _core.AuthMethod, groups, headers: ConsumerHeaders) -> None:
    policy.set_access(groups.allow if groups is not None else None, groups.deny if groups is not None else None,
                      headers.name, headers.groups)


def _method(entry, name: str, key: str, cfg: GatewayConfig) -> _core.AuthMethod:
    table = consumer_table(cfg)
    if isinstance(entry, JwtPolicy):
        from ..jwt_auth import build_jwt_policy
        policy = build_jwt_policy(entry, name, key)
        policy.consumers = table if len(table) else None
        return policy
    if isinstance(entry, ExternalAuthPolicy):
        from ..external_auth import build_external_auth_policy
        policy = build_external_auth_policy(entry, name, key)
        policy.consumers = table if len(table) else None
        return policy
    if isinstance(entry, ApiKeyPolicy):
        policy = _core.ApiKeyAuth(name, key, entry.headers, entry.query, _api_keys(entry, cfg, table), entry.strip,
                                  entry)
    else:
        policy = _core.BasicAuth(name, key, entry.realm, _users(entry, cfg, table), verify_password,
                                 entry.cache_size, entry.timeout, entry.strip, entry)
    _access(policy, entry.groups, entry.upstream_headers)
    return policy


def build_auth_policy(entry, name: str, key: str, cfg: GatewayConfig) -> _core.Policy:
    if isinstance(entry, ApiKeyPolicy | BasicAuthPolicy):
        return _method(entry, name, key, cfg)
    if isinstance(entry, AuthPolicy):
        methods = [_method(m, m.name or f"{type(m).__struct_config__.tag}-{i}", f"{key}/{i}", cfg)
                   for i, m in enumerate(entry.methods)]
        policy = _core.AuthCombinator(name, key, methods, entry.mode == "all_of", entry)
        _access(policy, entry.groups, entry.upstream_headers)
        return policy
    if isinstance(entry, GroupsPolicy):
        return _core.GroupsPolicy(name, key, entry.allow, entry.deny, entry)
    if isinstance(entry, IpAllowPolicy | IpDenyPolicy):
        return _core.IpRulePolicy(name, key, ip_set(entry.cidrs), isinstance(entry, IpAllowPolicy), entry)
    if isinstance(entry, TrustedProxiesPolicy):
        trusted = ip_set(entry.cidrs) if entry.cidrs is not None else None
        return _core.TrustedProxies(name, key, trusted, entry.depth or 0, entry.header == "forwarded", entry)
    raise TypeError(f"not an auth policy: {entry!r}")


def _api_key_params(cfg: GatewayConfig) -> set[str]:
    policies = list(cfg.policies) + [p for r in cfg.routes for p in r.policies or ()]
    policies += [m for p in policies if isinstance(p, AuthPolicy) for m in p.methods]
    return {q for p in policies if isinstance(p, ApiKeyPolicy) for q in p.query}


def with_credentials_redacted(cfg: GatewayConfig, query: str, redact: list[str] | None) -> tuple[str, tuple]:
    """The access log's query mode and redacted parameters, with every query parameter an api_key
    policy reads a key from among them whatever the access log's settings say: a key never reaches
    a log line."""
    params = _api_key_params(cfg)
    if not params or query == "omit" or (query == "redact" and redact is None):
        return query, tuple(redact or ())
    return "redact", tuple(sorted(set(redact or ()) | params)) if query == "redact" else tuple(sorted(params))
