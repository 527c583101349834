"""TLS at run time: the server contexts of TLS listeners (certificates by SNI, client certificates),
what a connection learns from its handshake, and the client contexts of upstreams. docs/tls.md.

A listening socket is created once with one *front* SSLContext; its SNI callback moves each
handshake to the context of the certificate the name selects, from a table a reload replaces. So a
reload swaps certificates without touching the socket or the connections on it, and a handshake
never sees half a table. OpenSSL takes the certificate, the CA store for client certificates, the
cipher list and ALPN from the context switched to, and the protocol versions, the verify mode and the
session ticket keys from the front context, whose settings a reload updates in place.

The front contexts are made in the supervisor before the workers fork, so every worker holds the
same session ticket keys and a ticket one worker issued resumes on any other. Python's ssl module
has no call to set ticket keys, so rotating them (`TicketKeys`) goes through ctypes to OpenSSL's
SSL_CTX_ctrl(SSL_CTRL_SET_TLSEXT_TICKET_KEYS) on the SSL_CTX an SSLContext wraps; it checks itself
once and is off, with an event line, where that does not work.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import ssl
import tempfile
from dataclasses import dataclass

from .config.schema import GatewayConfig, Listener
from .config.tls import (
    MOZILLA_INTERMEDIATE_CIPHERS,
    ClientCertificate,
    ListenerTls,
    UpstreamTls,
    load_pem_pair,
)

__all__ = ["CertTable", "TlsEndpoint", "client_cert_info", "make_endpoints", "upstream_context", "upstream_peer_check"]

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _settings(ctx: ssl.SSLContext, tls: ListenerTls) -> None:
    """What every server context of an endpoint carries (the front one and each certificate's)."""
    ctx.minimum_version = _VERSIONS[tls.min_version]
    ctx.set_ciphers(tls.ciphers or MOZILLA_INTERMEDIATE_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if tls.session_tickets:
        ctx.options &= ~ssl.OP_NO_TICKET
        ctx.num_tickets = 2
    else:
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
    ctx.set_alpn_protocols(list(tls.alpn))
    cc = tls.client_certificate
    if cc is None:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.verify_mode = ssl.CERT_REQUIRED if cc.mode == "required" else ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cafile=cc.ca_file, cadata=cc.ca_pem)


def _decode_first_cert(cert_file: str | None, cert_pem: str | None) -> dict:
    """The leaf certificate as the ssl module decodes it (subjectAltName, subject)."""
    text = cert_pem if cert_pem is not None else open(cert_file, encoding="ascii", errors="replace").read()
    end = text.find("-----END CERTIFICATE-----")
    leaf = text[: end + len("-----END CERTIFICATE-----")] + "\n" if end >= 0 else text
    fd, tmp = tempfile.mkstemp(prefix="fastgw-cert-", suffix=".pem")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(leaf)
        return ssl._ssl._test_decode_cert(tmp)
    finally:
        os.unlink(tmp)


def _cert_names(decoded: dict) -> list[str]:
    names = [v.lower() for k, v in decoded.get("subjectAltName", ()) if k == "DNS"]
    if not names:
        for rdn in decoded.get("subject", ()):
            for k, v in rdn:
                if k == "commonName":
                    names.append(v.lower())
    return names


class CertTable:
    """The certificate contexts of one endpoint by SNI name: exact names, then `*.suffix` names from
    the longest suffix, then the default."""

    def __init__(self, exact: dict[str, ssl.SSLContext], wildcard: dict[str, ssl.SSLContext],
                 default: ssl.SSLContext):
        self.exact = exact
        self.wildcard = wildcard      # ".example.com" -> context
        self.default = default

    def pick(self, name: str | None) -> ssl.SSLContext:
        if not name:
            return self.default
        name = name.lower().rstrip(".")
        ctx = self.exact.get(name)
        if ctx is not None:
            return ctx
        dot = name.find(".")
        while dot >= 0:
            ctx = self.wildcard.get(name[dot:])
            if ctx is not None:
                return ctx
            dot = name.find(".", dot + 1)
        return self.default


def build_table(tls_listeners: list[Listener]) -> CertTable:
    """Loads every certificate of the listeners of one address. Raises (ssl.SSLError, OSError) on a
    certificate that does not load: the caller keeps the table it has."""
    exact: dict[str, ssl.SSLContext] = {}
    wildcard: dict[str, ssl.SSLContext] = {}
    first = default = None
    for listener in tls_listeners:
        tls = listener.tls
        assert tls is not None
        for c in tls.certificates:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            _settings(ctx, tls)
            load_pem_pair(ctx, c.cert, c.key, c.cert_pem, c.key_pem)
            names = [n.lower() for n in c.names] if c.names is not None else _cert_names(
                _decode_first_cert(c.cert, c.cert_pem))
            if listener.hostname is not None and c.names is None:
                names.append(listener.hostname)   # the listener's certificate for its own hostname
            for n in names:
                if n.startswith("*."):
                    wildcard.setdefault(n[1:], ctx)
                else:
                    exact.setdefault(n, ctx)
            first = first or ctx
            if c.default and default is None:
                default = ctx
    assert first is not None
    return CertTable(exact, wildcard, default or first)


class DirectSSLObject(ssl.SSLObject):
    """The SSLObject of a TLS listener's connections. uvloop's sslproto (and tlsterm.pyx) call
    read, write and pending once or more per record; ssl.SSLObject's are Python methods that only
    forward to the C object, a Python frame per call. Here they are the C object's own bound
    methods (same arguments), so a keep-alive HTTPS request runs no Python bytecode for its TLS."""

    @classmethod
    def _create(cls, *args, **kwargs):
        self = super()._create(*args, **kwargs)
        inner = self._sslobj
        self.read, self.write, self.pending = inner.read, inner.write, inner.pending
        self.do_handshake = inner.do_handshake
        return self


class TlsEndpoint:
    """One TLS listening address: the front context its socket was created with and the certificate
    table its handshakes pick from."""

    def __init__(self, address: str, tls: ListenerTls):
        self.address = address
        self.handshake_timeout = tls.handshake_timeout
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.sslobject_class = DirectSSLObject
        _settings(self.ctx, tls)
        self.ctx.sni_callback = self._on_sni
        self.table: CertTable | None = None
        self.headers: list[tuple[bytes, str]] = []    # (lowercase name, field) of the client cert headers
        self.client_certs = False

    def prepare(self, listeners: list[Listener]) -> tuple:
        """Everything a new config needs, built without touching what serves now (raises)."""
        return build_table(listeners), listeners[0].tls

    def install(self, prepared: tuple) -> None:
        table, tls = prepared
        cc = tls.client_certificate
        # the front context's own settings reach new handshakes (protocol versions, verify mode)
        self.ctx.minimum_version = _VERSIONS[tls.min_version]
        self.ctx.verify_mode = ssl.CERT_NONE if cc is None else (
            ssl.CERT_REQUIRED if cc.mode == "required" else ssl.CERT_OPTIONAL)
        if tls.session_tickets:
            self.ctx.options &= ~ssl.OP_NO_TICKET
            self.ctx.num_tickets = 2
        else:
            self.ctx.options |= ssl.OP_NO_TICKET
            self.ctx.num_tickets = 0
        self.client_certs = cc is not None
        self.headers = _header_names(cc)
        self.table = table

    def _on_sni(self, sslobj, name, _ctx) -> None:
        sslobj.fastgw_sni = name
        table = self.table
        if table is not None:
            sslobj.context = table.pick(name)

    # -- per connection (called by the core once its handshake is done) ----------------------------

    def connection_info(self, sslobj) -> tuple[bytes | None, list | None, dict | None]:
        """(SNI as lowercase bytes or None, upstream header edits or None, client certificate or None)."""
        name = getattr(sslobj, "fastgw_sni", None)
        sni = name.lower().rstrip(".").encode("ascii", "replace") if name else None
        if not self.client_certs:
            return sni, None, None
        cert = client_cert_info(sslobj)
        edits = None
        if self.headers:
            edits = []
            for lname, field in self.headers:
                value = None if cert is None else cert[field]
                line = None if value is None else f"{lname.decode()}: {value}\r\n".encode("latin-1", "replace")
                edits.append((lname, line, True))
        return sni, edits, cert


def _header_names(cc: ClientCertificate | None) -> list[tuple[bytes, str]]:
    if cc is None or cc.headers is None:
        return []
    h = cc.headers
    return [(name.lower().encode(), field) for name, field in
            ((h.subject, "subject"), (h.san, "san_header"), (h.fingerprint, "fingerprint")) if name]


_SHORT = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
          "localityName": "L", "stateOrProvinceName": "ST", "streetAddress": "STREET", "domainComponent": "DC",
          "userId": "UID", "emailAddress": "emailAddress", "serialNumber": "serialNumber"}


