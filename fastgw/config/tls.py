"""TLS settings: `listeners[].tls` (termination, client certificates) and `upstreams.<name>.tls`
(origination). docs/tls.md.

Certificates and keys are PEM, from files (`cert`, `key`) or inline (`cert_pem`, `key_pem`, which
the Gateway API front end writes from a `kubernetes.io/tls` Secret). The check step loads every one
with the `ssl` module, so a bad certificate or a key that does not match its certificate is a config
error at its `$.path` and a reload carrying one is refused while the old certificates keep serving.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
from msgspec import Meta

from .base import Base
from .positions import Token
from .values import Duration, PositiveDuration, check_host_pattern

if TYPE_CHECKING:
    from .schema import GatewayConfig

__all__ = ["ClientCertHeaders", "ClientCertificate", "ListenerTls", "SubjectAltName", "TlsCertificate", "UpstreamTls",
           "check_tls", "load_pem_pair", "MOZILLA_INTERMEDIATE_CIPHERS"]

# Mozilla's "intermediate" TLS 1.2 suites (https://ssl-config.mozilla.org, guideline 5.7), in its
# order; TLS 1.3 suites are OpenSSL's defaults, which are the same three Mozilla lists.
MOZILLA_INTERMEDIATE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)

HeaderName = Annotated[str, Meta(min_length=1, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]


class TlsCertificate(Base, kw_only=True):
    """One certificate chain and its key. Exactly one of `cert`/`cert_pem`, and of `key`/`key_pem`."""

    cert: str | None = None
    """PEM file: the leaf certificate first, then its intermediates."""
    key: str | None = None
    """PEM file of the private key (RSA or ECDSA), unencrypted."""
    cert_pem: str | None = None
    key_pem: str | None = None
    """Inline key (hidden in GET /config)."""
    names: list[str] | None = None
    """SNI names this certificate is chosen for (exact or `*.suffix`); default: the certificate's DNS
    subject alternative names."""
    default: bool = False
    """Served when the SNI names no certificate (or there is no SNI). Default: the first one."""


class ClientCertHeaders(Base, kw_only=True):
    """Request headers that carry the verified client certificate upstream; each unset one is not
    sent. A header of one of these names that the client sent itself is always removed."""

    subject: HeaderName | None = None
    """The subject as an RFC 4514 string (`CN=alice,O=Example`)."""
    san: HeaderName | None = None
    """The subject alternative names, `DNS:a.example,URI:spiffe://x,email:a@b`, comma-separated."""
    fingerprint: HeaderName | None = None
    """SHA-256 of the DER certificate, lowercase hex."""


class ClientCertificate(Base, kw_only=True):
    """Client certificates (mTLS) on a listener."""

    mode: Literal["optional", "required"] = "required"
    """`required`: a handshake without a valid certificate fails; `optional`: one is asked for and
    verified if sent."""
    ca_file: str | None = None
    """PEM bundle of the CAs client certificates must chain to."""
    ca_pem: str | None = None
    headers: ClientCertHeaders | None = None


class ListenerTls(Base, kw_only=True):
    """TLS termination on a listener. Listeners that share an address share one TLS endpoint: their
    certificates are pooled for SNI, and every other setting here must be the same on all of them."""

    certificates: Annotated[list[TlsCertificate], Meta(min_length=1)]
    min_version: Literal["1.2", "1.3"] = "1.2"
    ciphers: str | None = None
    """OpenSSL cipher string for TLS 1.2; default Mozilla intermediate."""
    alpn: list[Annotated[str, Meta(min_length=1)]] = msgspec.field(default_factory=lambda: ["h2", "http/1.1"])
    """Protocols offered by ALPN, in preference order: `h2` (HTTP/2, docs/http2.md) and `http/1.1`;
    a client that offers only `http/1.1` (or no ALPN) speaks HTTP/1.1."""
    client_certificate: ClientCertificate | None = None
    handshake_timeout: PositiveDuration = 10.0
    """A connection that has not completed its handshake in this long is closed (takes effect on
    restart: the listening socket keeps the timeout it started with)."""
    session_tickets: bool = True
    """TLS session tickets (resumption without a full handshake); the ticket keys are shared by all
    workers (docs/tls.md)."""
    session_ticket_rotation: Duration = 43200.0
    """How often the supervisor gives every worker new ticket keys (0: never). Tickets issued before a
    rotation no longer resume: their clients make one full handshake."""

    def endpoint_settings(self) -> tuple:
        """What listeners on one address must agree on."""
        return (self.min_version, self.ciphers, tuple(self.alpn), self.client_certificate,
                self.handshake_timeout, self.session_tickets, self.session_ticket_rotation)


class SubjectAltName(Base, kw_only=True):
    """A name the upstream's certificate may carry instead of `server_name`: exactly one of them."""

    hostname: str | None = None
    """A DNS name (the certificate's `*.suffix` names match one label)."""
    uri: str | None = None
    """A URI SAN, compared exactly (`spiffe://cluster.local/ns/billing/sa/api`)."""


