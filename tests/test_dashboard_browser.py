"""The dashboard in a real browser: headless Chromium driven by Selenium, against the example
app served on 127.0.0.1 (mongomock storage, seeded records plus the browser's own requests).

Each page is loaded with no console error; a person's path is followed (log in, overview, an
endpoint, a request, copy as curl, the list's filters, the live view), also on a phone-sized
window, in dark mode and with JavaScript off. Screenshots go to tests/artifacts/; with
``TRACKING_UPDATE_SCREENSHOTS=1`` the overview and request-detail ones are also copied to
docs/screenshots/ (the committed pictures of the README).

Skipped, saying why, when Selenium, Debian's ``chromium`` or ``chromium-driver`` is missing
(``apt-get install -y chromium chromium-driver``; ``.ci/run`` installs them).
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

import mongoengine
import mongomock
import pytest
from werkzeug.serving import make_server

from flask_tracking.dashboard.windows import utc_now

from .conftest import store_rollups
from .test_dashboard import XSS, make_record, seed_records

ROOT = Path(__file__).parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
SCREENSHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
)
DESKTOP = (1280, 900)
PHONE = (390, 844)
WAIT_SECONDS = 10.0

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="Selenium is not installed (pip install -e '.[test]')"
)
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(
        "Chromium or chromedriver is missing: apt-get install -y chromium chromium-driver",
        allow_module_level=True,
    )

from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The example app on 127.0.0.1 (a free port), storing into mongomock, with seeded
    records; its base URL."""
    from example_app.app import create_app

    mongoengine.connect(
        "flask_tracking_browser",
        alias="default",
        mongo_client_class=mongomock.MongoClient,
        uuidRepresentation="standard",
    )
    try:
        now = utc_now()
        collection = mongoengine.get_db("default")["tracking"]
        background, seeds = background_traffic(now), seed_records(now)
        collection.insert_many(background)  # first: the seeds stay the newest ids
        collection.insert_many(seeds)
        store_rollups(mongoengine.get_db("default"), background + seeds)
        app = create_app({"SECRET_KEY": "browser-test", "TRACKING_FLUSH_INTERVAL_SECONDS": 0.05})
        http = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=http.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{http.server_port}"
        finally:
            http.shutdown()
            thread.join(5)
            app.extensions["tracking"]._apps[app].writer.shutdown(1.0)
    finally:
        mongoengine.disconnect("default")


#: Endpoint, path, typical ms, share of 500s, share of traffic: a small shop's day.
BACKGROUND_ENDPOINTS = (
    ("shop.index", "/", 12.0, 0.0, 30),
    ("shop.product", "/products/{n}", 25.0, 0.002, 35),
    ("api.search", "/api/search", 80.0, 0.03, 15),
    ("api.cart", "/api/cart", 40.0, 0.01, 12),
    ("account.settings", "/account/settings", 30.0, 0.0, 8),
)
BACKGROUND_AGENTS = (
    ("Chrome", "124.0.0", "Windows", 40),
    ("Safari", "17.4", "iOS", 20),
    ("Chrome Mobile", "124.0.0", "Android", 15),
    ("Firefox", "125.0", "Linux", 10),
    ("Safari", "17.4", "Mac OS X", 10),
    ("Edge", "124.0.0", "Windows", 5),
)


def background_traffic(now: datetime, count: int = 1500) -> list[dict[str, Any]]:
    """``count`` requests of a small shop over the last 24 hours (busier in the afternoon),
    so the charts of the screenshots look like a real day. Deterministic."""
    rng = random.Random(6)
    records = []
    for _ in range(count):
        endpoint, path, typical, failing, _share = rng.choices(
            BACKGROUND_ENDPOINTS, [row[4] for row in BACKGROUND_ENDPOINTS]
        )[0]
        browser, version, platform, _weight = rng.choices(
            BACKGROUND_AGENTS, [row[3] for row in BACKGROUND_AGENTS]
        )[0]
        hours_ago = rng.triangular(0, 24, 6)
        failed = rng.random() < failing
        status = 500 if failed else rng.choices([200, 302, 404], [95, 3, 2])[0]
        records.append(
            make_record(
                now - timedelta(hours=hours_ago),
                path=path.format(n=rng.randrange(1, 300)),
                endpoint=endpoint,
                status_code=status,
                exception="TimeoutError: search backend" if failed else None,
                execution_time=round(
                    rng.lognormvariate(0, 0.6) * typical * (8 if failed else 1), 2
                ),
                ip=f"192.0.2.{rng.randrange(1, 120)}",
                user_id=str(rng.randrange(1, 60)) if rng.random() < 0.4 else None,
                agent=(browser, version, platform, f"{browser}/{version} ({platform})"),
            )
        )
    return records


def make_driver(profile: str, *, javascript: bool = True) -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2}
        )
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


