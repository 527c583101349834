"""Config of consumers and the auth / IP policies (issue 10): every error with its `$.path` and
line, and never a secret in a message; the compiled pieces (IpSet against ipaddress, the key
digests, the compare function the request path uses)."""

from __future__ import annotations

import hmac
import ipaddress
import random
import textwrap

import pytest

from fastgw import _core
from fastgw.admin.redact import REDACTED, redacted_config
from fastgw.auth.ipsets import ip_set, merged_ranges
from fastgw.config import ConfigError, loads_config

HEAD = """\
listeners:
  - address: 127.0.0.1:0
upstreams:
  echo:
    targets: [{address: 127.0.0.1:9}]
"""
SECRET = "sk-very-secret-key-1234"


def load(body: str):
    return loads_config(HEAD + textwrap.dedent(body), "yaml", file="t.yaml")


def issues(body: str) -> list[tuple[str, int | None, str]]:
    with pytest.raises(ConfigError) as info:
        load(body)
    out = [(i.path, i.line, i.message) for i in info.value.errors]
    for _, _, message in out:
        assert SECRET not in message
    return out


def only(body: str) -> tuple[str, int | None, str]:
    found = issues(body)
    assert len(found) == 1, found
    return found[0]


def test_a_valid_config_loads():
    cfg = load(f"""\
        consumers:
          - name: alice
            groups: [admin]
            credentials:
              api_keys: ["{SECRET}", {{env: HOME}}]
              jwt: [{{issuer: "https://idp.test", subject: alice}}, {{issuer: "https://other.test"}}]
        routes:
          - name: r
            upstream: echo
            policies:
              - type: auth
                mode: all_of
                methods: [{{type: api_key}}, {{type: basic_auth}}]
                groups: {{allow: [admin]}}
              - {{type: ip_allow, cidrs: ["10.0.0.0/8", "::1"]}}
              - {{type: trusted_proxies, depth: 1}}
        """)
    assert cfg.consumers[0].credentials.jwt[1].subject is None


def test_unknown_consumer_and_group():
    found = issues("""\
        consumers: [{name: alice, groups: [admin]}]
        routes:
          - name: r
            upstream: echo
            policies:
              - {type: api_key, consumers: [alice, bob]}
              - {type: groups, allow: [admins]}
        """)
    assert ("$.routes[0].policies[0].consumers[1]", 11, "consumer 'bob' is not defined in $.consumers") in found
    assert ("$.routes[0].policies[1].allow[0]", 12, "no consumer is in group 'admins'") in found


def test_cidr_that_does_not_parse():
    path, line, message = only("""\
        policies:
          - {type: ip_deny, cidrs: ["10.0.0.0/8", "10.0.0.300/32"]}
        """)
    assert (path, line) == ("$.policies[0].cidrs[1]", 7)
    assert "10.0.0.300/32" in message


def test_trusted_proxies_needs_one_of_cidrs_and_depth():
    assert only("policies: [{type: trusted_proxies}]\n")[0] == "$.policies[0]"
    assert only("policies: [{type: trusted_proxies, depth: 1, cidrs: [10.0.0.0/8]}]\n")[0] == "$.policies[0]"
    assert only("policies: [{type: trusted_proxies, cidrs: [nope]}]\n")[0] == "$.policies[0].cidrs[0]"


def test_duplicate_api_key_does_not_show_it():
    path, _, message = only(f"""\
        consumers:
          - {{name: a, credentials: {{api_keys: ["{SECRET}"]}}}}
          - {{name: b, credentials: {{api_keys: ["{SECRET}"]}}}}
        """)
    assert path == "$.consumers[1].credentials.api_keys[0]"
    assert "$.consumers[0].credentials.api_keys[0]" in message


