"""The admin listener's dashboard in a real headless Chromium: the page loads with no console error,
shows the traffic the test sends (requests, a 5xx share, the target, the routes), answers the explain
form, and leaves a screenshot in the test artifacts directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.support.admin import admin_url
from tests.support.gateway import REPO_ROOT, Gateway, simple_config, upstream_config
from tests.support.upstreams import EchoServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("FASTGW_TEST_ARTIFACTS", REPO_ROOT / "build" / "test-artifacts"))

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"),
    reason="chromium and chromedriver are not installed (.ci/run installs them)")

TOKEN = "dashboard-test-token-0123456789"
PROXIED = 40
FAILED = 5


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1200"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _dead_address() -> str:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{s.getsockname()[1]}"
    s.close()        # nothing listens there: connections are refused, the gateway answers 502
    return address


def test_dashboard_shows_live_traffic(browser):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with EchoServer() as echo:
        address = f"127.0.0.1:{echo.port}"
        cfg = simple_config(
            upstreams={"echo": upstream_config(address), "gone": upstream_config(_dead_address())},
            routes=[{"name": "broken", "match": {"path": {"prefix": "/broken"}}, "upstream": "gone"},
                    {"name": "all", "match": {"path": {"prefix": "/"}}, "upstream": "echo"}])
        cfg["admin"] = {"address": "127.0.0.1:0", "token": TOKEN}
        with Gateway(cfg) as gw:
            with httpx.Client() as client:
                for i in range(PROXIED):
                    assert client.get(gw.url_for(f"/page/{i}")).status_code == 200
                for _ in range(FAILED):
                    assert client.get(gw.url_for("/broken")).status_code == 502

            browser.get(f"{admin_url(gw)}/dashboard?interval_ms=250#token={TOKEN}")
            # the tables are redrawn every poll: an element found may be replaced before it is read
            wait = WebDriverWait(browser, 20, ignored_exceptions=(StaleElementReferenceException,))

            def requests_shown(route):
                def shown(driver):
                    rows = driver.find_elements(By.CSS_SELECTOR, f'#per-route tr[data-route="{route}"]')
                    return sum(int(r.get_attribute("data-requests") or 0) for r in rows)
                return shown

            wait.until(lambda d: requests_shown("all")(d) >= PROXIED)
            wait.until(lambda d: requests_shown("broken")(d) >= FAILED)
            # every request to it failed with a 502
            wait.until(lambda d: "100.0%" in d.find_element(By.CSS_SELECTOR, '#per-route tr[data-route="broken"]').text)
            wait.until(lambda d: int(d.find_element(By.ID, "tile-total").get_attribute("data-value") or 0)
                       >= PROXIED + FAILED)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'#targets tr[data-target="{address}"]'))
            # the tables fill one after another within a poll
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#routes tr[data-route="broken"]'))
            assert browser.find_element(By.ID, "readiness").text == "ready"

            url = browser.find_element(By.ID, "x-url")
            url.clear()
            url.send_keys("/broken/x")
            browser.find_element(By.CSS_SELECTOR, "#explain button").click()
            wait.until(lambda d: "broken" in d.find_element(By.ID, "explain-answer").text)
            assert browser.find_element(By.ID, "error").text == ""

            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            assert browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))
            errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
            assert errors == []


def test_dashboard_page_needs_no_token_but_its_data_does():
    with EchoServer() as echo:
        cfg = simple_config(f"127.0.0.1:{echo.port}")
        cfg["admin"] = {"address": "127.0.0.1:0", "token": TOKEN}
        with Gateway(cfg) as gw:
            page = httpx.get(f"{admin_url(gw)}/dashboard")
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert "<script" in page.text and "src=" not in page.text   # nothing loaded from elsewhere
            assert httpx.get(f"{admin_url(gw)}/metrics").status_code == 401
            assert httpx.get(f"{admin_url(gw)}/metrics",
                             headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
