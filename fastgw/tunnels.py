"""The metrics of tunnels and stream listeners (docs/tunnels.md): open tunnels by kind, and per tcp /
tls-passthrough route the connections, refusals, connect failures and bytes each way. Registered
with fastgw.metrics as one more collector."""

from __future__ import annotations

from collections import Counter

from . import _core
from .metrics import Family, counter, gauge, register

__all__ = ["tunnel_families"]

KINDS = ("websocket", "upgrade", "tcp", "tls-passthrough", "tls")


def tunnel_families(worker) -> list[Family]:
    open_by_kind = Counter(t.kind for t in worker.tunnel_list() if t.is_open)
    stats = _core.stream_stats()
    conns, refused, failed, nin, nout = [], [], [], [], []
    for st in stats:
        labels = [st.listener, st.route or ""]
        conns.append([labels, st.connections])
        refused.append([labels, st.refused])
        failed.append([labels, st.connect_failures])
        nin.append([labels, st.bytes_received])
        nout.append([labels, st.bytes_sent])
    pair = ["listener", "route"]
    return [
        gauge("fastgw_tunnels_open", "Open tunnels: WebSocket and other upgrades, tcp and tls-passthrough "
              "connections.", ["kind"], [[[k], open_by_kind.get(k, 0)] for k in KINDS]),
        counter("fastgw_stream_connections_total", "Connections of tcp / tls-passthrough listeners sent to "
                "an upstream, by listener address and route.", pair, conns),
        counter("fastgw_stream_refused_total", "Connections of tcp / tls-passthrough listeners refused: no "
                "route for the SNI, a malformed or missing ClientHello, no upstream target (route \"\": "
                "before a route was known).", pair, refused),
        counter("fastgw_stream_connect_failures_total", "Upstream connections of stream routes that failed.",
                pair, failed),
        counter("fastgw_stream_received_bytes_total", "Bytes received from clients on stream routes (counted "
                "when the connection ends).", pair, nin),
        counter("fastgw_stream_sent_bytes_total", "Bytes sent to clients on stream routes (counted when the "
                "connection ends).", pair, nout),
    ]


register(tunnel_families)
