"""Review 3 of the Exchange refactor (issue 8) over real sockets: wire behaviour of findings that the
sans-socket tests (tests/unit/test_review3_exchange.py) pin in detail."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from support.client import RawConn, wait_until
from support.gateway import simple_config, upstream_config

TESTS_DIR = str(Path(__file__).resolve().parents[1])
ENV = {"PYTHONPATH": TESTS_DIR}


def plugin(cls: str, **config) -> dict:
    return {"type": "plugin", "module": f"support.review_plugins:{cls}", "config": config}


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def world(tmp_path_factory, echo, module_gateway_factory):
    log = tmp_path_factory.mktemp("review3") / "log.jsonl"
    cfg = simple_config(
        upstreams={"echo": upstream_config(echo.address, timeouts={"connect": "2s", "response_header": "2s",
                                                                   "body_idle": "2s"})},
        routes=[
            {"name": "respond", "match": {"path": {"prefix": "/respond"}}, "upstream": "echo",
             "policies": [{"type": "respond", "status": 403, "body": "denied"}]},
            {"name": "all", "match": {"path": {"prefix": "/"}}, "upstream": "echo"},
        ])
    cfg["policies"] = [{**plugin("FileLog", path=str(log)), "name": "log"}]
    gw = module_gateway_factory(cfg, workers=1, env=ENV)
    return gw, log



def test_review3_client_leaving_mid_head_keeps_the_worker(world):
    """One worker; a keep-alive client is idle on it. Another client sends half a request head and
    closes: ClientConn._log_unfinished_head -> Exchange.init(..., NULL) dereferences the NULL head
    (exchange.pyx:126) and the worker dies, taking the idle client's connection with it. Expected:
    the half head is logged (outcome refused) and the worker, and its other connections, live on."""
    gw, log = world
    pids_before = gw.descendants()
    with RawConn(gw.port) as idle:
        r = idle.request("GET", "/first", [("Host", "a")])
        assert r.status == 200
        half = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        half.sendall(b"GET /half-a-head HTTP/1.1\r\nHost: a\r\n")
        time.sleep(0.2)
        half.close()
        time.sleep(0.5)
        r = idle.request("GET", "/second", [("Host", "a")])    # the same connection, same worker
        assert r.status == 200
    assert gw.descendants() == pids_before, "the worker was replaced"
    wait_until(lambda: any(e["outcome"] == "refused" for e in read_log(log)), timeout=5,
               what="the half head's log entry")



def test_review3_http10_keepalive_policy_answer(world):
    """An HTTP/1.0 client asking for keep-alive gets a policy's 403 without `Connection: keep-alive`
    (ClientConn.send_answer passes http10=False), while the gateway keeps the connection open (a
    proxied response does say keep-alive)."""
    gw, _ = world
    with RawConn(gw.port) as c:
        c.send(b"GET /respond/x HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
        r = c.response()
        assert r.status == 403
        assert not c.is_closed_by_peer(timeout=0.5), "precondition: the gateway kept the connection"
        assert any(k.lower() == "connection" and v.lower() == "keep-alive" for k, v in r.headers), r.headers
