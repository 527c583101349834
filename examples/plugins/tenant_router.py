"""A tenant router: finds the tenant of each request, refuses unknown tenants, tags the rest.

The tenant comes from a request header (default), the first path segment or the first label of the
Host. Known tenants get a header for the upstream (default `X-Tenant-Id`) carrying the id the
config maps them to; whatever the client sent in that header is replaced, so a client cannot pick
its own id. Unknown (or missing) tenants get 403 with a JSON body and never reach an upstream.

    policies:
      - type: plugin
        name: tenant
        module: "examples.plugins.tenant_router:TenantRouter"
        config:
          source: header            # header | path | subdomain
          header: X-Tenant          # the header read when source is header
          tenants: {acme: t-1001, globex: t-1002}

What it does not do: pick the upstream. A plugin runs after routing, and fastgw has no way yet for
a plugin to choose a route or backend. To send tenants to different upstreams, route on what the
client sends (a route `match` on the X-Tenant header, the path prefix or the hostname) and keep
this plugin as the gatekeeper that refuses unknown tenants and tags the request for the upstream.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from fastgw.plugin import Response

# RFC 9110 field names, and values as the printable ASCII a tenant id should be.
FieldName = Annotated[str, Meta(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]
TenantId = Annotated[str, Meta(pattern=r"^[\x21-\x7e]+$", max_length=200)]

# Fields the gateway sets itself on the way upstream: a plugin cannot set them (ValueError).
GATEWAY_OWNED = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection",
    "te", "trailer", "upgrade", "x-request-id", "x-forwarded-for", "x-forwarded-proto",
    "x-forwarded-host",
})


class TenantRouter:
    class Config(msgspec.Struct, forbid_unknown_fields=True):
        tenants: Annotated[dict[str, TenantId], Meta(min_length=1)]
        """Tenant name (as found in the request, compared lowercased) -> id sent upstream."""
        source: Literal["header", "path", "subdomain"] = "header"
        header: FieldName = "X-Tenant"
        """The request header holding the tenant (source: header)."""
        upstream_header: FieldName = "X-Tenant-Id"
        """Set on the upstream request to the tenant's id."""
        exempt_paths: list[str] = msgspec.field(default_factory=list)
        """Path prefixes let through untagged (health checks, say)."""

        def __post_init__(self) -> None:
            # raised here, the error shows in `fastgw check` at $.policies[N].config
            if self.upstream_header.lower() in GATEWAY_OWNED:
                raise ValueError(f"upstream_header: {self.upstream_header} is the gateway's to set")

    def __init__(self, config: Config) -> None:
        self.config = config
        self.tenants = {name.lower(): tenant_id for name, tenant_id in config.tenants.items()}
        self.exempt = tuple(config.exempt_paths)
        self.accepted: Counter[str] = Counter()   # per worker: each worker has its own instance
        self.refused = 0

    def carry_over(self, old: object) -> None:
        """Called on a reload that changed this plugin's config: keep the counters."""
        if isinstance(old, TenantRouter):
            self.accepted.update(old.accepted)
            self.refused += old.refused

    def tenant_of(self, req) -> str | None:
        """The tenant name the request names, lowercased; None when it names none."""
        source = self.config.source
        if source == "header":
            value = req.headers.get(self.config.header)
            return value.strip().lower() if value else None
        if source == "path":
            first = req.path.lstrip("/").split("/", 1)[0]
            return first.lower() or None
        host = req.host or ""                  # lowercased, without the port
        label, dot, _rest = host.partition(".")
        return label if dot and label else None

    def on_request(self, req):
        if self.exempt and req.path.startswith(self.exempt):
            return None
        name = self.tenant_of(req)
        tenant_id = self.tenants.get(name) if name is not None else None
        if tenant_id is None:
            self.refused += 1
            error = "unknown tenant" if name is not None else "no tenant in the request"
            body = msgspec.json.encode({"error": error, "tenant": name, "request_id": req.request_id})
            return Response.json(403, body)
        self.accepted[name] += 1
        req.headers.set(self.config.upstream_header, tenant_id)
        return None
