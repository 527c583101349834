"""Consumers and the authentication and access policies of wt-auth (docs/auth.md): `consumers:`,
`api_key`, `basic_auth`, `auth` (any_of / all_of), `groups`, `ip_allow`, `ip_deny`,
`trusted_proxies`, and their semantic checks (every problem with its `$.path`; never a secret in a
message)."""

from __future__ import annotations

import ipaddress
import os
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import Meta

from .base import Base, Name
from .positions import Token
from .values import PositiveDuration

if TYPE_CHECKING:
    from .schema import GatewayConfig

__all__ = ["ApiKeyPolicy", "AuthPolicy", "BasicAuthPolicy", "Consumer", "GroupsPolicy", "IpAllowPolicy",
           "IpDenyPolicy", "SecretSource", "TrustedProxiesPolicy", "check_auth", "read_secret"]

HeaderName = Annotated[str, Meta(min_length=1, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]
QueryName = Annotated[str, Meta(min_length=1, pattern=r"^[A-Za-z0-9_.~-]+$")]


class SecretSource(Base, kw_only=True):
    """A secret kept out of the config file: the contents of `file` (one trailing newline dropped)
    or the value of the environment variable `env`. Exactly one of the two."""

    file: str | None = None
    env: str | None = None


Secret = str | SecretSource
"""A secret inline, or `{file: PATH}` / `{env: NAME}`."""


class BasicCredential(Base, kw_only=True):
    username: Annotated[str, Meta(min_length=1, pattern=r"^[^:\r\n\x00]+$")]
    password_hash: Secret | None = None
    """A bcrypt (`$2b$...`) or argon2 (`$argon2id$...`) hash; never the password itself. Omitted:
    the user's hash is in a basic_auth policy's htpasswd file, and this names its consumer."""


class JwtBinding(Base, kw_only=True):
    """A verified token whose `iss` is `issuer` (and `sub` is `subject`, or any subject when
    omitted) authenticates this consumer (the jwt policy looks it up)."""

    issuer: Annotated[str, Meta(min_length=1)]
    subject: Annotated[str, Meta(min_length=1)] | None = None


class Credentials(Base, kw_only=True):
    api_keys: list[Secret] = msgspec.field(default_factory=list)
    basic_auth: BasicCredential | None = None
    jwt: list[JwtBinding] = msgspec.field(default_factory=list)


class Consumer(Base, kw_only=True):
    """A named identity: what rate limits key by, what the upstream and the access log are told."""

    name: Name
    groups: list[Name] = msgspec.field(default_factory=list)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    credentials: Credentials = msgspec.field(default_factory=Credentials)


class GroupAccess(Base, kw_only=True):
    """allow: the consumer must be in one of these groups (omitted: any consumer); deny: refused
    when in any of these (403 either way)."""

    allow: Annotated[list[Name], Meta(min_length=1)] | None = None
    deny: list[Name] = msgspec.field(default_factory=list)


class ConsumerHeaders(Base, kw_only=True):
    """The upstream request headers naming the consumer (a client's own copies are removed first);
    null turns one off."""

    name: HeaderName | None = "X-Consumer-Name"
    groups: HeaderName | None = None


# policies.py imports this module after it defines PolicyBase (its union lists these Structs)
from .policies import PolicyBase  # noqa: E402


class AuthMethodBase(PolicyBase, kw_only=True):
    groups: GroupAccess | None = None
    """Groups allowed or denied (403), checked after this method accepts (when it stands alone)."""
    upstream_headers: ConsumerHeaders = msgspec.field(default_factory=ConsumerHeaders)
    consumers: Annotated[list[Name], Meta(min_length=1)] | None = None
    """Only these consumers' credentials are accepted (default: every consumer's)."""


class ApiKeyPolicy(AuthMethodBase, tag="api_key", kw_only=True):
    """An API key from a header or a query parameter, checked against the consumers' `api_keys`."""

    headers: list[HeaderName] = msgspec.field(default_factory=lambda: ["X-API-Key"])
    query: list[QueryName] = msgspec.field(default_factory=list)
    strip: bool = True
    """Remove the credential (header or query parameter) from the upstream request."""


class BasicAuthPolicy(AuthMethodBase, tag="basic_auth", kw_only=True):
    """HTTP basic authentication against the consumers' `basic_auth` users and htpasswd files."""

    realm: Annotated[str, Meta(min_length=1, pattern=r'^[^"\\\r\n\x00]+$')] = "fastgw"
    htpasswd: list[str] = msgspec.field(default_factory=list)
    """htpasswd files (bcrypt or argon2 lines), re-read on every reload (SIGHUP)."""
    strip: bool = True
    """Remove Authorization from the upstream request."""
    cache_size: Annotated[int, Meta(ge=0, le=1_000_000)] = 1024
    """Credentials that checked good, kept (by digest) so they are not hashed again."""
    timeout: PositiveDuration = 5.0
    """How long a hash check may take (then 504)."""


from .external_auth import ExternalAuthPolicy, check_external_auth  # noqa: E402
from .jwt import JwtPolicy, check_jwt  # noqa: E402

AuthMethodPolicy = ApiKeyPolicy | BasicAuthPolicy | JwtPolicy | ExternalAuthPolicy


class AuthPolicy(PolicyBase, tag="auth", kw_only=True):
    """Several methods on one route: `any_of` (the first that accepts) or `all_of` (every one)."""

    mode: Literal["any_of", "all_of"] = "any_of"
    methods: Annotated[list[AuthMethodPolicy], Meta(min_length=1)]
    groups: GroupAccess | None = None
    upstream_headers: ConsumerHeaders = msgspec.field(default_factory=ConsumerHeaders)


class GroupsPolicy(PolicyBase, tag="groups", kw_only=True):
    """The consumer an earlier auth policy named must pass these groups (403; no consumer: 401)."""

    allow: Annotated[list[Name], Meta(min_length=1)] | None = None
    deny: list[Name] = msgspec.field(default_factory=list)


Cidr = Annotated[str, Meta(min_length=1)]


class IpAllowPolicy(PolicyBase, tag="ip_allow", kw_only=True):
    """Only client addresses in these CIDRs pass (403)."""

    cidrs: Annotated[list[Cidr], Meta(min_length=1)]


class IpDenyPolicy(PolicyBase, tag="ip_deny", kw_only=True):
    """Client addresses in these CIDRs are refused (403)."""

    cidrs: Annotated[list[Cidr], Meta(min_length=1)]


class TrustedProxiesPolicy(PolicyBase, tag="trusted_proxies", kw_only=True):
    """The client address taken from X-Forwarded-For or Forwarded, only as far as trusted proxies
    vouch for it: `cidrs` (the proxies' addresses) or `depth` (the Nth address from the right, as
    Traefik's ipStrategy.depth). Exactly one of the two."""

    header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for"
    cidrs: Annotated[list[Cidr], Meta(min_length=1)] | None = None
    depth: Annotated[int, Meta(ge=1, le=64)] | None = None


AUTH_POLICIES = (ApiKeyPolicy, BasicAuthPolicy, AuthPolicy, GroupsPolicy, IpAllowPolicy, IpDenyPolicy,
                 TrustedProxiesPolicy)


# ---- secrets --------------------------------------------------------------------------------------

def read_secret(secret: Secret) -> str:
    """The secret's value. ValueError with a message that names where it was looked for, never
    what was found."""
    if isinstance(secret, str):
        return secret
    if (secret.file is None) == (secret.env is None):
        raise ValueError("a secret reference needs exactly one of `file` and `env`")
    if secret.env is not None:
        value = os.environ.get(secret.env)
        if value is None:
            raise ValueError(f"environment variable {secret.env} is not set")
        if not value:
            raise ValueError(f"environment variable {secret.env} is empty")
        return value
    try:
        with open(secret.file, encoding="utf-8") as f:
            value = f.read()
    except OSError as exc:
        raise ValueError(f"cannot read secret file {secret.file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"secret file {secret.file} is not UTF-8") from None
    value = value[:-1] if value.endswith("\n") else value
    if not value:
        raise ValueError(f"secret file {secret.file} is empty")
    return value


# ---- checks ---------------------------------------------------------------------------------------

def parse_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR or a single address; ValueError naming it."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"not a CIDR or IP address: {text!r}") from None


def hash_kind(h: str) -> str | None:
    if h.startswith(("$2a$", "$2b$", "$2y$")) and len(h) == 60:
        return "bcrypt"
    if h.startswith(("$argon2id$", "$argon2i$", "$argon2d$")):
        return "argon2"
    return None


def _check_hash(ref: Secret, path: list[Token], out: list) -> None:
    try:
        h = read_secret(ref)
    except ValueError as exc:
        out.append((path, str(exc)))
        return
    if hash_kind(h.strip()) is None:
        out.append((path, "not a bcrypt ($2b$...) or argon2 ($argon2id$...) hash"))


def _check_consumers(cfg: GatewayConfig, out: list) -> None:
    names: dict[str, int] = {}
    keys: dict[str, list[Token]] = {}
    users: dict[str, int] = {}
    jwt: dict[tuple[str, str | None], int] = {}
    for i, consumer in enumerate(cfg.consumers):
        base: list[Token] = ["consumers", i]
        if consumer.name in names:
            out.append(([*base, "name"], f"duplicate consumer name {consumer.name!r} "
                                         f"(first at $.consumers[{names[consumer.name]}])"))
        names.setdefault(consumer.name, i)
        creds = consumer.credentials
        for j, ref in enumerate(creds.api_keys):
            path = [*base, "credentials", "api_keys", j]
            try:
                value = read_secret(ref)
            except ValueError as exc:
                out.append((path, str(exc)))
                continue
            if value != value.strip() or not value:
                out.append((path, "an API key cannot be empty or start or end with white space"))
            elif value in keys:
                where = "".join(f"[{t}]" if isinstance(t, int) else f".{t}" for t in keys[value])
                out.append((path, f"duplicate API key (also at ${where})"))
            else:
                keys[value] = path
        if creds.basic_auth is not None:
            path = [*base, "credentials", "basic_auth"]
            if creds.basic_auth.username in users:
                out.append(([*path, "username"], f"duplicate basic-auth user {creds.basic_auth.username!r} "
                                                 f"(first at $.consumers[{users[creds.basic_auth.username]}])"))
            users.setdefault(creds.basic_auth.username, i)
            if creds.basic_auth.password_hash is not None:
                _check_hash(creds.basic_auth.password_hash, [*path, "password_hash"], out)
        for j, binding in enumerate(creds.jwt):
            key = (binding.issuer, binding.subject)
            if key in jwt:
                out.append(([*base, "credentials", "jwt", j],
                            f"issuer and subject already bound to consumer $.consumers[{jwt[key]}]"))
            jwt.setdefault(key, i)


def _check_group_names(access, groups: set[str], path: list[Token], allow_key: str, deny_key: str,
                       out: list) -> None:
    if access is None:
        return
    for key, names in ((allow_key, access.allow or ()), (deny_key, access.deny)):
        for j, g in enumerate(names):
            if g not in groups:
                out.append(([*path, key, j], f"no consumer is in group {g!r}"))


# Fields the gateway writes itself (or that frame the request): not a consumer header's name.
_OWNED = frozenset(("host", "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection",
                    "te", "trailer", "upgrade", "expect", "x-request-id", "x-forwarded-for", "x-forwarded-proto",
                    "x-forwarded-host", "authorization"))


def _check_headers(headers: ConsumerHeaders, path: list[Token], out: list) -> None:
    for key in ("name", "groups"):
        value = getattr(headers, key)
        if value is not None and value.lower() in _OWNED:
            out.append(([*path, "upstream_headers", key], f"{value} is not free for a consumer header"))
    if headers.name is not None and headers.groups is not None and headers.name.lower() == headers.groups.lower():
        out.append(([*path, "upstream_headers", "groups"], "the same header as `name`"))


def _check_method(policy, path: list[Token], consumers: set[str], groups: set[str], out: list,
                  inner: bool) -> None:
    if isinstance(policy, ApiKeyPolicy | BasicAuthPolicy):
        if not inner:
            _check_headers(policy.upstream_headers, path, out)
        for j, name in enumerate(policy.consumers or ()):
            if name not in consumers:
                out.append(([*path, "consumers", j], f"consumer {name!r} is not defined in $.consumers"))
        if inner and policy.groups is not None:
            out.append(([*path, "groups"], "inside `auth`, groups are the combinator's: set them on it"))
        _check_group_names(policy.groups, groups, [*path, "groups"], "allow", "deny", out)
    if isinstance(policy, BasicAuthPolicy):
        from ..auth.htpasswd import read_htpasswd
        for j, file in enumerate(policy.htpasswd):
            try:
                read_htpasswd(file)
            except ValueError as exc:
                out.append(([*path, "htpasswd", j], str(exc)))
    if isinstance(policy, ApiKeyPolicy) and not policy.headers and not policy.query:
        out.append((path, "an api_key policy needs at least one of `headers` and `query`"))


def check_auth_policy(policy, path: list[Token], cfg: GatewayConfig, out: list) -> None:
    """The checks of one policy of this module (called per policy by policies.check_policies)."""
    consumers = {c.name for c in cfg.consumers}
    groups = {g for c in cfg.consumers for g in c.groups}
    if isinstance(policy, AuthPolicy):
        for j, method in enumerate(policy.methods):
            if isinstance(method, JwtPolicy):
                check_jwt(method, [*path, "methods", j], out)
            elif isinstance(method, ExternalAuthPolicy):
                check_external_auth(method, [*path, "methods", j], out)
            else:
                _check_method(method, [*path, "methods", j], consumers, groups, out, True)
        _check_group_names(policy.groups, groups, [*path, "groups"], "allow", "deny", out)
        _check_headers(policy.upstream_headers, path, out)
    elif isinstance(policy, ApiKeyPolicy | BasicAuthPolicy):
        _check_method(policy, path, consumers, groups, out, False)
    elif isinstance(policy, GroupsPolicy):
        _check_group_names(policy, groups, path, "allow", "deny", out)
    elif isinstance(policy, IpAllowPolicy | IpDenyPolicy):
        for j, text in enumerate(policy.cidrs):
            try:
                parse_cidr(text)
            except ValueError as exc:
                out.append(([*path, "cidrs", j], str(exc)))
    elif isinstance(policy, TrustedProxiesPolicy):
        if (policy.cidrs is None) == (policy.depth is None):
            out.append((path, "trusted_proxies needs exactly one of `cidrs` and `depth`"))
        for j, text in enumerate(policy.cidrs or ()):
            try:
                parse_cidr(text)
            except ValueError as exc:
                out.append(([*path, "cidrs", j], str(exc)))


def check_auth(cfg: GatewayConfig, out: list) -> None:
    """The checks of `consumers:` (the policies' own run with the other policies)."""
    _check_consumers(cfg, out)