class UpstreamTls(Base, kw_only=True):
    """TLS to an upstream's targets."""

    server_name: str | None = None
    """SNI sent and the name the server certificate must be valid for; default: the target's host
    when it is a name (an IP address target then needs this or `verify: false`)."""
    verify: bool = True
    """Verify the server certificate (chain and name)."""
    ca_file: str | None = None
    """PEM bundle of trusted CAs; default: the system's."""
    ca_pem: str | None = None
    cert: str | None = None
    """Client certificate (mTLS to the upstream): PEM file."""
    key: str | None = None
    cert_pem: str | None = None
    key_pem: str | None = None
    alpn: list[Annotated[str, Meta(min_length=1)]] | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"
    subject_alt_names: list[SubjectAltName] | None = None
    """With `verify`: the certificate must carry one of these (Gateway API BackendTLSPolicy
    `subjectAltNames`) instead of `server_name`, which is still the SNI."""


def _text(path: str | None, inline: str | None) -> str | None:
    if inline is not None:
        return inline
    if path is None:
        return None
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


def load_pem_pair(ctx: ssl.SSLContext, cert_file: str | None, key_file: str | None,
                  cert_pem: str | None, key_pem: str | None) -> None:
    """load_cert_chain from files or inline PEM (written to a private temporary file: the ssl module
    loads chains only from paths)."""
    if cert_pem is None and key_pem is None:
        ctx.load_cert_chain(cert_file, key_file)
        return
    cert_text = _text(cert_file, cert_pem) or ""
    key_text = _text(key_file, key_pem) or ""
    fd, tmp = tempfile.mkstemp(prefix="fastgw-tls-", suffix=".pem")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(cert_text.rstrip("\n") + "\n" + key_text)
        ctx.load_cert_chain(tmp)
    finally:
        os.unlink(tmp)


def _load_error(exc: Exception) -> str:
    text = str(exc)
    if isinstance(exc, ssl.SSLError) and ("KEY_VALUES_MISMATCH" in text or "NO_CERTIFICATE_ASSIGNED" in text):
        # the second: a key of another type (ECDSA for an RSA certificate) has no certificate beside it
        return "the key does not match the certificate"
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError):
        return f"cannot read it: {exc.strerror or exc}"
    return f"not a usable PEM certificate and key: {text}"


def _check_pair(c, base: list[Token], out: list) -> None:
    """One of each of cert/cert_pem and key/key_pem, loaded together."""
    ok = True
    for a, b in (("cert", "cert_pem"), ("key", "key_pem")):
        if (getattr(c, a) is None) == (getattr(c, b) is None):
            out.append(([*base, a], f"give exactly one of '{a}' or '{b}'"))
            ok = False
    if not ok:
        return
    for name in ("cert", "key"):
        path = getattr(c, name)
        if path is not None and not os.path.isfile(path):
            out.append(([*base, name], f"cannot read {path!r}: no such file"))
            ok = False
    if not ok:
        return
    try:
        load_pem_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), c.cert, c.key, c.cert_pem, c.key_pem)
    except (ssl.SSLError, OSError, ValueError) as exc:
        out.append(([*base, "cert" if c.cert is not None else "cert_pem"], _load_error(exc)))


