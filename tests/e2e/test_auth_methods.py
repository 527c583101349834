"""Consumers, api_key, basic_auth, the any_of / all_of combinator and groups over real sockets (issue
10): a real gateway process on port 0, the echo upstream showing what reached it, httpx as the
client. Good, bad and missing credentials; the credential and a client's X-Consumer-Name kept from
the upstream; the consumer in the access log; 401 and 403 as the gateway's JSON error with the
request id; htpasswd re-read on SIGHUP; secrets from env and files; none of them in /config."""

from __future__ import annotations

import base64
import json
import signal
import time

import bcrypt
import httpx
import pytest
from argon2 import PasswordHasher
from support.client import wait_until
from support.gateway import simple_config, upstream_config
from support.logs import FAST_ACCESS_LOG, only_line

KEY_ALICE = "ak-alice-0123456789abcdef"
KEY_BOB = "ak-bob-from-env-0000"
KEY_CAROL = "ak-carol-from-file-1111"
FAST = {"connect": "2s", "response_header": "5s", "body_idle": "5s"}


def bhash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def route(name: str, prefix: str, policies: list, **kw) -> dict:
    return {"name": name, "match": {"path": {"prefix": prefix}}, "upstream": "echo", "policies": policies, **kw}


def seen(resp) -> dict:
    """What the echo upstream received: {lowercase header: [values]}, and the target."""
    body = resp.json()
    headers: dict[str, list[str]] = {}
    for k, v in body["headers"]:
        headers.setdefault(k.lower(), []).append(v)
    return {"headers": headers, "target": body["target"]}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("auth")
    (d / "carol.key").write_text(KEY_CAROL + "\n")
    htpasswd = d / "users.htpasswd"
    htpasswd.write_text(f"# staff\nhtdave:{bhash('dave-pw')}\nhterin:{PasswordHasher().hash('erin-pw')}\n")
    return {"dir": d, "htpasswd": htpasswd, "carol_key": d / "carol.key"}


