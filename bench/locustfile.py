"""Mixed-traffic load test through the gateway (locust).

Start the upstream and fastgw with the matching routes (pinned like the macro benchmark), then locust:

    .venv/bin/python bench/run.py --serve            # listens on 127.0.0.1:8080 until Ctrl-C
    locust -f bench/locustfile.py --headless -u 50 -r 10 -t 60s --host http://127.0.0.1:8080

(locust is not a project dependency: `.venv/bin/pip install locust`.) The mix, by weight:

| weight | request | route | expect |
|--:|---|---|---|
| 30 | GET /api/v1/users/{id} | prefix /api/v1/users/ | 200, 26 B |
| 12 | GET /api/v1/orders?status=open&limit=50 | prefix /api/v1/orders | 200 |
|  8 | POST /api/v1/orders, JSON of 200 B - 2 KiB | prefix /api/v1/orders | 200 |
|  4 | POST /api/v1/search, JSON of 100 B - 1 KiB | exact /api/v1/search | 200 |
| 10 | GET /static/4k/app-{n}.css | prefix /static/ | 200, 4 KiB |
|  5 | GET /static/64k/bundle-{n}.js | prefix /static/ | 200, 64 KiB |
|  4 | POST /upload, 16 - 256 KiB | exact /upload | 200 |
|  5 | GET / with Host: admin.example.com | host admin.example.com | 200 |
|  5 | GET /no/such/route (no route matches) | - | 404 from the gateway |
|  3 | GET /status/500, /status/503 (the upstream fails) | prefix /status/ | 500 / 503, passed through |
|  2 | GET /down/x (nobody listens on that upstream) | prefix /down/ | 502 from the gateway |

A response with the expected status counts as a success; any other status or a transport error as a
failure, so a clean run reports 0 failures while still sending 15% error traffic.
"""

from __future__ import annotations

import json
import random

from locust import FastHttpUser, between, task

SEED_RANGE = 10**6


def _json_body(lo: int, hi: int) -> bytes:
    size = random.randint(lo, hi)
    doc = {"customer": random.randrange(SEED_RANGE), "items": [], "note": ""}
    while len(json.dumps(doc)) < size:
        doc["items"].append({"sku": f"SKU-{random.randrange(SEED_RANGE):06d}", "qty": random.randint(1, 9)})
    return json.dumps(doc).encode()


class GatewayUser(FastHttpUser):
    """One client of the API gateway: a browser-ish mix of API calls, assets, uploads and errors."""

    wait_time = between(0.0, 0.05)
    default_headers = {"User-Agent": "fastgw-locust/1", "Accept": "application/json"}

    def _expect(self, method: str, path: str, status: int, name: str, **kw) -> None:
        with self.client.request(method, path, name=name, catch_response=True, **kw) as resp:
            if resp.status_code == status:
                resp.success()
            else:
                resp.failure(f"expected {status}, got {resp.status_code}")

    @task(30)
    def get_user(self):
        self._expect("GET", f"/api/v1/users/{random.randrange(SEED_RANGE)}", 200, "GET /api/v1/users/[id]")

    @task(12)
    def list_orders(self):
        self._expect("GET", "/api/v1/orders?status=open&limit=50", 200, "GET /api/v1/orders")

    @task(8)
    def create_order(self):
        body = _json_body(200, 2048)
        self._expect(
            "POST",
            "/api/v1/orders",
            200,
            "POST /api/v1/orders",
            data=body,
            headers={"Content-Type": "application/json"},
        )

    @task(4)
    def search(self):
        body = _json_body(100, 1024)
        self._expect(
            "POST",
            "/api/v1/search",
            200,
            "POST /api/v1/search",
            data=body,
            headers={"Content-Type": "application/json"},
        )

    @task(10)
    def css(self):
        self._expect("GET", f"/static/4k/app-{random.randrange(50)}.css", 200, "GET /static/4k/[asset]")

    @task(5)
    def bundle(self):
        self._expect("GET", f"/static/64k/bundle-{random.randrange(20)}.js", 200, "GET /static/64k/[asset]")

    @task(4)
    def upload(self):
        body = random.randbytes(random.randint(16 * 1024, 256 * 1024))
        self._expect(
            "POST",
            "/upload",
            200,
            "POST /upload",
            data=body,
            headers={"Content-Type": "application/octet-stream"},
        )

    @task(5)
    def admin(self):
        self._expect("GET", "/", 200, "GET admin.example.com/", headers={"Host": "admin.example.com"})

    @task(5)
    def no_route(self):
        self._expect("GET", f"/no/such/route/{random.randrange(100)}", 404, "GET [no route] -> 404")

    @task(3)
    def upstream_error(self):
        code = random.choice((500, 503))
        self._expect("GET", f"/status/{code}", code, f"GET /status/{code}")

    @task(2)
    def upstream_down(self):
        self._expect("GET", "/down/x", 502, "GET /down/x -> 502")
