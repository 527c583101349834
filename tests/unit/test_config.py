"""fastgw.config: decoding YAML/JSON/TOML files into GatewayConfig, and the errors it reports."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import msgspec
import pytest

from fastgw.config import (
    ConfigError,
    ConfigIssue,
    GatewayConfig,
    Listener,
    Target,
    json_schema,
    load_config,
    loads_config,
    parse_duration,
)

FULL_YAML = """\
listeners:
  - address: 0.0.0.0:8080
  - address: "[::1]:0"
upstreams:
  users:
    targets:
      - {address: 10.0.0.5:8000, weight: 3}
      - {address: users.default.svc.cluster.local:8000}
    timeouts: {connect: 2s, response_header: 30s, body_idle: 1m30s}
    keepalive: {max_idle: 32, idle_timeout: 90s, max_requests: 500}
  orders:
    targets:
      - address: "[2001:db8::1]:9000"
routes:
  - name: users-api
    match:
      hosts: [API.Example.com, "*.example.com"]
      path: {prefix: /users}
    upstream: users
    max_body_bytes: 1048576
  - name: me
    match:
      path: {exact: /users/me}
    upstream: users
  - name: orders
    upstream: orders
limits:
  max_request_line_bytes: 4096
  max_header_bytes: 32768
  max_headers: 50
  max_body_bytes: 10485760
  header_timeout: 250ms
  keepalive_timeout: 1h
  max_requests_per_connection: 100
  underscores_in_headers: drop
server:
  drain_timeout: 1.5s
"""

FULL_JSON = """\
{
  "listeners": [{"address": "0.0.0.0:8080"}, {"address": "[::1]:0"}],
  "upstreams": {
    "users": {
      "targets": [
        {"address": "10.0.0.5:8000", "weight": 3},
        {"address": "users.default.svc.cluster.local:8000"}
      ],
      "timeouts": {"connect": "2s", "response_header": "30s", "body_idle": "1m30s"},
      "keepalive": {"max_idle": 32, "idle_timeout": "90s", "max_requests": 500}
    },
    "orders": {"targets": [{"address": "[2001:db8::1]:9000"}]}
  },
  "routes": [
    {
      "name": "users-api",
      "match": {"hosts": ["API.Example.com", "*.example.com"], "path": {"prefix": "/users"}},
      "upstream": "users",
      "max_body_bytes": 1048576
    },
    {"name": "me", "match": {"path": {"exact": "/users/me"}}, "upstream": "users"},
    {"name": "orders", "upstream": "orders"}
  ],
  "limits": {
    "max_request_line_bytes": 4096,
    "max_header_bytes": 32768,
    "max_headers": 50,
    "max_body_bytes": 10485760,
    "header_timeout": "250ms",
    "keepalive_timeout": "1h",
    "max_requests_per_connection": 100,
    "underscores_in_headers": "drop"
  },
  "server": {"drain_timeout": "1.5s"}
}
"""

FULL_TOML = """\
listeners = [{address = "0.0.0.0:8080"}, {address = "[::1]:0"}]

[upstreams.users]
targets = [
  {address = "10.0.0.5:8000", weight = 3},
  {address = "users.default.svc.cluster.local:8000"},
]
timeouts = {connect = "2s", response_header = "30s", body_idle = "1m30s"}
keepalive = {max_idle = 32, idle_timeout = "90s", max_requests = 500}

[upstreams.orders]
targets = [{address = "[2001:db8::1]:9000"}]

[[routes]]
name = "users-api"
match = {hosts = ["API.Example.com", "*.example.com"], path = {prefix = "/users"}}
upstream = "users"
max_body_bytes = 1048576

[[routes]]
name = "me"
match = {path = {exact = "/users/me"}}
upstream = "users"

[[routes]]
name = "orders"
upstream = "orders"

[limits]
max_request_line_bytes = 4096
max_header_bytes = 32768
max_headers = 50
max_body_bytes = 10485760
header_timeout = "250ms"
keepalive_timeout = "1h"
max_requests_per_connection = 100
underscores_in_headers = "drop"

[server]
drain_timeout = "1.5s"
"""

MINIMAL_YAML = """\
listeners:
  - address: 127.0.0.1:8080
upstreams:
  users:
    targets:
      - address: 10.0.0.5:8000
routes:
  - name: users-api
    upstream: users
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def issues_of(path: Path) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    issues = info.value.errors
    assert issues, "ConfigError without issues"
    for issue in issues:
        assert issue.file == str(path)
    return issues


def where(issues: list[ConfigIssue]) -> list[tuple[str, int | None]]:
    return [(i.path, i.line) for i in issues]


def only_issue(path: Path) -> ConfigIssue:
    issues = issues_of(path)
    assert len(issues) == 1, issues
    return issues[0]


# -- valid configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,text", [("gw.yaml", FULL_YAML), ("gw.json", FULL_JSON), ("gw.toml", FULL_TOML)]
)
def test_full_config_decodes(tmp_path, name, text):
    cfg = load_config(write(tmp_path, name, text))
    assert isinstance(cfg, GatewayConfig)
    assert [(li.host, li.port) for li in cfg.listeners] == [("0.0.0.0", 8080), ("::1", 0)]
    users = cfg.upstreams["users"]
    assert [(t.host, t.port, t.weight) for t in users.targets] == [
        ("10.0.0.5", 8000, 3),
        ("users.default.svc.cluster.local", 8000, 1),
    ]
    assert cfg.upstreams["orders"].targets[0].host == "2001:db8::1"
    assert users.timeouts.connect == 2.0
    assert type(users.timeouts.connect) is float
    assert (users.timeouts.response_header, users.timeouts.body_idle) == (30.0, 90.0)
    assert (users.keepalive.max_idle, users.keepalive.idle_timeout, users.keepalive.max_requests) == (
        32,
        90.0,
        500,
    )
    r0, r1, r2 = cfg.routes
    assert r0.name == "users-api"
    assert r0.all_matches[0].hosts == ["api.example.com", "*.example.com"]  # lowercased
    assert (r0.path_prefix, r0.path_exact, r0.max_body_bytes) == ("/users", None, 1048576)
    assert (r1.path_prefix, r1.path_exact) == (None, "/users/me")
    assert (r2.hosts, r2.path_prefix, r2.path_exact) == (None, "/", None)  # no match: any host, prefix /
    lim = cfg.limits
    assert (lim.max_request_line_bytes, lim.max_header_bytes, lim.max_headers) == (4096, 32768, 50)
    assert (lim.max_body_bytes, lim.header_timeout, lim.keepalive_timeout) == (10485760, 0.25, 3600.0)
    assert (lim.max_requests_per_connection, lim.underscores_in_headers) == (100, "drop")
    assert cfg.server.drain_timeout == 1.5
    assert cfg.route_max_body_bytes(r0) == 1048576
    assert cfg.route_max_body_bytes(r1) == 10485760