@pytest.fixture(scope="module")
def gw(echo, files, module_gateway_factory, monkeypatch_module):
    monkeypatch_module.setenv("FASTGW_TEST_BOB_KEY", KEY_BOB)
    cfg = simple_config(upstreams={"echo": upstream_config(echo.address, timeouts=FAST)}, routes=[
        route("key", "/key", [{"type": "api_key", "upstream_headers": {"name": "X-Consumer-Name",
                                                                        "groups": "X-Consumer-Groups"}}]),
        route("keyq", "/keyq", [{"type": "api_key", "headers": [], "query": ["api_key"]}]),
        route("keep", "/keep", [{"type": "api_key", "strip": False}]),
        route("basic", "/basic", [{"type": "basic_auth", "realm": "staff", "htpasswd": [str(files["htpasswd"])]}]),
        route("any", "/any", [{"type": "auth", "mode": "any_of", "methods": [
            {"type": "api_key"}, {"type": "basic_auth", "htpasswd": [str(files["htpasswd"])]}]}]),
        route("all", "/all", [{"type": "auth", "mode": "all_of", "methods": [
            {"type": "api_key"}, {"type": "basic_auth"}]}]),
        route("all2", "/all2", [{"type": "auth", "mode": "all_of", "methods": [
            {"type": "basic_auth"}, {"type": "api_key"}], "groups": {"allow": ["admin"]}}]),
        route("admins", "/admins", [{"type": "api_key", "groups": {"allow": ["admin"]}}]),
        route("nodeny", "/nodeny", [{"type": "api_key", "groups": {"deny": ["blocked"]}}]),
        route("grp", "/grp", [{"type": "api_key"}, {"type": "groups", "allow": ["admin", "ops"]}]),
        route("onlybob", "/onlybob", [{"type": "api_key", "consumers": ["bob"]}]),
    ])
    cfg["consumers"] = [
        {"name": "alice", "groups": ["admin"], "metadata": {"plan": "gold"},
         "credentials": {"api_keys": [KEY_ALICE], "basic_auth": {"username": "alice", "password_hash": bhash("alice-pw")}}},
        {"name": "bob", "groups": ["ops", "blocked"], "credentials": {"api_keys": [{"env": "FASTGW_TEST_BOB_KEY"}]}},
        {"name": "carol", "credentials": {"api_keys": [{"file": str(files["carol_key"])}],
                                          "basic_auth": {"username": "carol",
                                                         "password_hash": PasswordHasher().hash("carol-pw")}}},
        {"name": "dave", "groups": ["ops"], "credentials": {"basic_auth": {"username": "htdave"}}},
    ]
    cfg["access_log"] = FAST_ACCESS_LOG
    cfg["admin"] = {"address": "127.0.0.1:0"}
    return module_gateway_factory(cfg)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def assert_gateway_error(resp: httpx.Response, status: int) -> dict:
    """The gateway's JSON refusal: {"error", "request_id"}, the id also in X-Request-Id."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert set(body) == {"error", "request_id"}
    assert body["request_id"] == resp.headers["x-request-id"]
    return body


def get(gw, path: str, **kw):
    return httpx.get(gw.url_for(path), timeout=10, **kw)


def test_api_key_good_names_the_consumer_upstream_and_strips_the_key(gw):
    r = get(gw, "/key/x", headers={"X-API-Key": KEY_ALICE, "X-Consumer-Name": "root", "X-Consumer-Groups": "x"})
    assert r.status_code == 200
    up = seen(r)
    assert up["headers"]["x-consumer-name"] == ["alice"]     # the client's copy removed first
    assert up["headers"]["x-consumer-groups"] == ["admin"]
    assert "x-api-key" not in up["headers"]


def test_api_key_bad_and_missing_are_401_json_with_request_id(gw):
    bad = get(gw, "/key/x", headers={"X-API-Key": KEY_ALICE + "x", "X-Request-Id": "rid-bad-key"})
    body = assert_gateway_error(bad, 401)
    assert body["error"] == "unauthorized" and body["request_id"] == "rid-bad-key"
    missing = get(gw, "/key/x")
    assert assert_gateway_error(missing, 401)["error"] == "authentication required"
    assert "www-authenticate" not in missing.headers


def test_api_key_from_env_and_file(gw):
    assert seen(get(gw, "/key/a", headers={"X-API-Key": KEY_BOB}))["headers"]["x-consumer-name"] == ["bob"]
    assert seen(get(gw, "/key/a", headers={"X-API-Key": KEY_CAROL}))["headers"]["x-consumer-name"] == ["carol"]


def test_api_key_from_query_is_stripped_from_the_forwarded_query(gw):
    r = get(gw, f"/keyq/x?a=1&api_key={KEY_ALICE}&b=2")
    assert r.status_code == 200
    assert seen(r)["target"] == "/keyq/x?a=1&b=2"
    r = get(gw, f"/keyq/x?api_key={KEY_ALICE}")
    assert seen(r)["target"] == "/keyq/x"
    assert get(gw, "/keyq/x", headers={"X-API-Key": KEY_ALICE}).status_code == 401   # only the query here


def test_strip_false_forwards_the_key(gw):
    r = get(gw, "/keep/x", headers={"X-API-Key": KEY_ALICE})
    assert seen(r)["headers"]["x-api-key"] == [KEY_ALICE]


def test_consumer_in_access_log(gw):
    rid = f"rid-consumer-{time.monotonic_ns()}"
    get(gw, "/key/x", headers={"X-API-Key": KEY_ALICE, "X-Request-Id": rid})
    assert only_line(gw, rid)["consumer"] == "alice"
    rid2 = rid + "-anon"
    get(gw, "/key/x", headers={"X-Request-Id": rid2})
    assert only_line(gw, rid2)["consumer"] is None


def test_basic_auth_bcrypt_argon2_and_htpasswd(gw):
    for user, pw, consumer in (("alice", "alice-pw", "alice"), ("carol", "carol-pw", "carol"),
                               ("htdave", "dave-pw", "dave"), ("hterin", "erin-pw", "hterin")):
        r = get(gw, "/basic/x", headers=basic(user, pw))
        assert r.status_code == 200, (user, r.text)
        up = seen(r)
        assert up["headers"]["x-consumer-name"] == [consumer]
        assert "authorization" not in up["headers"]
        # the second time comes from the cache (same answer)
        assert get(gw, "/basic/x", headers=basic(user, pw)).status_code == 200


def test_basic_auth_bad_missing_and_malformed_get_401_with_challenge(gw):
    for headers in (basic("alice", "wrong"), basic("nobody", "x"), {}, {"Authorization": "Basic !!!"},
                    {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}):
        r = get(gw, "/basic/x", headers=headers)
        assert_gateway_error(r, 401)
        assert r.headers["www-authenticate"] == 'Basic realm="staff", charset="UTF-8"'


def test_any_of_takes_either_method(gw):
    assert seen(get(gw, "/any/x", headers={"X-API-Key": KEY_BOB}))["headers"]["x-consumer-name"] == ["bob"]
    assert seen(get(gw, "/any/x", headers=basic("htdave", "dave-pw")))["headers"]["x-consumer-name"] == ["dave"]
    # a bad key does not stop the basic credential from passing
    r = get(gw, "/any/x", headers={"X-API-Key": "nope", **basic("alice", "alice-pw")})
    assert seen(r)["headers"]["x-consumer-name"] == ["alice"]
    r = get(gw, "/any/x")
    assert assert_gateway_error(r, 401)["error"] == "authentication required"
    assert r.headers["www-authenticate"].startswith("Basic ")
    r = get(gw, "/any/x", headers={"X-API-Key": "nope"})
    assert assert_gateway_error(r, 401)["error"] == "unauthorized"


def test_all_of_needs_both_of_the_same_consumer(gw):
    both = {"X-API-Key": KEY_ALICE, **basic("alice", "alice-pw")}
    assert seen(get(gw, "/all/x", headers=both))["headers"]["x-consumer-name"] == ["alice"]
    assert_gateway_error(get(gw, "/all/x", headers={"X-API-Key": KEY_ALICE}), 401)
    assert_gateway_error(get(gw, "/all/x", headers=basic("alice", "alice-pw")), 401)
    mixed = {"X-API-Key": KEY_CAROL, **basic("alice", "alice-pw")}
    assert assert_gateway_error(get(gw, "/all/x", headers=mixed), 401)["error"] == "unauthorized"


def test_all_of_goes_on_after_a_paused_method_and_checks_its_groups(gw):
    # basic_auth pauses (the hash is checked on a thread); api_key runs when it resumes
    both = {"X-API-Key": KEY_ALICE, **basic("alice", "alice-pw")}
    assert seen(get(gw, "/all2/x", headers=both))["headers"]["x-consumer-name"] == ["alice"]
    assert_gateway_error(get(gw, "/all2/x", headers={"X-API-Key": "bad", **basic("alice", "alice-pw")}), 401)
    carol = {"X-API-Key": KEY_CAROL, **basic("carol", "carol-pw")}
    assert_gateway_error(get(gw, "/all2/x", headers=carol), 403)       # carol is not in admin


def test_groups_allowed_and_denied_answer_403(gw):
    assert get(gw, "/admins/x", headers={"X-API-Key": KEY_ALICE}).status_code == 200
    r = get(gw, "/admins/x", headers={"X-API-Key": KEY_CAROL, "X-Request-Id": "rid-403"})
    body = assert_gateway_error(r, 403)
    assert body == {"error": "forbidden", "request_id": "rid-403"}
    assert_gateway_error(get(gw, "/nodeny/x", headers={"X-API-Key": KEY_BOB}), 403)
    assert get(gw, "/nodeny/x", headers={"X-API-Key": KEY_CAROL}).status_code == 200
    assert get(gw, "/grp/x", headers={"X-API-Key": KEY_BOB}).status_code == 200
    assert_gateway_error(get(gw, "/grp/x", headers={"X-API-Key": KEY_CAROL}), 403)


def test_consumers_limit_which_keys_a_policy_takes(gw):
    assert get(gw, "/onlybob/x", headers={"X-API-Key": KEY_BOB}).status_code == 200
    assert_gateway_error(get(gw, "/onlybob/x", headers={"X-API-Key": KEY_ALICE}), 401)


def test_no_secret_in_admin_config(gw, files):
    admin_port = None
    import re
    m = re.search(r'admin API listening on http://127\.0\.0\.1:(\d+)', gw.stderr)
    assert m, gw.stderr
    admin_port = int(m.group(1))
    text = httpx.get(f"http://127.0.0.1:{admin_port}/config", timeout=10).text
    for secret in (KEY_ALICE, KEY_BOB, KEY_CAROL, "$2b$", "$argon2"):
        assert secret not in text
    cfg = json.loads(text)
    cfg = cfg.get("config", cfg)
    creds = cfg["consumers"][1]["credentials"]
    assert creds["api_keys"] == [{"env": "FASTGW_TEST_BOB_KEY", "file": None}]   # the reference is no secret
    for secret in (KEY_ALICE, KEY_BOB, KEY_CAROL):
        assert secret not in gw.stdout and secret not in gw.stderr


def test_htpasswd_reread_on_sighup(echo, tmp_path, gateway_factory):
    htpasswd = tmp_path / "h.htpasswd"
    htpasswd.write_text(f"frank:{bhash('one')}\n")
    cfg = simple_config(upstreams={"echo": upstream_config(echo.address, timeouts=FAST)}, routes=[
        route("basic", "/", [{"type": "basic_auth", "htpasswd": [str(htpasswd)]}])])
    gw = gateway_factory(cfg)
    assert get(gw, "/x", headers=basic("frank", "one")).status_code == 200
    assert get(gw, "/x", headers=basic("frank", "two")).status_code == 401
    htpasswd.write_text(f"frank:{bhash('two')}\n")
    gw.signal(signal.SIGHUP)
    wait_until(lambda: get(gw, "/x", headers=basic("frank", "two")).status_code == 200,
               what="the new htpasswd in force")
    # the old password is gone, cached or not
    assert get(gw, "/x", headers=basic("frank", "one")).status_code == 401
