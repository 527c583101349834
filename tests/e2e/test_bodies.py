"""Large bodies streamed through with bounded gateway memory; a client that stops reading."""

from __future__ import annotations

import hashlib
import os
import socket
import threading

import pytest
from support.client import RawConn
from support.gateway import simple_config
from support.wire import build_request, pattern_chunks, pattern_sha256

RSS_LIMIT = 200 * 1024 * 1024
BIG_UPLOAD = int(os.environ.get("FASTGW_TEST_UPLOAD_BYTES", str(1 << 30)))
BIG_DOWNLOAD = int(os.environ.get("FASTGW_TEST_DOWNLOAD_BYTES", str(256 << 20)))


class RssSampler:
    """Samples the gateway's summed RSS (all processes) in the background; keeps the peak."""

    def __init__(self, gw, interval: float = 0.1):
        self.gw = gw
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.gw.rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(5)
        self.peak = max(self.peak, self.gw.rss_bytes())


@pytest.fixture
def gw(echo, gateway_factory):
    return gateway_factory(simple_config(
        echo.address, timeouts={"connect": "2s", "response_header": "30s", "body_idle": "30s"}),
        workers=1)


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


@pytest.mark.slow
def test_huge_upload_streamed_with_bounded_memory(gw, echo):
    expected_sha = pattern_sha256(BIG_UPLOAD)
    with RssSampler(gw) as rss, RawConn(gw.port, timeout=120) as c:
        c.send(build_request("POST", "/upload", [("Content-Length", str(BIG_UPLOAD)),
                                                 ("X-Request-Id", "huge-upload")]))
        for piece in pattern_chunks(BIG_UPLOAD):
            c.send(piece)
        r = c.response("POST")
    assert r.status == 200, r.body[:300]
    j = r.json()
    assert j["body_len"] == BIG_UPLOAD and j["body_sha256"] == expected_sha
    hwm = gw.hwm_bytes()
    assert 0 < rss.peak < RSS_LIMIT and hwm < RSS_LIMIT, (
        f"gateway memory not bounded: sampled peak RSS {mib(rss.peak)}, VmHWM sum {mib(hwm)}")


def test_large_download_streamed_with_bounded_memory(gw):
    with RssSampler(gw) as rss, RawConn(gw.port, timeout=120) as c:
        r = c.request("GET", "/download", [("X-Echo-Body-Bytes", str(BIG_DOWNLOAD))], keep_body=False)
    assert r.status == 200 and r.complete
    assert r.body_len == BIG_DOWNLOAD and r.body_sha256 == pattern_sha256(BIG_DOWNLOAD)
    assert 0 < rss.peak < RSS_LIMIT, f"sampled peak RSS {mib(rss.peak)}"


def test_slow_reader_does_not_make_gateway_buffer(gw):
    total = 300 << 20  # more than RSS_LIMIT: buffering it all would fail the check
    with RawConn(gw.port, timeout=120) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        c.send(build_request("GET", "/slow-reader", [("X-Echo-Body-Bytes", str(total))]))
        head = c.reader.read_head()
        assert head is not None and head[0].split(" ")[1] == "200"
        h = hashlib.sha256(c.reader.read_exact(1 << 20))
        # Stop reading. An unbounded gateway keeps pulling from the (fast) upstream into memory.
        with RssSampler(gw) as rss:
            threading.Event().wait(3.0)
        assert 0 < rss.peak < RSS_LIMIT, f"gateway buffered for a stalled client: peak RSS {mib(rss.peak)}"
        # Then read the rest: every byte arrives intact.
        c.reader.stream_exact(total - (1 << 20), h.update)
    assert h.hexdigest() == pattern_sha256(total)