def _check_ca(ca_file: str | None, ca_pem: str | None, base: list[Token], out: list, required: bool) -> None:
    if ca_file is not None and ca_pem is not None:
        out.append(([*base, "ca_file"], "give 'ca_file' or 'ca_pem', not both"))
        return
    if ca_file is None and ca_pem is None:
        if required:
            out.append((base, "a CA bundle ('ca_file' or 'ca_pem') is required to verify client certificates"))
        return
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_verify_locations(cafile=ca_file, cadata=ca_pem)
    except (ssl.SSLError, OSError, ValueError) as exc:
        out.append(([*base, "ca_file" if ca_file is not None else "ca_pem"],
                    f"not a usable PEM CA bundle: {exc}"))


def _check_ciphers(ciphers: str | None, path: list[Token], out: list) -> None:
    if ciphers is None:
        return
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(ciphers)
    except ssl.SSLError:
        out.append((path, f"OpenSSL selects no cipher from {ciphers!r}"))


def check_tls(cfg: GatewayConfig, out: list) -> None:
    """Every TLS problem of a config: certificates and keys loaded, CA bundles, SNI names, and that
    listeners sharing an address agree on TLS."""
    first_on: dict[str, int] = {}
    for i, listener in enumerate(cfg.listeners):
        tls = listener.tls
        base: list[Token] = ["listeners", i, "tls"]
        if listener.protocol == "tls-passthrough":
            continue        # shares a tls address with terminating listeners, holds no TLS settings
        j = first_on.setdefault(listener.address, i)
        other = cfg.listeners[j]
        if j != i and (other.tls is None) != (tls is None):
            out.append((base if tls is not None else ["listeners", i],
                        f"listeners on {listener.address} must all have 'tls' or none have it "
                        f"($.listeners[{j}] {'has' if other.tls is not None else 'has not'})"))
        elif j != i and tls is not None and other.tls is not None \
                and tls.endpoint_settings() != other.tls.endpoint_settings():
            out.append((base, f"listeners on {listener.address} share one TLS endpoint: every setting but "
                              f"'certificates' must equal those of $.listeners[{j}].tls"))
        if tls is None:
            continue
        for k, c in enumerate(tls.certificates):
            _check_pair(c, [*base, "certificates", k], out)
            for m, name in enumerate(c.names or ()):
                try:
                    check_host_pattern(name.lower())
                except ValueError as e:
                    out.append(([*base, "certificates", k, "names", m], str(e)))
        if sum(1 for c in tls.certificates if c.default) > 1:
            out.append(([*base, "certificates"], "at most one certificate can be the default"))
        _check_ciphers(tls.ciphers, [*base, "ciphers"], out)
        cc = tls.client_certificate
        if cc is not None:
            _check_ca(cc.ca_file, cc.ca_pem, [*base, "client_certificate"], out, required=True)
    for name, up in cfg.upstreams.items():
        tls = up.tls
        if tls is None:
            continue
        base = ["upstreams", name, "tls"]
        _check_ca(tls.ca_file, tls.ca_pem, base, out, required=False)
        if any(x is not None for x in (tls.cert, tls.key, tls.cert_pem, tls.key_pem)):
            _check_pair(tls, base, out)
        for k, san in enumerate(tls.subject_alt_names or ()):
            if (san.hostname is None) == (san.uri is None):
                out.append(([*base, "subject_alt_names", k], "give exactly one of 'hostname' or 'uri'"))
        if tls.verify and tls.server_name is None:
            from .values import parse_address

            for k, t in enumerate(up.targets):
                try:
                    host = parse_address(t.address)[0]
                except ValueError:
                    continue
                if _is_ip(host):
                    out.append(([*base, "server_name"],
                                f"target {t.address} is an IP address: give the name its certificate is for "
                                f"('server_name') or set 'verify: false' ($.upstreams.{name}.targets[{k}])"))
                    break


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
