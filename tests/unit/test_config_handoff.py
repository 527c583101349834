"""How the supervisor hands a validated config to its workers (`apply` on the control channel): as
plain msgpack data from which the worker rebuilds exactly the Structs the supervisor validated."""

from __future__ import annotations

import msgspec

from fastgw.config.decode import convert
from fastgw.sources import loads_config
from fastgw.worker_ops import config_payload

RICH = """
listeners:
  - {address: '127.0.0.1:0', name: public, hostname: 'API.example.com'}
  - {address: '[::1]:0'}
upstreams:
  users:
    targets: [{address: '10.0.0.5:8000', weight: 3}, {address: 'users.svc:8000'}]
    timeouts: {connect: 250ms, response_header: 1m30s}
    keepalive: {max_idle: 4, idle_timeout: 2s}
  mirror: {targets: []}
routes:
  - name: users
    listeners: [public]
    matches:
      - {hosts: ['*.Example.com'], path: {template: '/users/{id}'}, methods: [GET],
         headers: [{name: X-A, regex: 'a+'}], query: [{name: q, present: true}]}
    backends:
      - {upstream: users, weight: 2, filters: {request_headers: {set: {X-B: b}}}}
      - {upstream: mirror, weight: 0}
    filters:
      rewrite: {path: {full: '/u/{id}'}}
      mirror: {upstream: mirror, percent: 12.5}
      versioning: {deprecated_at: '2026-01-31T00:00:00Z', successor: 'https://x/v2'}
    policies:
      - {type: respond, status: 503, on_upstream_status: [502], body: down}
  - name: old
    match: {path: {prefix: /old}}
    filters: {redirect: {hostname: new.example.com, status: 301}}
limits: {max_body_bytes: 1024, header_timeout: 3s}
server: {drain_timeout: 0, path_normalization: reject}
policies:
  - {type: plugin, name: signer, module: 'examples.plugins.request_signer:RequestSigner',
     config: {key: 0123456789abcdef0123, signed_headers: [content-type]}, timeout: 1s}
admin: {address: '127.0.0.1:0', token: 0123456789abcdef}
"""


def test_a_config_survives_the_handoff_unchanged():
    cfg = loads_config(RICH, "yaml")
    payload = msgspec.msgpack.decode(msgspec.msgpack.encode(config_payload(cfg)))
    assert convert(payload) == cfg


def test_durations_stay_seconds_and_names_stay_lowercased():
    cfg = convert(config_payload(loads_config(RICH, "yaml")))
    assert cfg.upstreams["users"].timeouts.connect == 0.25 and cfg.server.drain_timeout == 0.0
    assert type(cfg.limits.header_timeout) is float
    assert cfg.listeners[0].hostname == "api.example.com"
    assert cfg.routes[0].matches[0].hosts == ["*.example.com"]