def test_same_config_in_all_formats_is_equal(tmp_path):
    from_yaml = load_config(write(tmp_path, "gw.yml", FULL_YAML))
    from_json = load_config(write(tmp_path, "gw.json", FULL_JSON))
    from_toml = load_config(write(tmp_path, "gw.toml", FULL_TOML))
    assert from_yaml == from_json == from_toml


def test_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "gw.yaml", MINIMAL_YAML))
    up = cfg.upstreams["users"]
    assert up.targets[0].weight == 1
    assert (up.timeouts.connect, up.timeouts.response_header, up.timeouts.body_idle) == (5.0, 60.0, 60.0)
    assert (up.keepalive.max_idle, up.keepalive.idle_timeout, up.keepalive.max_requests) == (64, 60.0, 1000)
    route = cfg.routes[0]
    m = route.all_matches[0]
    assert (m.hosts, m.path.prefix, m.path.exact) == (None, "/", None)
    assert route.max_body_bytes is None
    lim = cfg.limits
    assert lim.max_request_line_bytes == 8192
    assert lim.max_header_bytes == 65536
    assert lim.max_headers == 100
    assert lim.max_body_bytes is None
    assert lim.header_timeout == 10.0
    assert lim.keepalive_timeout == 60.0
    assert lim.max_requests_per_connection == 1000
    assert lim.underscores_in_headers == "reject"
    assert cfg.server.drain_timeout == 30.0
    assert cfg.route_max_body_bytes(route) is None


def test_listeners_only_is_valid(tmp_path):
    cfg = load_config(write(tmp_path, "gw.yaml", "listeners: [{address: 127.0.0.1:0}]\n"))
    assert (cfg.upstreams, cfg.routes) == ({}, [])
    assert cfg.listeners == [Listener(address="127.0.0.1:0")]


def test_match_with_hosts_only_defaults_path_to_prefix_slash(tmp_path):
    path = write(
        tmp_path,
        "gw.yaml",
        """\
        listeners: [{address: 127.0.0.1:0}]
        upstreams: {a: {targets: [{address: a:1}]}}
        routes: [{name: r, upstream: a, match: {hosts: [x.example.com]}}]
        """,
    )
    route = load_config(path).routes[0]
    assert (route.hosts, route.path_prefix, route.path_exact) == (["x.example.com"], "/", None)


def test_config_is_frozen(tmp_path):
    cfg = load_config(write(tmp_path, "gw.yaml", MINIMAL_YAML))
    with pytest.raises(AttributeError):
        cfg.limits.max_headers = 5  # type: ignore[misc]


def test_pathlike_and_str_paths(tmp_path):
    path = write(tmp_path, "gw.yaml", MINIMAL_YAML)
    assert load_config(str(path)) == load_config(path)


# -- durations -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("1.5s", 1.5),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1h1m1s500ms", 3661.5),
        ("0s", 0.0),
        ("5", 5.0),
        ("0.5", 0.5),
        (" 2s ", 2.0),
        (7, 7.0),
        (0.125, 0.125),
    ],
)
def test_parse_duration(text, seconds):
    value = parse_duration(text)
    assert value == pytest.approx(seconds)
    assert type(value) is float


