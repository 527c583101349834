"""`external_auth` config errors, each with its `$.path`."""

from __future__ import annotations

import pytest
from support.policy_config import problems, write_policies

from fastgw.config import load_config


def test_good(tmp_path):
    path = write_policies(tmp_path, "- {type: external_auth, url: 'http://auth.internal:9000/verify', "
                          "upstream_headers: [X-User], timeout: 300ms, on_failure: allow}\n")
    load_config(path)
    path = write_policies(tmp_path, "- {type: external_auth, url: 'http://auth', request_headers: ['*'], "
                          "upstream_headers: ['*'], client_headers: ['*']}\n")
    load_config(path)


@pytest.mark.parametrize("policy,path,message", [
    ("- {type: external_auth, url: 'auth.internal:9000'}", "$.routes[0].policies[0].url", "not an http(s) URL"),
    ("- {type: external_auth, url: 'http://auth/x?a=1'}", "$.routes[0].policies[0].url", "no query"),
    ("- {type: external_auth, url: 'http://auth', upstream_headers: [Content-Length]}",
     "$.routes[0].policies[0].upstream_headers[0]", "gateway's to set"),
    ("- {type: external_auth, url: 'http://auth', request_headers: ['bad header']}",
     "$.routes[0].policies[0].request_headers[0]", "not a valid header name"),
    ("- {type: external_auth, url: 'http://auth', request_headers: [Cookie, '*']}",
     "$.routes[0].policies[0].request_headers[1]", "must be alone"),
    ("- {type: external_auth, url: 'http://auth', upstream_headers: ['*', X-User]}",
     "$.routes[0].policies[0].upstream_headers[0]", "must be alone"),
    ("- {type: external_auth, url: 'http://auth', on_failure: maybe}",
     "$.routes[0].policies[0].on_failure", "maybe"),
])
def test_bad(tmp_path, policy, path, message):
    got = problems(tmp_path, policy + "\n")
    assert any(p == path and message in m for p, m in got), got