def _rdn_value(v: str) -> str:
    out = []
    for i, ch in enumerate(v):
        if ch in ',+"\\<>;=' or (i == 0 and ch in "# ") or (i == len(v) - 1 and ch == " "):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):02X}")      # never a CR or LF in a header
        else:
            out.append(ch)
    return "".join(out)


def _clean(v: str) -> str:
    return "".join(ch if 0x20 <= ord(ch) != 0x7F else f"\\{ord(ch):02X}" for ch in v)


def client_cert_info(sslobj) -> dict | None:
    """The verified client certificate: subject (RFC 4514, most specific first), sans [(type, value)],
    fingerprint (SHA-256 hex of the DER). None when the client sent none."""
    der = sslobj.getpeercert(binary_form=True)
    if not der:
        return None
    decoded = sslobj.getpeercert() or {}
    rdns = []
    for rdn in reversed(decoded.get("subject", ())):
        rdns.append("+".join(f"{_SHORT.get(k, k)}={_rdn_value(v)}" for k, v in rdn))
    sans = [(k, _clean(v)) for k, v in decoded.get("subjectAltName", ())]
    return {"subject": ",".join(rdns), "sans": sans,
            "san_header": ",".join(f"{k}:{v}" for k, v in sans) or None,
            "fingerprint": hashlib.sha256(der).hexdigest()}


