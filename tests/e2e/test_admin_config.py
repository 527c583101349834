"""POST /config: a config applied through the Admin API reaches every worker, survives a worker's
restart, and is replaced by the file on SIGHUP; a bad one is refused with every error and the
running config keeps serving. And the admin section's own rules."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest
import yaml
from support.admin import admin_client, with_admin
from support.client import RawConn, wait_until
from support.gateway import REPO_ROOT, descendants, simple_config

TOKEN = "s3cr3t-admin-token-0123456789"


def routes(echo, *names: str) -> dict:
    return with_admin(simple_config(echo.address, routes=[
        {"name": n, "match": {"path": {"prefix": f"/{n}"}}, "upstream": "echo"} for n in names]))


def status(gw, target: str) -> int:
    with RawConn(gw.port, timeout=10) as c:
        return c.request("GET", target, [("Connection", "close")]).status


def every_worker_answers(gw, target: str, want: int) -> bool:
    # fresh connections: SO_REUSEPORT spreads them over the workers, so 16 in a row rule out one
    # worker left on another config (a 1 in 65536 chance with two workers)
    return all(status(gw, target) == want for _ in range(16))


def post_yaml(admin, config: dict | str):
    text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
    return admin.post("/config", content=text.encode(), headers={"Content-Type": "application/yaml"})


def test_a_posted_config_changes_the_routes_of_every_worker(echo, gateway_factory):
    gw = gateway_factory(routes(echo, "old"), workers=2)
    assert every_worker_answers(gw, "/new", 404)
    with admin_client(gw) as admin:
        r = post_yaml(admin, routes(echo, "new"))
        assert r.status_code == 200, r.text
        summary = r.json()
        assert summary["ok"] and summary["routes"] == 1 and summary["source"] == "admin"
        assert sorted(w["pid"] for w in summary["workers"]) == sorted(descendants(gw.pid))
        assert all(w["applied"] for w in summary["workers"]), summary
        assert every_worker_answers(gw, "/new", 200) and every_worker_answers(gw, "/old", 404)
        running = admin.get("/config").json()
        assert running["source"] == "admin" and running["generation"] == summary["generation"]
        assert [r["name"] for r in running["config"]["routes"]] == ["new"]
        last = admin.get("/reloads").json()["reloads"][-1]
        assert last["ok"] and last["source"] == "admin" and last["file"] == "<admin>"
    assert gw.config_path.read_text() == yaml.safe_dump(gw.config, sort_keys=False)   # the file is untouched


def test_json_is_accepted_too(echo, gateway_factory):
    gw = gateway_factory(routes(echo, "old"))
    with admin_client(gw) as admin:
        r = admin.post("/config", json=routes(echo, "json"))
        assert r.status_code == 200, r.text
    assert status(gw, "/json") == 200


def test_a_bad_config_is_refused_with_every_error_and_traffic_is_unchanged(echo, gateway_factory):
    gw = gateway_factory(routes(echo, "old"), workers=2)
    bad = routes(echo, "old", "new")
    bad["routes"][1]["upstream"] = "missing"
    bad["routes"][0]["match"]["path"]["prefix"] = "no-slash"
    bad["limits"] = {"max_headers": "many"}
    with admin_client(gw) as admin:
        r = post_yaml(admin, bad)
        assert r.status_code == 400, r.text
        errors = {e["path"]: e for e in r.json()["errors"]}
        assert set(errors) == {"$.routes[1].upstream", "$.routes[0].match.path.prefix", "$.limits.max_headers"}
        assert all(isinstance(e["line"], int) for e in errors.values())
        assert str(gw.config_path) not in r.text
        assert admin.get("/config").json()["source"] == "file"
        last = admin.get("/reloads").json()["reloads"][-1]
        assert not last["ok"] and last["source"] == "admin"
        assert {e["path"] for e in last["errors"]} == set(errors)
        unparsable = post_yaml(admin, "routes: [unclosed\n")
        assert unparsable.status_code == 400 and unparsable.json()["errors"][0]["path"] == "$"
        untyped = admin.post("/config", content=b"{}", headers={"Content-Type": "text/plain"})
        assert untyped.status_code == 415
    assert every_worker_answers(gw, "/old", 200) and every_worker_answers(gw, "/new", 404)


def test_an_api_config_survives_a_worker_restart(echo, gateway_factory):
    gw = gateway_factory(routes(echo, "file"), workers=2)
    with admin_client(gw) as admin:
        assert post_yaml(admin, routes(echo, "api")).status_code == 200
        victim = min(descendants(gw.pid))
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in descendants(gw.pid) and len(descendants(gw.pid)) == 2
                   and admin.get("/readyz").status_code == 200, what="the replacement worker to be ready")
        workers = admin.get("/stats").json()["workers"]
        assert victim not in {w["pid"] for w in workers}
        generation = admin.get("/config").json()["generation"]
        assert all(w["generation"] == generation for w in workers), workers
    assert every_worker_answers(gw, "/api", 200) and every_worker_answers(gw, "/file", 404)


def test_sighup_rereads_the_file_replacing_the_api_config(echo, gateway_factory):
    gw = gateway_factory(routes(echo, "file"))
    with admin_client(gw) as admin:
        assert post_yaml(admin, routes(echo, "api")).status_code == 200
        assert status(gw, "/api") == 200
        gw.signal(signal.SIGHUP)
        wait_until(lambda: admin.get("/reloads").json()["reloads"][-1]["source"] == "SIGHUP",
                   what="the SIGHUP reload record")
        last = admin.get("/reloads").json()["reloads"][-1]
        assert last["ok"] and last["file"] == str(gw.config_path)
        assert any("replacing the config applied through the admin API" in n for n in last["notes"]), last
        assert admin.get("/config").json()["source"] == "file"
        wait_until(lambda: status(gw, "/file") == 200, what="the file's config to serve")
    assert status(gw, "/api") == 404


def test_a_failed_sighup_reload_is_recorded(echo, gateway_factory):
    gw = gateway_factory(routes(echo, "file"))
    bad = routes(echo, "file")
    bad["routes"][0]["upstream"] = "missing"
    gw.reload(bad)
    with admin_client(gw) as admin:
        wait_until(lambda: admin.get("/reloads").json()["failed"] == 1, what="the refused reload's record")
        last = admin.get("/reloads").json()["reloads"][-1]
        assert last["source"] == "SIGHUP" and not last["ok"]
        assert [e["path"] for e in last["errors"]] == ["$.routes[0].upstream"]


def test_a_posted_config_may_not_drop_the_token_of_a_public_admin_listener(echo, gateway_factory):
    """The listener keeps its address until a restart: a loopback address in the new config does
    not make the running one loopback. A config without `admin:` keeps the running settings."""
    cfg = with_admin(routes(echo, "old"), token=TOKEN)
    cfg["admin"]["address"] = "0.0.0.0:0"
    gw = gateway_factory(cfg)
    port = gw.stderr.split("admin API listening on http://0.0.0.0:")[1].split("\"")[0].split()[0]
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as admin:
        r = post_yaml(admin, routes(echo, "new"))     # admin: {address: 127.0.0.1:0}, no token
        assert r.status_code == 400, r.text
        assert [e["path"] for e in r.json()["errors"]] == ["$.admin.token"]
        assert status(gw, "/old") == 200
        no_section = routes(echo, "new")
        del no_section["admin"]
        assert post_yaml(admin, no_section).status_code == 200
    assert httpx.get(f"{url}/config", timeout=30).status_code == 401
    assert status(gw, "/new") == 200


def run_fastgw(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastgw", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))


@pytest.mark.parametrize("address", ["0.0.0.0:9901", "[::]:9901", "10.1.2.3:9901", "admin.example:9901"])
def test_a_non_loopback_admin_address_without_token_is_a_config_error(tmp_path, echo, address):
    cfg = routes(echo, "x")
    cfg["admin"]["address"] = address
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    for command in (["check", str(path)], ["run", "-c", str(path)]):
        res = run_fastgw(*command, cwd=tmp_path)
        assert res.returncode == 1, res
        assert f"{path}:" in res.stderr and "$.admin.token: a token (or token_file) is required" in res.stderr


def test_loopback_addresses_need_no_token(tmp_path, echo):
    path = tmp_path / "gw.yaml"
    for address in ("127.0.0.1:9901", "[::1]:9901", "localhost:9901"):
        cfg = routes(echo, "x")
        cfg["admin"]["address"] = address
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        res = run_fastgw("check", str(path), cwd=tmp_path)
        assert res.returncode == 0, res.stderr