@pytest.mark.parametrize(
    "text,needle",
    [
        ("-5s", "negative"),
        (-1, "negative"),
        ("", "empty"),
        ("   ", "empty"),
        ("5x", "unknown unit 'x'"),
        ("5sec", "unknown unit 'sec'"),
        ("5S", "unknown unit 'S'"),
        ("s", "invalid duration"),
        ("five", "invalid duration"),
        ("5 s", "invalid duration"),
        ("1e3s", "invalid duration"),
        (float("inf"), "finite"),
        (float("nan"), "finite"),
        (True, "boolean"),
        (None, "NoneType"),
    ],
)
def test_parse_duration_rejects(text, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        parse_duration(text)


def test_bare_number_durations_in_config(tmp_path):
    path = write(
        tmp_path,
        "gw.yaml",
        """\
        listeners: [{address: 127.0.0.1:0}]
        limits: {header_timeout: 3, keepalive_timeout: 0.5}
        server: {drain_timeout: 0}
        """,
    )
    cfg = load_config(path)
    assert (cfg.limits.header_timeout, cfg.limits.keepalive_timeout, cfg.server.drain_timeout) == (
        3.0,
        0.5,
        0.0,
    )


def test_bad_duration_in_config(tmp_path):
    path = write(
        tmp_path,
        "gw.yaml",
        """\
        listeners:
          - address: 127.0.0.1:8080
        upstreams:
          users:
            targets: [{address: a:1}]
            timeouts:
              connect: 2 seconds
        """,
    )
    issue = only_issue(path)
    assert (issue.path, issue.line) == ("$.upstreams.users.timeouts.connect", 7)
    assert "invalid duration '2 seconds'" in issue.message


def test_zero_timeout_is_refused(tmp_path):
    path = write(
        tmp_path,
        "gw.yaml",
        """\
        listeners:
          - address: 127.0.0.1:8080
        limits:
          header_timeout: 0s
        """,
    )
    issue = only_issue(path)
    assert (issue.path, issue.line) == ("$.limits.header_timeout", 4)
    assert "greater than zero" in issue.message


# -- decode errors: unknown fields, types, required fields ----------------------------------------


def test_unknown_top_level_field(tmp_path):
    path = write(
        tmp_path,
        "gw.yaml",
        """\
        listeners:
          - address: 127.0.0.1:8080
        # a comment
        rutes: []
        """,
    )
    issue = only_issue(path)
    assert (issue.path, issue.line) == ("$.rutes", 4)
    assert issue.message.startswith("unknown field")
    assert "listeners, upstreams, routes, limits, server" in issue.message
    assert str(issue) == f"{path}:4: $.rutes: {issue.message}"


def test_unknown_nested_field(tmp_path):
    path = write(
        tmp_path,
        "gw.yaml",
        """\
        listeners:
          - address: 127.0.0.1:8080
        upstreams:
          other:
            targets: [{address: a:1}]
          users:
            targets:
              - address: 10.0.0.5:8000
              - address: 10.0.0.6:8000
                wieght: 3
        """,
    )
    issue = only_issue(path)
    # The dict key is named (msgspec itself reports `$.upstreams[...]`).
    assert (issue.path, issue.line) == ("$.upstreams.users.targets[1].wieght", 10)
    assert issue.message == "unknown field (did you mean 'weight'? expected one of: address, weight)"


def test_unknown_field_in_json_has_line(tmp_path):
    path = write(
        tmp_path,
        "gw.json",
        """\
        {
          "listeners": [{"address": "127.0.0.1:8080"}],
          "routes": [
            {"name": "a", "upstream": "x",
             "match": {"path": {"prefix": "/", "regexp": ".*"}}}
          ]
        }
        """,
    )
    issue, semantic = issues_of(path)
    assert (issue.path, issue.line) == ("$.routes[0].match.path.regexp", 5)
    assert issue.message == "unknown field (did you mean 'regex'? expected one of: prefix, exact, template, regex)"
    # The decode error does not hide the semantic one.
    assert (semantic.path, semantic.line) == ("$.routes[0].upstream", 4)


def test_unknown_field_in_toml(tmp_path):
    path = write(
        tmp_path,
        "gw.toml",
        """\
        listeners = [{address = "127.0.0.1:8080"}]
        [limits]
        max_header = 5
        """,
    )
    issue = only_issue(path)
    assert (issue.path, issue.line) == ("$.limits.max_header", None)
    assert str(issue) == f"{path}: $.limits.max_header: {issue.message}"


def test_bad_type(tmp_path):
    path = write(
        tmp_path,
        "gw.yaml",
        """\
        listeners:
          - address: 127.0.0.1:8080
        upstreams:
          users:
            targets:
              - address: 10.0.0.5:8000
                weight: "3"
        """,
    )
    issue = only_issue(path)
    assert (issue.path, issue.line) == ("$.upstreams.users.targets[0].weight", 7)
    assert issue.message == "expected `int`, got `str`"


@pytest.mark.parametrize(
    "limits,key,needle",
    [
        ("max_headers: 0", "max_headers", ">= 1"),
        ("max_body_bytes: -1", "max_body_bytes", ">= 0"),
        ("underscores_in_headers: allow", "underscores_in_headers", "invalid enum value 'allow'"),
        ("max_header_bytes: true", "max_header_bytes", "expected `int`, got `bool`"),
    ],
)
def test_bad_limit_values(tmp_path, limits, key, needle):
    path = write(tmp_path, "gw.yaml", f"listeners: [{{address: 127.0.0.1:1}}]\nlimits:\n  {limits}\n")
    issue = only_issue(path)
    assert (issue.path, issue.line) == (f"$.limits.{key}", 3)
    assert needle in issue.message


def test_weight_out_of_range(tmp_path):
    path = write(
        tmp_path,
        "gw.yaml",
        """\
        listeners: [{address: 127.0.0.1:1}]
        upstreams:
          users:
            targets:
              - {address: a:1, weight: 1001}
        """,
    )
    issue = only_issue(path)
    assert (issue.path, issue.line) == ("$.upstreams.users.targets[0].weight", 5)
    assert "<= 1000" in issue.message


def test_missing_required_field(tmp_path):
    path = write(
        tmp_path,
        "gw.yaml",
        """\
        listeners: [{address: 127.0.0.1:1}]
        upstreams: {a: {targets: [{address: a:1}]}}
        routes:
          - name: first
            upstream: a
          - name: second
            match: {path: {prefix: /x}}
        """,
    )
    issue = only_issue(path)
    assert (issue.path, issue.line) == ("$.routes[1]", 6)
    assert issue.message == "one of 'upstream', 'backends' or 'filters.redirect' is required"


def test_missing_listeners(tmp_path):
    issue = only_issue(write(tmp_path, "gw.yaml", "\nroutes: []\n"))
    assert (issue.path, issue.line, issue.message) == ("$", 2, "missing required field 'listeners'")


@pytest.mark.parametrize(
    "text,path,line,message",
    [
        ("listeners: []\n", "$.listeners", 1, "at least one listener is required"),
    ],
)
def test_empty_lists_refused(tmp_path, text, path, line, message):
    issue = only_issue(write(tmp_path, "gw.yaml", text))
    assert (issue.path, issue.line, issue.message) == (path, line, message)


def test_upstream_without_targets_is_valid(tmp_path):
    cfg = load_config(write(tmp_path, "gw.yaml", "listeners: [{address: 127.0.0.1:1}]\nupstreams:\n  a:\n    targets: []\n"))
    assert cfg.upstreams["a"].targets == []


def test_top_level_not_a_mapping(tmp_path):
    issue = only_issue(write(tmp_path, "gw.yaml", "- a\n- b\n"))
    assert (issue.path, issue.line) == ("$", 1)
    assert issue.message == "expected `object`, got `array`"


def test_empty_file(tmp_path):
    issue = only_issue(write(tmp_path, "gw.yaml", "# nothing here\n"))
    assert (issue.path, issue.line, issue.message) == ("$", None, "config is empty")


# -- semantic errors: all reported together --------------------------------------------------------


def test_unknown_upstream(tmp_path):
    path = write(
        tmp_path,
        "gw.yaml",
        """\
        listeners: [{address: 127.0.0.1:1}]
        upstreams:
          users: {targets: [{address: a:1}]}
          orders: {targets: [{address: b:1}]}
        routes:
          - name: r
            upstream: userz
        """,
    )
    issue = only_issue(path)
    assert (issue.path, issue.line) == ("$.routes[0].upstream", 7)
    assert issue.message == "unknown upstream 'userz' (known: orders, users)"


def test_unknown_upstream_without_upstreams(tmp_path):
    path = write(
        tmp_path, "gw.yaml", "listeners: [{address: 127.0.0.1:1}]\nroutes: [{name: r, upstream: x}]\n"
    )
    issue = only_issue(path)
    assert (issue.path, issue.line) == ("$.routes[0].upstream", 2)
    assert issue.message == "unknown upstream 'x' (known: none defined)"


def test_duplicate_route_names(tmp_path):
    path = write(
        tmp_path,
        "gw.yaml",
        """\
        listeners: [{address: 127.0.0.1:1}]
        upstreams: {a: {targets: [{address: a:1}]}}
        routes:
          - name: r
            upstream: a
          - name: other
            upstream: a
          - name: r
            upstream: a
        """,
    )
    issue = only_issue(path)
    assert (issue.path, issue.line) == ("$.routes[2].name", 8)
    assert issue.message == "duplicate route name 'r' (first at $.routes[0])"


def test_several_semantic_errors_listed_together(tmp_path):
    path = write(
        tmp_path,
        "gw.yaml",
        """\
        listeners:
          - address: 0.0.0.0:8080
          - address: 0.0.0.0:8080
        upstreams:
          users:
            targets:
              - address: 10.0.0.5:0
        routes:
          - name: a
            match:
              hosts: ["bad host"]
              path: {prefix: users}
            upstream: users
          - name: a
            match:
              path: {prefix: /x, exact: /y}
            upstream: nope
        """,
    )
    issues = issues_of(path)
    assert where(issues) == [
        ("$.listeners[1].address", 3),
        ("$.upstreams.users.targets[0].address", 7),
        ("$.routes[0].match.hosts[0]", 11),
        ("$.routes[0].match.path.prefix", 12),
        ("$.routes[1].name", 14),
        ("$.routes[1].match.path", 16),
        ("$.routes[1].upstream", 17),
    ]
    text = str(ConfigError(issues))
    lines = text.splitlines()
    assert len(lines) == 7
    assert (
        lines[0]
        == f"{path}:3: $.listeners[1].address: duplicate listener address '0.0.0.0:8080' (also at $.listeners[0])"
    )
    assert (
        lines[5]
        == f"{path}:16: $.routes[1].match.path: exactly one of 'prefix', 'exact', 'template', 'regex' is required (got prefix, exact)"
    )


def test_semantic_errors_in_toml_have_no_line(tmp_path):
    path = write(
        tmp_path,
        "gw.toml",
        """\
        listeners = [{address = "127.0.0.1:1"}]
        [[routes]]
        name = "r"
        upstream = "missing"
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (
        str(info.value) == f"{path}: $.routes[0].upstream: unknown upstream 'missing' (known: none defined)"
    )


def test_path_match_needs_prefix_or_exact(tmp_path):
    path = write(
        tmp_path,
        "gw.yaml",
        """\
        listeners: [{address: 127.0.0.1:1}]
        upstreams: {a: {targets: [{address: a:1}]}}
        routes:
          - name: r
            upstream: a
            match:
              path: {}
        """,
    )
    issue = only_issue(path)
    assert (issue.path, issue.line) == ("$.routes[0].match.path", 7)
    assert "(got none)" in issue.message


ROUTE_TEMPLATE = """\
listeners: [{{address: 127.0.0.1:1}}]
upstreams: {{a: {{targets: [{{address: a:1}}]}}}}
routes:
  - name: r
    upstream: a
    match:
      hosts:
        - ok.example.com
        - {host}
      path: {{exact: {path}}}
"""


@pytest.mark.parametrize(
    "host,needle",
    [
        ('"*"', "'*' is only allowed"),
        ('"a.*.com"', "'*' is only allowed"),
        ('"*example.com"', "'*' is only allowed"),
        ('"*.*.com"', "'*' is only allowed"),
        ('"api .example.com"', "whitespace"),
        ("api.example.com:8080", "must not include a port"),
        ('"[::1]:80"', "must not include a port"),
        ("a..b", "empty label"),
        ("example.com.", "must not end with '.'"),
        ("-bad.example.com", "label '-bad'"),
        ("under_score.com", "label 'under_score'"),
        ("300.1.1.1", "invalid IPv4"),
        ('""', "empty"),
    ],
)
def test_bad_host_pattern(tmp_path, host, needle):
    path = write(tmp_path, "gw.yaml", ROUTE_TEMPLATE.format(host=host, path="/x"))
    issue = only_issue(path)
    assert (issue.path, issue.line) == ("$.routes[0].match.hosts[1]", 9)
    assert needle in issue.message


@pytest.mark.parametrize(
    "host", ['"*.example.com"', "EXAMPLE.com", "10.0.0.1", '"[::1]"', "localhost", "xn--bcher-kva.ch"]
)
def test_good_host_pattern(tmp_path, host):
    cfg = load_config(write(tmp_path, "gw.yaml", ROUTE_TEMPLATE.format(host=host, path="/x")))
    assert cfg.routes[0].match.hosts[1] == host.strip('"').lower()


@pytest.mark.parametrize(
    "path_value,needle",
    [
        ("users", "must start with '/'"),
        ('"/a?b=1"', "must not contain '?'"),
        ('"/a#frag"', "must not contain '#'"),
        ('"/a b"', "must not contain ' '"),
        ('"/a\\r\\nb"', "must not contain '\\r'"),
        ('"/a\\0"', "must not contain '\\x00'"),
        ('"/a\\tb"', "printable ASCII"),
        ('"/caf\u00e9"', "printable ASCII"),
        ('""', "must start with '/'"),
    ],
)
def test_bad_path(tmp_path, path_value, needle):
    path = write(tmp_path, "gw.yaml", ROUTE_TEMPLATE.format(host="ok2.example.com", path=path_value))
    issue = only_issue(path)
    assert (issue.path, issue.line) == ("$.routes[0].match.path.exact", 10)
    assert needle in issue.message


# -- addresses -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address,host,port",
    [
        ("0.0.0.0:8080", "0.0.0.0", 8080),
        ("127.0.0.1:0", "127.0.0.1", 0),
        ("[::]:443", "::", 443),
        ("[fe80::1%eth0]:80", "fe80::1%eth0", 80),
        ("LocalHost:65535", "localhost", 65535),
    ],
)
def test_listener_address_parsing(address, host, port):
    listener = Listener(address=address)
    assert (listener.host, listener.port) == (host, port)


@pytest.mark.parametrize(
    "address,needle",
    [
        ("127.0.0.1", "has no port"),
        ("127.0.0.1:", "port '' is not a number"),
        ("127.0.0.1:http", "port 'http' is not a number"),
        ("127.0.0.1:65536", "port 65536 out of range 0..65535"),
        ("127.0.0.1:-1", "port '-1' is not a number"),
        (":8080", "has no host"),
        ("::1:8080", "write IPv6 addresses in brackets"),
        ("http://127.0.0.1:9001", "write host:port, without a scheme ('127.0.0.1:9001')"),
        ("https://api.internal:8443/v1", "write host:port, without a scheme ('api.internal:8443')"),
        ("[::1:8080", "missing ']'"),
        ("[::1]8080", "expected ':port'"),
        ("[nothex::1]:80", "invalid IPv6"),
        ("999.0.0.1:80", "invalid IPv4"),
        ("bad_host:80", "label 'bad_host'"),
        ("a b:80", "whitespace"),
    ],
)
def test_bad_listener_address(tmp_path, address, needle):
    path = write(
        tmp_path,
        "gw.yaml",
        f"""\
        listeners:
          - address: 127.0.0.1:1
          - address: "{address}"
        """,
    )
    issue = only_issue(path)
    assert (issue.path, issue.line) == ("$.listeners[1].address", 3)
    assert needle in issue.message


def test_target_port_zero_refused_listener_port_zero_allowed(tmp_path):
    path = write(
        tmp_path,
        "gw.yaml",
        """\
        listeners:
          - address: 127.0.0.1:0
          - address: 127.0.0.1:0
        upstreams:
          users:
            targets:
              - address: 10.0.0.1:80
              - address: 10.0.0.2:0
              - address: 10.0.0.3:70000
        """,
    )
    issues = issues_of(path)
    # listeners with one address share one socket, port 0 included: the second is a duplicate
    assert where(issues) == [
        ("$.listeners[1].address", 3),
        ("$.upstreams.users.targets[1].address", 8),
        ("$.upstreams.users.targets[2].address", 9),
    ]
    issues = issues[1:]
    assert "port 0 out of range 1..65535" in issues[0].message
    assert "port 70000 out of range 1..65535" in issues[1].message
    assert Target(address="[::1]:8000").host == "::1"


def test_duplicate_listener_detects_ipv6_spellings(tmp_path):
    path = write(
        tmp_path,
        "gw.yaml",
        """\
        listeners:
          - address: "[::1]:80"
          - address: "[0::0001]:80"
        """,
    )
    issue = only_issue(path)
    assert (issue.path, issue.line) == ("$.listeners[1].address", 3)


def test_address_of_wrong_type(tmp_path):
    issue = only_issue(write(tmp_path, "gw.yaml", "listeners:\n  - address: [127.0.0.1, 80]\n"))
    assert (issue.path, issue.line) == ("$.listeners[0].address", 2)
    assert issue.message == "expected `str`, got `array`"


# -- parse errors, file types ----------------------------------------------------------------------


def test_yaml_syntax_error_line(tmp_path):
    path = write(tmp_path, "gw.yaml", "listeners:\n  - address: 127.0.0.1:1\nlimits: {max_headers: 5\n")
    issue = only_issue(path)
    assert issue.path == "$"
    assert issue.line == 3      # the unclosed '{', not the end of the file where PyYAML gave up
    assert issue.message.startswith("invalid YAML")


def test_yaml_duplicate_key(tmp_path):
    path = write(
        tmp_path,
        "gw.yaml",
        """\
        listeners: [{address: 127.0.0.1:1}]
        limits:
          max_headers: 5
          max_headers: 6
        """,
    )
    issue = only_issue(path)
    assert (issue.path, issue.line, issue.message) == ("$.limits.max_headers", 4, "duplicate key")


def test_json_duplicate_key(tmp_path):
    path = write(tmp_path, "gw.json", '{"listeners": [{"address": "127.0.0.1:1"}],\n "listeners": []}\n')
    issues = issues_of(path)
    assert where(issues) == [("$.listeners", 2), ("$.listeners", 2)]
    assert [i.message for i in issues] == ["duplicate key", "at least one listener is required"]


def test_json_syntax_error_line(tmp_path):
    path = write(tmp_path, "gw.json", '{\n  "listeners": [\n    {"address": "127.0.0.1:1"},\n  ]\n}\n')
    issue = only_issue(path)
    assert (issue.path, issue.line) == ("$", 4)
    assert issue.message.startswith("invalid JSON")


def test_json_error_lines_with_tabs_and_compact_layout(tmp_path):
    path = write(
        tmp_path,
        "gw.json",
        '{"listeners":[{"address":"127.0.0.1:1"}],\n\t"limits":{\n\t\t"max_headers":"5"}}',
    )
    issue = only_issue(path)
    assert (issue.path, issue.line) == ("$.limits.max_headers", 3)


def test_toml_syntax_error_line(tmp_path):
    path = write(tmp_path, "gw.toml", 'listeners = [{address = "127.0.0.1:1"}]\n[limits\n')
    issue = only_issue(path)
    assert (issue.path, issue.line) == ("$", 2)
    assert issue.message.startswith("invalid TOML")


@pytest.mark.parametrize("name", ["gw.ini", "gw.yaml.bak", "gateway"])
def test_unknown_extension(tmp_path, name):
    path = write(tmp_path, name, MINIMAL_YAML)
    issue = only_issue(path)
    assert (issue.path, issue.line) == ("$", None)
    assert "unsupported config file type" in issue.message


def test_missing_file(tmp_path):
    issue = only_issue(tmp_path / "absent.yaml")
    assert (issue.path, issue.line) == ("$", None)
    assert "cannot read config" in issue.message


def test_not_utf8(tmp_path):
    path = tmp_path / "gw.yaml"
    path.write_bytes(b"listeners: [{address: \xff}]\n")
    issue = only_issue(path)
    assert "not valid UTF-8" in issue.message


def test_config_error_needs_issues():
    with pytest.raises(ValueError):
        ConfigError([])


# -- JSON Schema -----------------------------------------------------------------------------------


def test_json_schema_shape():
    schema = json_schema()
    assert isinstance(schema, dict)
    json.dumps(schema)  # plain JSON
    defs = schema["$defs"]
    assert schema["$ref"] == "#/$defs/GatewayConfig"
    top = defs["GatewayConfig"]
    assert set(top["properties"]) == {"listeners", "upstreams", "routes", "limits", "server", "policies",
                                      "metrics", "logging", "access_log", "tracing", "admin", "consumers",
                                      "redis"}
    assert top["required"] == ["listeners"]
    assert top["additionalProperties"] is False
    assert {"name", "match", "upstream", "max_body_bytes"} <= set(defs["Route"]["properties"])
    assert set(defs["Target"]["properties"]) == {"address", "weight"}
    assert set(defs["Timeouts"]["properties"]) == {"connect", "response_header", "body_idle"}
    assert set(defs["Keepalive"]["properties"]) == {"max_idle", "idle_timeout", "max_requests"}
    assert set(defs["Match"]["properties"]) >= {"hosts", "path"}
    assert set(defs["PathMatch"]["properties"]) == {"prefix", "exact", "template", "regex"}
    assert set(defs["Limits"]["properties"]) == {
        "max_request_line_bytes",
        "max_header_bytes",
        "max_headers",
        "max_body_bytes",
        "header_timeout",
        "body_timeout",
        "keepalive_timeout",
        "max_requests_per_connection",
        "underscores_in_headers",
        "http2",
    }
    assert set(defs["Server"]["properties"]) == {"drain_timeout", "path_normalization", "merge_slashes",
                                                "encoded_slashes", "shutdown_delay", "watch_config",
                                                "watch_interval"}
    for d in defs.values():
        assert d.get("additionalProperties") is False


def test_json_schema_describes_durations():
    defs = json_schema()["$defs"]
    connect = defs["Timeouts"]["properties"]["connect"]
    string = next(s for s in connect["anyOf"] if s["type"] == "string")
    number = next(s for s in connect["anyOf"] if s["type"] == "number")
    assert number == {"type": "number", "exclusiveMinimum": 0}
    pattern = re.compile(string["pattern"])
    for ok in ["250ms", "5s", "1.5s", "1m", "1h", "1m30s", "5"]:
        assert pattern.search(ok), ok
    for bad in ["5x", "-1s", "", "s"]:
        assert not pattern.search(bad), bad
    drain = defs["Server"]["properties"]["drain_timeout"]
    assert {"type": "number", "minimum": 0} in drain["anyOf"]
    assert drain["default"] == 30.0


def test_decoded_config_encodes_back(tmp_path):
    cfg = load_config(write(tmp_path, "gw.yaml", FULL_YAML))
    data = msgspec.json.encode(cfg)
    again = load_config(write(tmp_path, "again.json", data.decode()))
    assert again == cfg


def test_unquoted_ipv6_in_yaml_is_a_syntax_error_with_line(tmp_path):
    # `[::1]:80` unquoted starts a YAML flow sequence; docs/config.md says to quote it.
    issue = only_issue(write(tmp_path, "gw.yaml", "listeners:\n  - address: [::1]:80\n"))
    assert (issue.path, issue.line) == ("$", 2)
    assert issue.message.startswith("invalid YAML")


def test_bad_upstream_name_points_at_the_key(tmp_path):
    path = write(
        tmp_path,
        "gw.yaml",
        """\
        listeners: [{address: 127.0.0.1:1}]
        upstreams:
          ok: {targets: [{address: a:1}]}
          "bad name": {targets: [{address: a:1}]}
        """,
    )
    issue = only_issue(path)
    assert (issue.path, issue.line) == ('$.upstreams["bad name"]', 4)
    assert issue.message.startswith("invalid key: expected `str` matching regex")


def test_yaml_anchors_and_merge_keys(tmp_path):
    path = write(
        tmp_path,
        "gw.yaml",
        """\
        listeners: [{address: 127.0.0.1:1}]
        upstreams:
          a: &base
            targets: [{address: a:1}]
          b:
            <<: *base
            timeouts: {connect: 1s}
          c:
            <<: *base
            tiemouts: {connect: 1s}
        """,
    )
    issue = only_issue(path)
    assert (issue.path, issue.line) == ("$.upstreams.c.tiemouts", 10)
    path.write_text(path.read_text().replace("tiemouts", "timeouts"))
    cfg = load_config(path)
    assert cfg.upstreams["b"].targets == cfg.upstreams["a"].targets
    assert cfg.upstreams["b"].timeouts.connect == 1.0


def test_every_schema_error_listed(tmp_path):
    path = write(tmp_path, "gw.yaml", """\
listeners: [{address: 127.0.0.1:1}]
upstreams:
  echo: {targets: [{address: 127.0.0.1:9, weight: 0}]}
routes:
  - name: r
    upstream: echo
    max_body_bytes: -4
    bogus: 1
limits:
  max_headers: not-a-number
""")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    got = [(i.path, i.line) for i in e.value.errors]
    assert got == [
        ("$.upstreams.echo.targets[0].weight", 3),
        ("$.routes[0].max_body_bytes", 7),
        ("$.routes[0].bogus", 8),
        ("$.limits.max_headers", 10),
    ]


def test_dropped_required_field_is_not_reported_twice(tmp_path):
    path = write(tmp_path, "gw.yaml", "listeners: [{address: 127.0.0.1:1}]\nroutes:\n  - name: 7\n    upstream: a\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert [i.path for i in e.value.errors] == ["$.routes[0].name"]


def test_list_item_dropped_keeps_the_paths_and_lines_of_later_items(tmp_path):
    path = write(tmp_path, "gw.yaml", """\
listeners: [{address: 127.0.0.1:1}]
routes:
  - {name: 1, upstream: a}
  - {name: b, upstream: a, bogus: 2}
  - {name: c, upstream: a, max_body_bytes: x}
  - {name: d, upstream: a}
""")
    assert where(issues_of(path)) == [
        ("$.routes[0].name", 3),
        ("$.routes[1].bogus", 4),
        ("$.routes[2].max_body_bytes", 5),
        # The semantic checks see routes b, c and d, at their own indexes (route 0 could not decode).
        ("$.routes[1].upstream", 4),
        ("$.routes[2].upstream", 5),
        ("$.routes[3].upstream", 6),
    ]


# -- a decode error does not hide the semantic errors of the rest ---------------------------------


def test_semantic_errors_are_reported_with_decode_errors(tmp_path):
    path = write(tmp_path, "gw.yaml", """\
listeners: [{address: 127.0.0.1:1}]
upstreams:
  echo: {targets: [{address: 127.0.0.1:9}], timeouts: {connect: soon}}
routes:
  - name: r
    upstream: nowhere
    match: {path: {prefix: "/a", exact: "/b"}}
  - name: r
    upstream: echo
""")
    got = issues_of(path)
    assert where(got) == [
        ("$.upstreams.echo.timeouts.connect", 3),
        ("$.routes[0].match.path", 7),
        ("$.routes[0].upstream", 6),
        ("$.routes[1].name", 8),
    ]
    assert got[2].message == "unknown upstream 'nowhere' (known: echo)"


def test_dropped_nodes_leave_no_follow_on_errors(tmp_path):
    # The upstream, the listener and the route's only match go; what refers to them is not reported.
    path = write(tmp_path, "gw.yaml", """\
listeners:
  - {address: 8080, name: public}
upstreams:
  echo: {targets: {address: 127.0.0.1:9}}
routes:
  - name: r
    upstream: echo
    listeners: [public]
    matches: [{path: {prefix: 5}}]
  - name: s
    upstream: gone
""")
    got = issues_of(path)
    assert where(got) == [
        ("$.listeners[0].address", 2),
        ("$.upstreams.echo.targets", 4),
        ("$.routes[0].matches[0].path.prefix", 9),
        ("$.routes[1].upstream", 11),
    ]
    assert got[3].message == "unknown upstream 'gone' (known: none defined)"


def test_missing_listeners_do_not_hide_route_errors(tmp_path):
    path = write(tmp_path, "gw.yaml", "routes:\n  - {name: r, upstream: x}\n")
    assert [(i.path, i.message) for i in issues_of(path)] == [
        ("$", "missing required field 'listeners'"),
        ("$.routes[0].upstream", "unknown upstream 'x' (known: none defined)"),
    ]


# -- YAML pitfalls: where the syntax error is, "quote it", "did you mean" ---------------------------


def test_unclosed_flow_mapping_is_reported_at_its_line(tmp_path):
    path = write(tmp_path, "gw.yaml", """\
listeners:
  - address: 127.0.0.1:8080
upstreams:
  echo:
    targets: [{address: 127.0.0.1:9000}]
    timeouts: {connect: 2s
routes:
  - {name: r, upstream: echo}
""")
    issue = only_issue(path)
    assert (issue.path, issue.line) == ("$", 6)
    assert issue.message == "invalid YAML: while parsing a flow mapping; expected ',' or '}', but got ':'"


@pytest.mark.parametrize("text,line", [
    ("listeners: [{address: 127.0.0.1:1}\nroutes: []\n", 1),
    ('listeners:\n  - address: "127.0.0.1:1\nroutes: []\n', 2),
    ("listeners:\n  - address: 127.0.0.1:1\n   name: x\n", 3),
])
def test_yaml_syntax_error_lines(tmp_path, text, line):
    issue = only_issue(write(tmp_path, "gw.yaml", text))
    assert (issue.path, issue.line) == ("$", line)


@pytest.mark.parametrize("text,line,hint", [
    ("listeners:\n  - address: [::1]:8080\n", 2, "an unquoted '[' starts a YAML list; quote it: '[::1]:8080'"),
    ("listeners:\n  - address: [fe80::1]:80\n", 2, "an unquoted '[' starts a YAML list; quote it: '[fe80::1]:80'"),
    ("listeners: [{address: '127.0.0.1:1'}]\nroutes:\n  - name: r\n    match: {hosts: [*.example.com]}\n", 4,
     "an unquoted '*' starts a YAML alias; quote it: '*.example.com'"),
    ("listeners:\n  - address: 127.0.0.1:1\n    hostname: *.example.com\n", 3,
     "an unquoted '*' starts a YAML alias; quote it: '*.example.com'"),
])
def test_unquoted_yaml_syntax_gets_a_quote_it_hint(tmp_path, text, line, hint):
    issue = only_issue(write(tmp_path, "gw.yaml", text))
    assert (issue.path, issue.line) == ("$", line)
    assert issue.message.startswith("invalid YAML: ") and issue.message.endswith(f" ({hint})")


def test_unquoted_ipv6_read_as_a_list_gets_a_quote_it_hint(tmp_path):
    issue = only_issue(write(tmp_path, "gw.yaml", "listeners:\n  - address: [2001:db8::1]\n"))
    assert (issue.path, issue.line) == ("$.listeners[0].address", 2)
    assert issue.message == (
        "expected `str`, got `array` (an unquoted '[' starts a YAML list; quote it: '[2001:db8::1]')"
    )


def test_quote_it_hint_only_for_yaml(tmp_path):
    issue = only_issue(write(tmp_path, "gw.json", '{"listeners": [{"address": ["2001:db8::1"]}]}'))
    assert issue.message == "expected `str`, got `array`"


def test_misspelt_key_gets_did_you_mean(tmp_path):
    path = write(tmp_path, "gw.yaml", "listeners: [{address: 127.0.0.1:1}]\nrutes: []\nxyzzy: 1\n")
    # every top-level key, in schema order (sections are added by later features)
    keys = ", ".join(GatewayConfig.__struct_fields__)
    assert keys.startswith("listeners, upstreams, routes, limits, server, policies")
    assert [(i.path, i.message) for i in issues_of(path)] == [
        ("$.rutes", f"unknown field (did you mean 'routes'? expected one of: {keys})"),
        ("$.xyzzy", f"unknown field (expected one of: {keys})"),
    ]


# -- layering: fastgw.sources picks the format, above fastgw.config and fastgw.gatewayapi -----------


def _imported_modules(package: str) -> set[str]:
    """Every fastgw module a package's files import, at module level or inside functions."""
    import ast

    root = Path(__file__).resolve().parents[2] / "fastgw"
    found: set[str] = set()
    for file in (root / package).glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = ["fastgw", package][: 3 - node.level]
                found.add(".".join([*base, *([node.module] if node.module else [])]))
                if not node.module:
                    found.update(".".join([*base, alias.name]) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
    return found


def test_config_and_gatewayapi_import_in_one_direction_only():
    assert not {m for m in _imported_modules("config") if m.startswith("fastgw.gatewayapi")}
    assert not {m for m in _imported_modules("gatewayapi") if m.startswith("fastgw.sources")}
    # The one direction that remains: the Gateway API front end builds on the native config.
    assert any(m.startswith("fastgw.config.") for m in _imported_modules("gatewayapi"))


@pytest.mark.parametrize("module,absent", [
    ("fastgw.config", ("fastgw.gatewayapi", "fastgw.sources")),
    ("fastgw.gatewayapi", ("fastgw.sources",)),
    ("fastgw.sources", ()),
])
def test_each_package_imports_alone(module, absent):
    import subprocess
    import sys

    code = f"import sys, {module}; print(sorted(m for m in {list(absent)!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "[]\n", "")


# -- header edits of the fields the gateway writes itself (review 2) ---------------------------------

EDITS_BASE = """listeners: [{address: 127.0.0.1:8080}]

upstreams:
  a: {targets: [{address: 127.0.0.1:9001}]}
  b: {targets: [{address: 127.0.0.1:9002}]}
"""


@pytest.mark.parametrize("direction,edit,name", [
    ("request_headers", "set", "Content-Length"),
    ("request_headers", "add", "Content-Length"),
    ("request_headers", "set", "Transfer-Encoding"),
    ("request_headers", "add", "Host"),
    ("request_headers", "set", "X-Forwarded-For"),
    ("response_headers", "set", "Content-Length"),
    ("response_headers", "set", "Transfer-Encoding"),
    ("response_headers", "add", "Connection"),
])
def test_framing_headers_cannot_be_edited(direction, edit, name):
    """(From review 2: header edits of the framing and connection fields are refused at load time.)"""
    # Framing and connection fields are the gateway's: a configured edit would put a second
    # Content-Length or a Transfer-Encoding next to the real framing (request smuggling, or a
    # desynchronised client). Refused at load time, with the path of the field.
    with pytest.raises(ConfigError) as e:
        loads_config(EDITS_BASE + f"""
routes:
  - {{name: r, upstream: a, filters: {{{direction}: {{{edit}: {{{name}: "0"}}}}}}}}
""", "yaml")
    assert [i.path for i in e.value.errors] == [f"$.routes[0].filters.{direction}.{edit}.{name}"]
    assert "managed by the gateway" in e.value.errors[0].message


def test_framing_header_remove_refused_with_index():
    """(From review 2: removing a framing field is refused, at the index of the list item.)"""
    with pytest.raises(ConfigError) as e:
        loads_config(EDITS_BASE + """
routes:
  - {name: r, upstream: a, filters: {request_headers: {remove: [X-A, content-length]}}}
""", "yaml")
    assert [i.path for i in e.value.errors] == ["$.routes[0].filters.request_headers.remove[1]"]
