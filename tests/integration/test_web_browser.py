"""The workspace in a real browser: Debian's chromium, headless, driven by selenium through Debian's chromedriver.

`arledger serve` runs as a user runs it (a subprocess beside `arledger run`).
Selenium is pointed at /usr/bin/chromedriver and /usr/bin/chromium: it never
downloads a driver. Screenshots of each page go to tests/artifacts/web/
(ignored by git) for a person to look at.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from web_fixture import PASSWORD, WebWorld, build_world

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.browser]

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "web"
SERVER_START_TIMEOUT_S = 60.0
OUTCOME_TIMEOUT_S = 120.0  # ingest, relay and the next published snapshot, on a busy machine
PAGE_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def world(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebWorld]:
    yield from build_world(kafka_bootstrap, tmp_path_factory.mktemp("web-browser"))


@pytest.fixture(scope="module")
def server(world: WebWorld) -> Iterator[str]:
    """`arledger serve` on a free port, until its health check says it is connected to Kafka."""
    port = free_port()
    log = (world.home / "serve.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "arledger.cli", "serve", "--port", str(port)], env=world.env,
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            assert process.poll() is None, (world.home / "serve.log").read_text()
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as answer:
                    if json.loads(answer.read())["kafka"]:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "arledger serve did not start:\n" + (world.home / "serve.log").read_text()
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


@pytest.fixture
def browser() -> Iterator[object]:
    if not (os.access(CHROMEDRIVER, os.X_OK) and shutil.which(CHROMIUM)):
        pytest.fail("chromium and chromium-driver are missing: run 'make system-deps' "
                    "(deploy/install-system-deps.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1100", "--lang=en-US"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def sign_in(driver, url: str, username: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "/login")
    driver.find_element(By.ID, "username").send_keys(username)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "sign-in").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "who"), "the signed-in header")
    assert username in driver.find_element(By.ID, "who").text


def wait_for(driver, condition, what: str, timeout_s: float = PAGE_TIMEOUT_S):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The /sent page reloads itself each second: an element found just before a reload goes stale.
    return WebDriverWait(driver, timeout_s, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)
                         ).until(condition, f"waiting for {what}")


def wait_until_shown(driver, what: str) -> None:
    """The /sent page reloads itself each second until the outcome is in the reports (or rejected); its state is
    read in one script call, so a reload in between cannot leave a half-read page."""
    from selenium.common.exceptions import WebDriverException

    def settled(d):
        try:
            state = d.execute_script(
                "const o = document.getElementById('outcome');"
                "return o ? [o.dataset.status, !!document.getElementById('visible'), o.textContent] : null;")
        except WebDriverException:  # the page was unloading
            return False
        if state and state[0] == "rejected":
            raise AssertionError(f"{what} was rejected: {state[2]}")
        return bool(state and state[1])

    from selenium.common.exceptions import TimeoutException

    try:
        wait_for(driver, settled, what, OUTCOME_TIMEOUT_S)
    except TimeoutException:
        raise AssertionError(f"{what}: no outcome shown after {OUTCOME_TIMEOUT_S} s; the page says:\n"
                             + driver.find_element("tag name", "main").text) from None


def test_a_collector_records_a_promise_from_the_worklist_and_sees_it_on_the_customer_page(
        server: str, browser) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(server + "/worklist")
    shot(driver, "login")
    sign_in(driver, server, "colin")
    driver.get(server + "/worklist")
    row = driver.find_element(By.CSS_SELECTOR, 'tr[data-customer="C1"][data-invoice="INV-1"]')
    shot(driver, "worklist")
    row.find_element(By.CSS_SELECTOR, "summary.promise-open").click()           # click 1
    row.find_element(By.CSS_SELECTOR, "button.promise-submit").click()          # click 2
    wait_until_shown(driver, "the promise")
    shot(driver, "sent")
    driver.find_element(By.ID, "to-customer").click()
    promises = wait_for(driver, lambda d: d.find_elements(By.ID, "promises"), "the customer page")[0]
    assert "PW-" in promises.text and "5,000.00" in promises.text and "open" in promises.text
    shot(driver, "customer")
    for name, path in (("overview", "/"), ("calendar", "/calendar"), ("collections", "/collections"),
                       ("customers", "/customers"),
                       ("downloads", "/downloads")):
        driver.get(server + path)
        assert driver.find_elements(By.TAG_NAME, "h1"), path
        assert "Unexpected error" not in driver.page_source, path
        shot(driver, name)
    driver.get(server + "/calendar")
    assert "INV-3" in driver.find_element(By.ID, "calendar").text  # due in 3 days: a reminder before due


def test_a_viewer_sees_no_write_button_and_the_api_answers_403(server: str, browser) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    sign_in(driver, server, "vera")
    for path in ("/worklist", "/customers/C1", "/credit-queue"):
        driver.get(server + path)
        assert not driver.find_elements(By.CSS_SELECTOR, 'form[action^="/actions/"]'), path
        assert not driver.find_elements(By.CSS_SELECTOR, "button.release, button.promise-submit"), path
    status = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch('/api/envelopes', {method: 'POST', headers: {'Content-Type': 'application/json',
              'X-CSRF-Token': document.querySelector('input[name=csrf]').value},
              body: JSON.stringify({id: 'viewer-try', type: 'collection.action', time: '2026-01-01T00:00:00Z',
                                    customer_id: 'C1', data: {action: 'call'}})})
          .then(r => r.json().then(body => done([r.status, body.error])));""")
    assert status == [403, "forbidden"]


def test_a_controller_releases_a_blocked_order_and_the_decision_shows(server: str, browser) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    sign_in(driver, server, "carla")
    driver.get(server + "/credit-queue")
    row = driver.find_element(By.CSS_SELECTOR, 'tr[data-order="O-1"]')
    assert "over_limit" in row.text
    shot(driver, "credit-queue")
    row.find_element(By.CSS_SELECTOR, "input.release-reason").send_keys("paid in advance, confirmed by bank")
    row.find_element(By.CSS_SELECTOR, "button.release").click()
    wait_until_shown(driver, "the release")
    driver.get(server + "/customers/C2")
    decisions = driver.find_element(By.ID, "decisions").text
    assert "O-1" in decisions and "released" in decisions and "carla" in decisions
    shot(driver, "customer-after-release")
    driver.get(server + "/credit-queue")
    assert not driver.find_elements(By.CSS_SELECTOR, 'tr[data-order="O-1"]')
