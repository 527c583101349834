"""A real Prometheus server scrapes the gateway's metrics and answers a query on counters the test
drove. The gateway side is the one fixture `scraped_gateway`: today a live in-process worker whose
exposition a small HTTP endpoint serves; once the admin listener exists, the gateway process and
its admin `/metrics`."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from support.client import wait_until
from support.gateway import simple_config
from support.inprocess import InProcessWorker

from fastgw.metrics import CONTENT_TYPE, render, worker_snapshot

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None,
                                reason="prometheus (Debian package prometheus) is not installed; .ci/run installs it")


@dataclass
class ScrapedGateway:
    traffic_url: str          # where the test sends requests
    metrics_address: str      # host:port Prometheus scrapes
    metrics_path: str


class _Exposition(BaseHTTPRequestHandler):
    worker: InProcessWorker

    def do_GET(self):
        body = render([self.worker.call(worker_snapshot, self.worker.worker)],
                      {"version": "test", "workers": 1}).encode()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def scraped_gateway(echo):
    cfg = simple_config(echo.address, routes=[{"name": "scraped", "match": {"path": {"prefix": "/"}},
                                               "upstream": "echo"}])
    with InProcessWorker(cfg) as worker:
        handler = type("Exposition", (_Exposition,), {"worker": worker})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield ScrapedGateway(worker.url, f"127.0.0.1:{server.server_address[1]}", "/metrics")
        finally:
            server.shutdown()
            server.server_close()


def _free_port() -> int:
    # Prometheus cannot listen on port 0; a port the kernel just handed out is free enough
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prometheus(scraped_gateway, tmp_path):
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: fastgw\n"
        f"    metrics_path: {scraped_gateway.metrics_path}\n"
        f"    static_configs: [{{targets: ['{scraped_gateway.metrics_address}']}}]\n")
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {(tmp_path / 'prometheus.log').read_text()}")
        try:
            return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, timeout=30, what="prometheus ready")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _query(prometheus_url: str, promql: str) -> list:
    answer = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": promql}, timeout=5).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_prometheus_scrapes_the_requests_the_test_sent(scraped_gateway, prometheus):
    with httpx.Client(base_url=scraped_gateway.traffic_url) as client:
        for _ in range(5):
            assert client.get("/ok").status_code == 200
        for _ in range(2):
            assert client.get("/boom", headers={"X-Echo-Status": "503"}).status_code == 503

    def scraped(promql: str, value: str):
        def check():
            result = _query(prometheus, promql)
            return result if result and result[0]["value"][1] == value else None
        return wait_until(check, timeout=30, what=f"{promql} == {value} in prometheus")

    ok = scraped('fastgw_requests_total{route="scraped",upstream="echo",code="2xx"}', "5")
    assert ok[0]["metric"]["job"] == "fastgw"
    scraped('fastgw_requests_total{route="scraped",code=~"5.."}', "2")
    scraped('sum(fastgw_request_duration_seconds_count{route="scraped"})', "7")
    up = _query(prometheus, 'up{job="fastgw"}')
    assert up and up[0]["value"][1] == "1", "the scrape itself succeeded"
