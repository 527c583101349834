"""The rate_limit policy's config: key sources, limits, `redis:` and its redaction."""

from __future__ import annotations

import msgspec
import pytest

from fastgw.admin.redact import redacted_config
from fastgw.config import ConfigError, loads_config
from fastgw.config.ratelimit import parse_key_part
from fastgw.ratelimit_cluster import redacted_url

BASE = """
listeners: [{address: "127.0.0.1:0"}]
upstreams: {u: {targets: [{address: "127.0.0.1:9"}]}}
routes:
  - name: r
    match: {path: {template: "/users/{id}"}}
    upstream: u
    policies: [%s]
"""


def load(policy: str, extra: str = ""):
    return loads_config(BASE % policy + extra, "yaml", file="gw.yaml")


def errors(policy: str, extra: str = "") -> str:
    with pytest.raises(ConfigError) as exc:
        load(policy, extra)
    return str(exc.value)


def test_key_parts():
    assert parse_key_part("client_ip") == ("client_ip", "")
    assert parse_key_part("header:X-Api-Key") == ("header", "x-api-key")
    assert parse_key_part("query:tenant") == ("query", "tenant")
    for bad in ("cookie:x", "header:", "header:a b", "ip"):
        with pytest.raises(ValueError):
            parse_key_part(bad)


def test_a_valid_policy_and_its_defaults():
    cfg = load("{type: rate_limit, limits: [{rate: 10, key: [client_ip, capture:id]}]}")
    policy = cfg.routes[0].policies[0]
    assert policy.headers == ["ietf"] and policy.status == 429 and policy.limits[0].period == 1.0


def test_errors_name_their_path():
    text = errors("{type: rate_limit, limits: [{rate: -1}]}")
    assert "$.routes[0].policies[0].limits[0].rate" in text
    text = errors("{type: rate_limit, limits: [{rate: 5, cost: 6}]}")
    assert "$.routes[0].policies[0].limits[0].cost" in text
    text = errors("{type: rate_limit, limits: [{rate: 5, period: 0s}]}")
    assert "$.routes[0].policies[0].limits[0].period" in text
    text = errors("{type: rate_limit, limits: [{concurrent: 5, scope: cluster}]}", "redis: {url: 'redis://h'}\n")
    assert "$.routes[0].policies[0].limits[0].scope" in text
    text = errors("{type: rate_limit, limits: [{rate: 1000000000, period: 0.5s}]}")
    assert "$.routes[0].policies[0].limits[0].rate" in text and "10^9" in text
    text = errors("{type: rate_limit, limits: [{rate: 1, key: [capture:nope]}]}")
    assert "no capture 'nope'" in text


def test_redis_url_checked_and_redacted():
    text = errors("{type: rate_limit, limits: [{rate: 1}]}", "redis: {url: 'http://:pw@h:1'}\n")
    assert "$.redis.url" in text and "pw" not in text
    cfg = load("{type: rate_limit, limits: [{rate: 1, scope: cluster}]}", "redis: {url: 'redis://:hunter2@h:6379/0'}\n")
    shown = msgspec.json.encode(redacted_config(cfg)).decode()
    assert "hunter2" not in shown and "redis://:<redacted>@h:6379/0" in shown
    assert redacted_url("redis://h:1/0") == "redis://h:1/0"


def test_redis_sentinel_and_cluster_settings():
    ok = "{type: rate_limit, limits: [{rate: 1, scope: cluster}]}"
    cfg = load(ok, "redis: {url: 'redis://:pw@/2', mode: sentinel, sentinels: ['10.0.0.1:26379', '[::1]'],"
                   " service: main, sentinel_password: s3cret}\n")
    assert cfg.redis.mode == "sentinel" and cfg.redis.service == "main" and cfg.redis.timeout == 0.25
    shown = msgspec.json.encode(redacted_config(cfg)).decode()
    assert "s3cret" not in shown and "pw@" not in shown
    cfg = load(ok, "redis: {url: 'redis://10.0.0.1:7000', mode: cluster, nodes: ['10.0.0.2:7000']}\n")
    assert cfg.redis.nodes == ["10.0.0.2:7000"]
    text = errors(ok, "redis: {url: 'redis://', mode: sentinel}\n")
    assert "$.redis.sentinels" in text and "Sentinels' addresses" in text
    text = errors(ok, "redis: {url: 'redis://h', mode: sentinel, sentinels: ['h:notaport']}\n")
    assert "$.redis.sentinels[0]" in text
    text = errors(ok, "redis: {url: 'redis://h', mode: cluster, nodes: ['a/b']}\n")
    assert "$.redis.nodes[0]" in text
    text = errors(ok, "redis: {url: 'redis://h', nodes: ['a:1']}\n")
    assert "$.redis.nodes" in text and "mode: cluster" in text
    text = errors(ok, "redis: {url: 'redis://h', mode: ring}\n")
    assert "$.redis.mode" in text
    text = errors(ok, "redis: {url: 'redis://', mode: cluster}\n")
    assert "$.redis.url" in text and "no host" in text


def test_cluster_keys_are_hash_tagged():
    from fastgw.config.ratelimit import Redis
    from fastgw.ratelimit_cluster import bucket_key

    assert bucket_key(Redis(url="redis://h"), 1, 2) == "fastgw:rl:0000000000000001:0000000000000002"
    assert bucket_key(Redis(url="redis://h", mode="cluster"), 1, 2) == "fastgw:rl:{0000000000000001:0000000000000002}"
    text = errors("{type: rate_limit, limits: [{rate: 1, scope: cluster}]}",
                  "redis: {url: 'redis://h', mode: cluster, key_prefix: '{x}:'}\n")
    assert "$.redis.key_prefix" in text