def test_secret_references(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTGW_NO_SUCH_VAR", raising=False)
    found = issues(f"""\
        consumers:
          - name: a
            credentials:
              api_keys: [{{env: FASTGW_NO_SUCH_VAR}}, {{file: {tmp_path}/missing}}, {{env: X, file: y}}]
        """)
    assert [p for p, _, _ in found] == [f"$.consumers[0].credentials.api_keys[{i}]" for i in range(3)]
    assert "FASTGW_NO_SUCH_VAR is not set" in found[0][2]


def test_password_hash_must_be_bcrypt_or_argon2():
    path, _, message = only(f"""\
        consumers:
          - name: a
            credentials: {{basic_auth: {{username: a, password_hash: "{SECRET}"}}}}
        """)
    assert path == "$.consumers[0].credentials.basic_auth.password_hash"
    assert "bcrypt" in message


def test_htpasswd_errors_name_file_and_line(tmp_path):
    f = tmp_path / "h"
    f.write_text("ok:$2b$04$" + "a" * 53 + "\nbad:{SHA}" + SECRET + "\n")
    found = issues(f"policies: [{{type: basic_auth, htpasswd: [{tmp_path}/nope, {f}]}}]\n")
    assert [p for p, _, _ in found] == ["$.policies[0].htpasswd[0]", "$.policies[0].htpasswd[1]"]
    assert f"{f}:2" in found[1][2] and SECRET not in found[1][2]


def test_groups_inside_a_combinator_belong_to_it():
    path, _, _ = only("""\
        consumers: [{name: a, groups: [g]}]
        policies:
          - type: auth
            methods: [{type: api_key, groups: {allow: [g]}}]
        """)
    assert path == "$.policies[0].methods[0].groups"


def test_duplicate_consumer_and_jwt_binding():
    found = issues("""\
        consumers:
          - {name: a, credentials: {jwt: [{issuer: i, subject: s}]}}
          - {name: a, credentials: {jwt: [{issuer: i, subject: s}]}}
        """)
    assert {p for p, _, _ in found} == {"$.consumers[1].name", "$.consumers[1].credentials.jwt[0]"}


def test_redaction_hides_inline_secrets_and_keeps_references():
    cfg = load(f"""\
        consumers:
          - name: a
            credentials:
              api_keys: ["{SECRET}", {{env: HOME}}]
              basic_auth: {{username: a, password_hash: "$2b$04${'a' * 53}"}}
        """)
    data = redacted_config(cfg)
    creds = data["consumers"][0]["credentials"]
    assert creds["api_keys"] == [REDACTED, {"env": "HOME", "file": None}]
    assert creds["basic_auth"]["password_hash"] == REDACTED
    assert SECRET not in repr(data)


# ---- compiled pieces ------------------------------------------------------------------------------

def test_the_compare_on_the_request_path_is_the_constant_time_one():
    assert _core._secret_equal is hmac.compare_digest
    keys = _core.SecretDigests([(b"k1", "one"), (b"k2", "two")])
    assert keys.lookup(b"k1") == "one" and keys.lookup(b"k2") == "two"
    assert keys.lookup(b"k3") is None and keys.lookup(b"") is None


@pytest.mark.parametrize("portable", [False, True])
def test_the_request_path_sha256_is_hashlib_s(portable):
    """The api_key and basic_auth digests (apikey.pyx's SHA-256, on the CPU's SHA extensions where
    it has them, else plain C rounds): the same as hashlib's, whatever the length and padding."""
    import hashlib
    rnd = random.Random(5)
    for n in [*range(0, 200), 447, 448, 1000, 4096]:
        data = rnd.randbytes(n)
        assert _core.sha256_digest(data, portable) == hashlib.sha256(data).digest(), (n, portable)


def test_ip_set_agrees_with_ipaddress():
    rnd = random.Random(7)
    cidrs = [f"{rnd.randrange(1, 224)}.{rnd.randrange(256)}.{rnd.randrange(256)}.0/{rnd.randrange(8, 33)}"
             for _ in range(300)]
    cidrs += [f"2001:db8:{rnd.randrange(65536):x}::/{rnd.randrange(32, 129)}" for _ in range(300)]
    nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    s = ip_set(cidrs)
    probes = [str(n.network_address) for n in nets] + [str(n.broadcast_address) for n in nets]
    probes += [str(ipaddress.IPv4Address(rnd.getrandbits(32))) for _ in range(2000)]
    probes += [f"2001:db8:{rnd.randrange(65536):x}::{rnd.randrange(65536):x}" for _ in range(2000)]
    for p in probes:
        a = ipaddress.ip_address(p)
        assert (p in s) == any(a in n for n in nets if n.version == a.version), p


def test_ip_set_merges_and_maps_v4():
    assert merged_ranges(["10.0.0.0/25", "10.0.0.128/25", "10.0.0.5"]) == [
        ((0xFFFF << 32) | 0x0A000000, (0xFFFF << 32) | 0x0A0000FF)]
    s = ip_set(["10.0.0.0/8"])
    assert "::ffff:10.1.2.3" in s and "10.1.2.3:8080" in s and "[::ffff:10.0.0.1]:1" in s
    assert "unknown" not in s and "" not in s and "11.0.0.0" not in s


def test_compiled_policies_describe_themselves_without_secrets(tmp_path):
    from fastgw.policychain import compile_chains
    f = tmp_path / "h"
    f.write_text("u:$2b$04$" + "b" * 53 + "\n")
    cfg = load(f"""\
        consumers:
          - name: a
            groups: [g]
            credentials:
              api_keys: ["{SECRET}"]
              basic_auth: {{username: a, password_hash: "$2b$04${'a' * 53}"}}
        routes:
          - name: r
            upstream: echo
            policies:
              - type: auth
                methods: [{{type: api_key, query: [k]}}, {{type: basic_auth, htpasswd: ["{f}"]}}]
                groups: {{allow: [g]}}
              - {{type: ip_allow, cidrs: ["10.0.0.0/8"]}}
        """)
    _, chains, _ = compile_chains(cfg)
    text = " ".join(p.describe() for p in chains["r"].policies)
    assert "any of" in text and "1 keys" in text and "2 users" in text and "1 CIDRs" in text
    assert SECRET not in text and "$2b$" not in text


def test_consumer_headers_cannot_be_the_gateways():
    found = issues("""\
        policies:
          - {type: api_key, upstream_headers: {name: X-Forwarded-For}}
          - {type: auth, methods: [{type: api_key}], upstream_headers: {name: X-C, groups: x-c}}
        """)
    assert [p for p, _, _ in found] == ["$.policies[0].upstream_headers.name", "$.policies[1].upstream_headers.groups"]