@dataclass
class Endpoints:
    by_address: dict[str, TlsEndpoint]

    def prepare(self, cfg: GatewayConfig) -> dict:
        """Tables for a new config's TLS listeners on the addresses bound (raises)."""
        out = {}
        for address, endpoint in self.by_address.items():
            listeners = [lst for lst in cfg.listeners if lst.address == address and lst.tls is not None]
            if listeners:
                out[address] = endpoint.prepare(listeners)
        return out

    def install(self, prepared: dict) -> None:
        for address, p in prepared.items():
            self.by_address[address].install(p)

    def new_ticket_keys(self) -> dict[str, str]:
        """Fresh keys for every endpoint, set here (workers forked from now on inherit them) and
        returned as hex for the running workers."""
        out = {}
        for address, endpoint in self.by_address.items():
            keys = os.urandom(TICKET_KEYS_LEN)
            ticket_keys().set(endpoint.ctx, keys)
            out[address] = keys.hex()
        return out

    def set_ticket_keys(self, keys: dict[str, str]) -> int:
        n = 0
        for address, hexkeys in keys.items():
            endpoint = self.by_address.get(address)
            if endpoint is not None:
                ticket_keys().set(endpoint.ctx, bytes.fromhex(hexkeys))
                n += 1
        return n


def make_endpoints(cfg: GatewayConfig, addresses) -> Endpoints:
    """The front contexts of the TLS addresses among `addresses` (made once, before the fork)."""
    out = {}
    for address in addresses:
        listeners = [lst for lst in cfg.listeners if lst.address == address and lst.tls is not None]
        if listeners:
            out[address] = TlsEndpoint(address, listeners[0].tls)
    return Endpoints(out)


# -- session ticket keys ---------------------------------------------------------------------------

TICKET_KEYS_LEN = 80          # key name 16, HMAC secret 32, AES key 32 (OpenSSL's tlsext_tick_* layout)
_SET_TICKET_KEYS, _GET_TICKET_KEYS = 59, 58   # SSL_CTRL_SET/GET_TLSEXT_TICKET_KEYS


