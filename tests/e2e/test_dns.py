"""Hostname targets over real sockets: resolved before serving and in the background, every address
behind a name a target, a failed refresh keeping the last good addresses. The names are
`localhost` and, where /etc/hosts is writable (it is a container's own here), entries the test
adds and takes out again."""

from __future__ import annotations

import os
import secrets
import socket
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from support.admin import admin_client, with_admin
from support.gateway import simple_config
from support.logs import wait_event
from support.upstreams import EchoServer

HOSTS = "/etc/hosts"


def config_for(address: str, **upstream) -> dict:
    cfg = with_admin(simple_config("127.0.0.1:1"))
    cfg["upstreams"]["echo"] = {"targets": [{"address": address}], **upstream}
    return cfg


def get_names(gw, n: int) -> list[str]:
    with httpx.Client(base_url=gw.url, headers={"Host": "test.local"}, timeout=10) as c:
        return [c.get(f"/r{i}").text for i in range(n)]


def test_localhost_resolves_to_its_addresses(gateway_factory):
    with EchoServer("a") as a:
        gw = gateway_factory(config_for(f"localhost:{a.port}"))
        wait_event(gw, "dns_changed", host="localhost")
        r = httpx.get(gw.url + "/x", headers={"Host": "test.local"})
        assert r.status_code == 200 and r.json()["name"] == "a"
        with admin_client(gw) as admin:
            targets = admin.get("/upstreams").json()["upstreams"]["echo"]["targets"]
        resolved = [t for t in targets if t.get("resolved_from") == f"localhost:{a.port}"]
        assert [t["address"] for t in resolved] == [f"127.0.0.1:{a.port}"], targets


class Named(BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.server.server_address[0].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def servers_on(ips: list[str]):
    """One HTTP server per loopback address, all on the same port; each answers its address."""
    probe = socket.socket()
    probe.bind((ips[0], 0))
    port = probe.getsockname()[1]
    probe.close()
    started = [ThreadingHTTPServer((ip, port), Named) for ip in ips]
    for s in started:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        yield port
    finally:
        for s in started:
            s.shutdown()
            s.server_close()


@contextmanager
def hosts_entries():
    """set(name, [ips]) rewrites this test's lines in /etc/hosts; all are taken out at the end."""
    if not os.access(HOSTS, os.W_OK):
        pytest.skip("/etc/hosts is not writable here")
    with open(HOSTS) as f:
        original = f.read()
    tag = f"# fastgw-test-{secrets.token_hex(4)}"

    def write(name: str | None, ips: list[str]) -> None:
        with open(HOSTS) as f:
            kept = [line for line in f.read().splitlines() if not line.endswith(tag)]
        kept += [f"{ip} {name} {tag}" for ip in ips] if name else []
        with open(HOSTS, "w") as f:
            f.write("\n".join(kept) + "\n")

    try:
        yield write
    finally:
        with open(HOSTS) as f:
            now = f.read()
        with open(HOSTS, "w") as f:
            f.write("".join(line + "\n" for line in now.splitlines() if not line.endswith(tag))
                    if now != original else original)


def test_every_address_is_a_target_and_refreshes_follow_the_name(gateway_factory):
    name = f"svc-{secrets.token_hex(4)}.fastgw-test"
    with hosts_entries() as set_hosts, servers_on(["127.0.0.2", "127.0.0.3"]) as port:
        set_hosts(name, ["127.0.0.2", "127.0.0.3"])
        gw = gateway_factory(config_for(f"{name}:{port}", dns={"refresh": "0.2s"}))
        assert sorted(set(get_names(gw, 10))) == ["127.0.0.2", "127.0.0.3"]     # a headless Service

        mark = gw.stderr_line_count()
        set_hosts(name, ["127.0.0.2"])                 # a pod went away
        changed = wait_event(gw, "dns_changed", since=mark, host=name)
        assert changed["removed"] == ["127.0.0.3"], changed
        assert set(get_names(gw, 10)) == {"127.0.0.2"}

        mark = gw.stderr_line_count()
        set_hosts(None, [])                            # the name is gone: the last good addresses stay
        failed = wait_event(gw, "dns_refresh_failed", since=mark, host=name)
        assert failed["kept"] == ["127.0.0.2"], failed
        assert set(get_names(gw, 10)) == {"127.0.0.2"}

        mark = gw.stderr_line_count()
        set_hosts(name, ["127.0.0.2", "127.0.0.3"])    # and back
        wait_event(gw, "dns_changed", since=mark, host=name)
        assert sorted(set(get_names(gw, 10))) == ["127.0.0.2", "127.0.0.3"]
        with admin_client(gw) as admin:
            targets = admin.get("/upstreams").json()["upstreams"]["echo"]["targets"]
        assert sorted(t["address"] for t in targets if t.get("resolved_from")) == [
            f"127.0.0.2:{port}", f"127.0.0.3:{port}"], targets


def test_a_name_that_never_resolves_stays_one_target(gateway_factory):
    gw = gateway_factory(config_for("no-such-name.invalid:80", dns={"refresh": "0.2s", "timeout": "2s"}))
    wait_event(gw, "dns_refresh_failed", host="no-such-name.invalid")
    r = httpx.get(gw.url + "/x", headers={"Host": "test.local"})
    assert r.status_code == 502 and "request_id" in r.json(), r.text
