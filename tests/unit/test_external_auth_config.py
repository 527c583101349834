"""`external_auth` config errors, each with its `$.path`."""

from __future__ import annotations

import textwrap

import pytest

from fastgw.config import ConfigError, load_config

BASE = """\
listeners:
  - address: 127.0.0.1:0
upstreams:
  app:
    targets:
      - address: 127.0.0.1:9
routes:
  - name: api
    upstream: app
    policies:
"""


def problems(tmp_path, policy: str) -> list[tuple[str, str]]:
    path = tmp_path / "gw.yaml"
    path.write_text(BASE + textwrap.indent(textwrap.dedent(policy), "      "))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [(i.path, i.message) for i in info.value.errors]


def test_good(tmp_path):
    path = tmp_path / "gw.yaml"
    path.write_text(BASE + "      - {type: external_auth, url: 'http://auth.internal:9000/verify', "
                    "upstream_headers: [X-User], timeout: 300ms, on_failure: allow}\n")
    load_config(path)


@pytest.mark.parametrize("policy,path,message", [
    ("- {type: external_auth, url: 'auth.internal:9000'}", "$.routes[0].policies[0].url", "not an http(s) URL"),
    ("- {type: external_auth, url: 'http://auth/x?a=1'}", "$.routes[0].policies[0].url", "no query"),
    ("- {type: external_auth, url: 'http://auth', upstream_headers: [Content-Length]}",
     "$.routes[0].policies[0].upstream_headers[0]", "gateway's to set"),
    ("- {type: external_auth, url: 'http://auth', request_headers: ['bad header']}",
     "$.routes[0].policies[0].request_headers[0]", "not a valid header name"),
    ("- {type: external_auth, url: 'http://auth', on_failure: maybe}",
     "$.routes[0].policies[0].on_failure", "maybe"),
])
def test_bad(tmp_path, policy, path, message):
    got = problems(tmp_path, policy + "\n")
    assert any(p == path and message in m for p, m in got), got