class TicketKeys:
    """Sets an SSLContext's session ticket keys. Python's ssl module has no such call: this reaches
    OpenSSL's SSL_CTX_ctrl through ctypes, with the SSL_CTX* that CPython's `PySSLContext` keeps
    right after its object header. `available` is False (and nothing is ever written) unless a
    probe context reads back the keys it was given."""

    def __init__(self) -> None:
        self.why_not: str | None = None
        try:
            lib = ctypes.CDLL(ssl._ssl.__file__)      # resolves libssl's symbols through _ssl's dependencies
            ctrl = lib.SSL_CTX_ctrl
            ctrl.restype = ctypes.c_long
            ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
            self._ctrl = ctrl
            probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            keys = os.urandom(TICKET_KEYS_LEN)
            if not (self._set(probe, keys) and self.get(probe) == keys):
                self.why_not = "OpenSSL did not take the ticket keys given to a probe context"
        except (OSError, AttributeError, ValueError) as exc:
            self.why_not = f"OpenSSL's SSL_CTX_ctrl is not reachable: {exc}"

    @property
    def available(self) -> bool:
        return self.why_not is None

    @staticmethod
    def _ssl_ctx(ctx: ssl.SSLContext) -> int:
        ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
        if not ptr:
            raise ValueError("no SSL_CTX")
        return ptr

    def _set(self, ctx: ssl.SSLContext, keys: bytes) -> bool:
        buf = ctypes.create_string_buffer(keys, TICKET_KEYS_LEN)
        return self._ctrl(self._ssl_ctx(ctx), _SET_TICKET_KEYS, TICKET_KEYS_LEN, buf) == 1

    def get(self, ctx: ssl.SSLContext) -> bytes:
        buf = ctypes.create_string_buffer(TICKET_KEYS_LEN)
        self._ctrl(self._ssl_ctx(ctx), _GET_TICKET_KEYS, TICKET_KEYS_LEN, buf)
        return buf.raw

    def set(self, ctx: ssl.SSLContext, keys: bytes) -> None:
        if self.available and len(keys) == TICKET_KEYS_LEN:
            self._set(ctx, keys)


_ticket_keys: TicketKeys | None = None


def ticket_keys() -> TicketKeys:
    global _ticket_keys
    if _ticket_keys is None:
        _ticket_keys = TicketKeys()
    return _ticket_keys


def rotation_interval(cfg: GatewayConfig, addresses) -> float:
    """The shortest positive `session_ticket_rotation` of the TLS listeners on `addresses` (0: none)."""
    found = [lst.tls.session_ticket_rotation for lst in cfg.listeners
             if lst.tls is not None and lst.address in addresses and lst.tls.session_tickets
             and lst.tls.session_ticket_rotation > 0]
    return min(found, default=0.0)


# -- upstreams -------------------------------------------------------------------------------------

def upstream_key(tls: UpstreamTls | None) -> tuple | None:
    """What makes a TLS connection to a target different from another's: pools are kept apart by it."""
    if tls is None:
        return None
    digest = hashlib.sha256()
    for path in (tls.ca_file, tls.cert, tls.key):      # a file rewritten in place is a new key
        if path is not None:
            try:
                with open(path, "rb") as f:
                    digest.update(f.read())
            except OSError:
                digest.update(b"unreadable")
        digest.update(b"\0")
    for inline in (tls.ca_pem, tls.cert_pem, tls.key_pem):
        digest.update((inline or "").encode() + b"\0")
    sans = tuple((s.hostname, s.uri) for s in tls.subject_alt_names or ())
    return (tls.server_name, tls.verify, tls.ca_file, tls.cert, tls.key, tuple(tls.alpn or ()), tls.min_version,
            sans, digest.hexdigest())


def _dns_match(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, dot, rest = name.partition(".")
        return bool(head) and dot == "." and rest == pattern[2:]
    return pattern == name


def upstream_peer_check(tls: UpstreamTls):
    """The check of an upstream's verified certificate against `subject_alt_names` (None: the
    context's own hostname check does it). Called by the core once the handshake is done."""
    if not tls.verify or not tls.subject_alt_names:
        return None
    want_dns = [s.hostname for s in tls.subject_alt_names if s.hostname is not None]
    want_uri = {s.uri for s in tls.subject_alt_names if s.uri is not None}

    def check(sslobj) -> bool:
        cert = sslobj.getpeercert() if sslobj is not None else None
        for kind, value in (cert or {}).get("subjectAltName", ()):
            if kind == "URI" and value in want_uri:
                return True
            if kind == "DNS" and any(_dns_match(value, w) for w in want_dns):
                return True
        return False

    return check


def upstream_context(tls: UpstreamTls) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = _VERSIONS[tls.min_version]
    if tls.verify:
        ctx.verify_mode = ssl.CERT_REQUIRED
        # with subject_alt_names the chain is OpenSSL's to verify and the name upstream_peer_check's
        ctx.check_hostname = not tls.subject_alt_names
        if tls.ca_file is None and tls.ca_pem is None:
            ctx.load_default_certs()
        else:
            ctx.load_verify_locations(cafile=tls.ca_file, cadata=tls.ca_pem)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert is not None or tls.cert_pem is not None:
        load_pem_pair(ctx, tls.cert, tls.key, tls.cert_pem, tls.key_pem)
    if tls.alpn:
        ctx.set_alpn_protocols(list(tls.alpn))
    return ctx
