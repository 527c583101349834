"""`cors` config errors, each with its `$.path`: credentials with a wildcard origin above all."""

from __future__ import annotations

import pytest
from support.policy_config import problems, write_policies

from fastgw.config import load_config


def test_good(tmp_path):
    path = write_policies(tmp_path, "- {type: cors, allow_origins: ['https://app.example', 'https://*.example.org'], "
                          "allow_credentials: true, allow_methods: [PUT], allow_headers: ['*'], max_age: 600}\n")
    load_config(path)


@pytest.mark.parametrize("policy,path,message", [
    ("- {type: cors, allow_origins: ['*'], allow_credentials: true}",
     "$.routes[0].policies[0].allow_credentials", "credentials cannot be allowed for every origin"),
    ("- {type: cors, allow_origins: ['*', 'https://a.example']}",
     "$.routes[0].policies[0].allow_origins", "stands alone"),
    ("- {type: cors, allow_origins: ['app.example']}",
     "$.routes[0].policies[0].allow_origins[0]", "not an origin"),
    ("- {type: cors, allow_origins: ['https://a.*.example']}",
     "$.routes[0].policies[0].allow_origins[0]", "not an origin"),
    ("- {type: cors, allow_origins: ['https://a.example:99999']}",
     "$.routes[0].policies[0].allow_origins[0]", "not an origin"),
    ("- {type: cors, allow_origin_regex: ['(']}",
     "$.routes[0].policies[0].allow_origin_regex[0]", "not a regular expression"),
    ("- {type: cors}", "$.routes[0].policies[0]", "needs allow_origins or allow_origin_regex"),
    ("- {type: cors, allow_origins: ['*'], allow_methods: ['GET POST']}",
     "$.routes[0].policies[0].allow_methods[0]", "not a valid method"),
    ("- {type: cors, allow_origins: ['*'], max_age: -1}", "$.routes[0].policies[0].max_age", ">= 0"),
])
def test_bad(tmp_path, policy, path, message):
    got = problems(tmp_path, policy + "\n")
    assert any(p == path and message in m for p, m in got), got