@pytest.fixture(scope="module")
def browser(server: str) -> Iterator[Any]:
    """A logged-in Chromium (fresh profile), on the dashboard's overview."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        driver = make_driver(profile)
        try:
            log_in(driver, server)
            yield driver
        finally:
            driver.quit()


def log_in(driver: Any, server: str) -> None:
    driver.get(f"{server}/tracking/")
    assert "/login" in driver.current_url, "the dashboard must send strangers to the login"
    driver.find_element(By.NAME, "username").send_keys("demo")
    driver.find_element(By.NAME, "password").send_keys("demo")
    driver.find_element(
        By.CSS_SELECTOR, "form button[type=submit], form input[type=submit]"
    ).click()
    wait_for(driver, lambda: driver.current_url.endswith("/tracking/"))
    assert console_errors(driver) == []


def wait_for(driver: Any, condition: Callable[[], Any], timeout: float = WAIT_SECONDS) -> Any:
    return WebDriverWait(driver, timeout).until(lambda _: condition())


def console_errors(driver: Any) -> list[str]:
    """Console messages of level SEVERE since the last call (the log is drained)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def screenshot(driver: Any, name: str) -> Path:
    """A full-page PNG in tests/artifacts/ (through the DevTools protocol)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        },
    )
    path = ARTIFACTS / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def publish(path: Path) -> None:
    """Copy a screenshot to docs/screenshots/ when TRACKING_UPDATE_SCREENSHOTS=1."""
    if os.environ.get("TRACKING_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOTS / path.name)


def load(driver: Any, url: str) -> None:
    """Open ``url`` and check the page logged no error."""
    driver.get(url)
    wait_for(driver, lambda: driver.execute_script("return document.readyState") == "complete")
    assert console_errors(driver) == [], url


def no_horizontal_scroll(driver: Any) -> bool:
    return bool(
        driver.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1"
        )
    )


def test_every_page_loads_without_console_errors(browser: Any, server: str) -> None:
    for path in (
        "/tracking/",
        "/tracking/?window=1h",
        "/tracking/?window=7d",
        "/tracking/endpoints/api.items",
        "/tracking/requests",
        "/tracking/requests?status=5xx",
        "/tracking/live",
    ):
        load(browser, server + path)
        assert browser.find_element(By.TAG_NAME, "h1").text, path
        assert "Traceback" not in browser.page_source


def test_overview_to_endpoint_to_request(browser: Any, server: str) -> None:
    load(browser, f"{server}/tracking/?window=24h")
    assert browser.find_elements(By.CSS_SELECTOR, "figure.chart svg rect.bar")
    publish(screenshot(browser, "overview"))

    top = browser.find_element(By.XPATH, "//h2[text()='Top endpoints by requests']/..")
    top.find_element(By.PARTIAL_LINK_TEXT, "api.items").click()
    wait_for(browser, lambda: "/tracking/endpoints/api.items" in browser.current_url)
    assert console_errors(browser) == []
    assert "api.items" in browser.find_element(By.TAG_NAME, "h1").text
    assert browser.find_elements(By.CSS_SELECTOR, "figure.chart svg rect.bar")
    screenshot(browser, "endpoint")

    slowest = browser.find_element(By.XPATH, "//h2[text()='Slowest requests']/..")
    slowest.find_element(By.CSS_SELECTOR, "td.path a").click()
    wait_for(browser, lambda: "/tracking/requests/" in browser.current_url)
    assert console_errors(browser) == []
    assert "ValueError: bad item" in browser.page_source
    screenshot(browser, "request-error")


def test_request_detail_copy_as_curl(browser: Any, server: str) -> None:
    load(browser, f"{server}/tracking/requests?path=/api/orders")
    browser.find_element(By.CSS_SELECTOR, "td.path a").click()
    wait_for(browser, lambda: "/tracking/requests/" in browser.current_url)
    assert console_errors(browser) == []
    page = browser.find_element(By.TAG_NAME, "main").text
    assert '"password": "[Filtered]"' in page and "Authorization" in page
    curl = browser.find_element(By.ID, "curl").text
    assert curl.startswith("curl --globoff -X POST 'https://app.example.com/api/orders?")
    button = browser.find_element(By.CSS_SELECTOR, "button[data-copy=curl]")
    assert button.is_displayed(), "the script shows the copy button"
    button.click()
    status = browser.find_element(By.CSS_SELECTOR, ".copy-status")
    wait_for(browser, lambda: status.text)
    assert status.text in ("Copied.", "Could not copy: the command is selected, copy it by hand.")
    assert console_errors(browser) == []
    publish(screenshot(browser, "request-detail"))


def test_filters_and_pages(browser: Any, server: str) -> None:
    load(browser, f"{server}/tracking/requests")
    status = browser.find_element(By.NAME, "status")
    status.clear()
    status.send_keys("5xx")
    browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    wait_for(browser, lambda: "status=5xx" in browser.current_url)
    statuses = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "td.status")]
    assert statuses and set(statuses) == {"500"}
    assert console_errors(browser) == []
    screenshot(browser, "requests-filtered")


def test_live_view_shows_new_requests(browser: Any, server: str) -> None:
    load(browser, f"{server}/tracking/live")
    wait_for(browser, lambda: "Live:" in browser.find_element(By.ID, "live-status").text)
    marker = f"live-{time.time_ns()}"
    with urllib.request.urlopen(f"{server}/custom?marker={marker}", timeout=10) as response:
        assert response.status == 200
    try:
        wait_for(browser, lambda: marker in browser.find_element(By.ID, "live-rows").text)
    except TimeoutException:  # pragma: no cover - the message says what was on the page
        pytest.fail(f"the live view did not show the new request: {browser.page_source[:2000]}")
    assert "fresh" in browser.find_element(By.CSS_SELECTOR, "#live-rows tr").get_attribute("class")
    assert console_errors(browser) == []
    screenshot(browser, "live")


def test_hostile_record_is_inert(browser: Any, server: str) -> None:
    load(browser, f"{server}/tracking/requests")
    assert XSS in browser.find_element(By.TAG_NAME, "main").text  # shown as text
    assert browser.execute_script("return window.alertCount === undefined")
    assert not browser.find_elements(By.XPATH, "//main//script")


def test_phone_and_dark_mode(browser: Any, server: str) -> None:
    try:
        browser.set_window_size(*PHONE)
        for path, name in (("/tracking/", "overview-phone"), ("/tracking/requests", None)):
            load(browser, server + path)
            assert no_horizontal_scroll(browser), path
            if name:
                screenshot(browser, name)
        browser.set_window_size(*DESKTOP)
        browser.execute_cdp_cmd(
            "Emulation.setEmulatedMedia",
            {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
        )
        load(browser, f"{server}/tracking/")
        background = browser.execute_script(
            "return getComputedStyle(document.body).backgroundColor"
        )
        assert background == "rgb(18, 21, 27)", background
        publish(screenshot(browser, "overview-dark"))
    finally:
        browser.set_window_size(*DESKTOP)
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})


#: For the first row of the request table: each cell's text, and whether it lies inside the
#: viewport and inside its scroll container's visible part (no sideways scrolling to see it).
FIRST_ROW_CELLS = """
const width = document.documentElement.clientWidth;
const row = document.querySelector("table.requests tbody tr");
const scroller = row.closest(".scroll");
return [...row.querySelectorAll("td")].filter(cell => cell.offsetParent !== null).map(cell => {
  const box = cell.getBoundingClientRect();
  return [cell.className, cell.textContent.trim(), box.left >= 0 && box.right <= width + 1,
          scroller.scrollWidth <= scroller.clientWidth + 1];
});
"""


def test_phone_request_tables_show_status_and_duration(browser: Any, server: str) -> None:
    try:
        browser.set_window_size(*PHONE)
        for path, name in (
            ("/tracking/requests", "requests-phone"),
            ("/tracking/live", "live-phone"),
        ):
            load(browser, server + path)
            if path.endswith("live"):
                wait_for(
                    browser, lambda: "Live:" in browser.find_element(By.ID, "live-status").text
                )
            cells = browser.execute_script(FIRST_ROW_CELLS)
            status = [cell for cell in cells if "status" in cell[0].split()]
            duration = [cell for cell in cells if cell[0].split() == ["num", "nowrap"]]
            assert status and status[0][1].isdigit(), (path, cells)
            assert duration and duration[0][1].endswith("s"), (path, cells)
            assert all(inside and unscrolled for _, _, inside, unscrolled in cells), (path, cells)
            assert no_horizontal_scroll(browser), path
            screenshot(browser, name)
    finally:
        browser.set_window_size(*DESKTOP)


def test_pages_work_without_javascript(server: str) -> None:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        driver = make_driver(profile, javascript=False)
        try:
            log_in(driver, server)
            assert driver.find_elements(By.CSS_SELECTOR, "figure.chart svg rect.bar")
            record = make_record(utc_now(), path="/nojs", request_body=b'{"a": 1}')
            mongoengine.get_db("default")["tracking"].insert_one(record)
            load(driver, f"{server}/tracking/requests/{record['_id']}")
            assert driver.find_element(By.ID, "curl").is_displayed()
            assert not driver.find_element(By.CSS_SELECTOR, "button[data-copy]").is_displayed()
            load(driver, f"{server}/tracking/live")
            assert "JavaScript" in driver.find_element(By.ID, "live-status").text
            load(driver, f"{server}/tracking/requests?path=/nojs")
            assert driver.find_element(By.CSS_SELECTOR, "td.path").text == "/nojs"
        finally:
            driver.quit()
