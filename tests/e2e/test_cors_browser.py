"""CORS as a browser enforces it (headless Chromium): a page on another origin fetches the gateway and
reads the status of a 401 an auth policy answered. Without the CORS headers on that answer the
browser hides it from the page (`fetch` rejects), as the route without a cors policy shows."""

from __future__ import annotations

import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from support.gateway import simple_config, upstream_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"),
    reason="chromium and chromedriver are not installed (.ci/run installs them)")

KEY = "a-browser-consumer-key-long-enough-0123456789"


class _Page(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        body = b"<!doctype html><title>app</title><p>app"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def page():
    """The page's origin: http://127.0.0.2:<port>, not the gateway's (http://127.0.0.1:<its port>)."""
    httpd = ThreadingHTTPServer(("127.0.0.2", 0), _Page)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.2:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


FETCH = """
const [url, key, done] = arguments;
const headers = key ? {"X-Api-Key": key} : {};
fetch(url, {headers}).then(async r => done({status: r.status, body: await r.text(),
                                             rid: r.headers.get("x-request-id")}),
                           e => done({error: String(e)}));
"""


def test_a_page_on_another_origin_reads_the_401(page, browser, echo, module_gateway_factory):
    def route(name, prefix, policies):
        return {"name": name, "match": {"path": {"prefix": prefix}}, "upstream": "echo", "policies": policies}

    cfg = simple_config(upstreams={"echo": upstream_config(echo.address)}, routes=[
        route("api", "/api", [{"type": "cors", "allow_origins": [page], "allow_headers": ["X-Api-Key"],
                               "expose_headers": ["X-Request-Id"]}, {"type": "api_key"}]),
        route("nocors", "/nocors", [{"type": "api_key"}]),
    ])
    cfg["consumers"] = [{"name": "app", "credentials": {"api_keys": [KEY]}}]
    gw = module_gateway_factory(cfg)
    api = f"http://127.0.0.1:{gw.port}"
    browser.get(page + "/")
    r = browser.execute_async_script(FETCH, f"{api}/api/items", None)
    assert r.get("status") == 401, r
    assert '"authentication required"' in r["body"]
    assert r["rid"]                                     # an exposed header of the refusal, read by the page
    # with the key: a preflight (X-Api-Key is not a safelisted header), then the upstream's 200
    r = browser.execute_async_script(FETCH, f"{api}/api/items", KEY)
    assert r.get("status") == 200, r
    # the same 401 without a cors policy: the browser keeps it from the page
    r = browser.execute_async_script(FETCH, f"{api}/nocors/items", None)
    assert "error" in r and "status" not in r, r
