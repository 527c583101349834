"""A request signer: HMAC-SHA256 over each upstream request, so the upstream can tell the request
came through the gateway and was not changed on the way.

    policies:
      - type: plugin
        name: signer
        module: "examples.plugins.request_signer:RequestSigner"
        config:
          key_env: UPSTREAM_SIGNING_KEY     # or `key: "..."` (the env var keeps it out of the file)
          key_id: k1                        # optional, sent as X-Signature-Key-Id
          signed_headers: [content-type, content-length]

Headers set on the upstream request:

    X-Signature-Timestamp: <unix seconds>
    X-Signature: <hex HMAC-SHA256(key, canonical)>
    X-Signature-Headers: <the signed_headers, ";"-joined>   (only when signed_headers is not empty)
    X-Signature-Key-Id: <key_id>                               (only when key_id is set)

where `canonical` is these lines joined with "\\n" (see `canonical_string`):

    fastgw-hmac-v1
    <timestamp>
    <METHOD>
    <path, as the client sent it>
    <query string without "?", may be empty>
    <name>:<value>        one per signed header, name lowercased, value "" when absent

The body is not signed: plugins do not see it. Signing Content-Length and Content-Type (the
"body-less digest") at least pins its size and kind. The path is the one the client sent: do not
combine this plugin with a URLRewrite filter on the same route, or the upstream sees another path.

The client's own X-Signature* headers are replaced, never passed on. `verify()` is what an upstream
(written in Python) would call. The plugin also counts signed requests (by outcome, in `on_log`) and,
when `stats_path` is set, answers that path with its counters as JSON (per worker process).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import Counter
from typing import Annotated

import msgspec
from msgspec import Meta

from fastgw.plugin import Response

VERSION = "fastgw-hmac-v1"
FieldName = Annotated[str, Meta(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]
EnvName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


def canonical_string(timestamp: int | str, method: str, path: str, query: str,
                     headers: list[tuple[str, str]] = ()) -> bytes:
    """What is signed. `headers` are (lowercase name, value) in the order of signed_headers."""
    lines = [VERSION, str(timestamp), method, path, query, *(f"{n}:{v}" for n, v in headers)]
    return "\n".join(lines).encode("latin-1")


def sign(key: bytes, canonical: bytes) -> str:
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def verify(key: bytes, signature: str, timestamp: str, method: str, path: str, query: str,
           headers: list[tuple[str, str]] = (), max_skew: float = 300.0, now: float | None = None) -> bool:
    """The upstream's side: True when `signature` is right and `timestamp` is within max_skew."""
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    if age > max_skew:
        return False
    expected = sign(key, canonical_string(timestamp, method, path, query, headers))
    return hmac.compare_digest(expected, signature)


class RequestSigner:
    class Config(msgspec.Struct, forbid_unknown_fields=True):
        key: Annotated[str, Meta(min_length=16)] | None = None
        """The shared secret itself (at least 16 characters)."""
        key_env: EnvName | None = None
        """Or the name of an environment variable holding it (read when the worker starts)."""
        key_id: Annotated[str, Meta(pattern=r"^[\x21-\x7e]+$")] | None = None
        signed_headers: list[FieldName] = msgspec.field(default_factory=list)
        response_header: FieldName | None = "X-Request-Signed"
        """Added to responses of signed requests (value: key_id or "1"); null for none."""
        stats_path: str | None = None
        """A path this plugin answers itself with its counters (JSON); null for none."""

        def __post_init__(self) -> None:
            if (self.key is None) == (self.key_env is None):
                raise ValueError("give exactly one of key and key_env")

    def __init__(self, config: Config) -> None:
        self.config = config
        if config.key is not None:
            secret = config.key
        else:
            secret = os.environ.get(config.key_env or "", "")
            if len(secret) < 16:
                raise ValueError(f"environment variable {config.key_env} is unset or shorter than 16 characters")
        self.key = secret.encode()
        self.signed_names = [n.lower() for n in config.signed_headers]
        self.response_value = config.key_id or "1"
        self.signed: set[str] = set()      # request ids signed and not logged yet
        self.counts: Counter[str] = Counter()

    def carry_over(self, old: object) -> None:
        """A reload changed the config (a new key, say): the counts go on."""
        if isinstance(old, RequestSigner):
            self.counts.update(old.counts)

    def on_request(self, req):
        if req.path == self.config.stats_path:
            body = msgspec.json.encode({"pid": os.getpid(), "counts": self.counts})
            return Response.json(200, body)
        timestamp = str(int(time.time()))
        headers = [(n, req.headers.get(n, "")) for n in self.signed_names]
        signature = sign(self.key, canonical_string(timestamp, req.method, req.path, req.query, headers))
        h = req.headers
        h.set("X-Signature-Timestamp", timestamp)
        h.set("X-Signature", signature)
        if self.signed_names:
            h.set("X-Signature-Headers", ";".join(self.signed_names))
        else:
            h.remove("X-Signature-Headers")
        if self.config.key_id is not None:
            h.set("X-Signature-Key-Id", self.config.key_id)
        else:
            h.remove("X-Signature-Key-Id")
        self.signed.add(req.request_id)
        return None

    def on_response(self, resp):
        if self.config.response_header is not None:
            resp.headers.set(self.config.response_header, self.response_value)

    def on_log(self, entry):
        # every exchange of the chain comes here, signed or not (refused heads, no route, ...)
        if entry.request_id in self.signed:
            self.signed.discard(entry.request_id)
            self.counts["signed"] += 1
            self.counts[entry.outcome] += 1
