"""The admin UI in headless Chromium (Debian's chromium + chromium-driver; nothing downloaded).

Set UNIWS_ADMIN_SCREENSHOTS=1 to write the pages' screenshots to docs/admin/ (committed);
otherwise they go to the test's temporary directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .conftest import ROOT
from .helpers import api, connect, wait_for

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CLIENTS = 8
UI_TIMEOUT = float(os.environ.get("UNIWS_UI_TIMEOUT", "20"))

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="admin UI tests need Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver); "
           "`.ci/deps` installs them")


@pytest.fixture(scope="module")
def browser():
    os.environ.setdefault("SE_OFFLINE", "true")        # never let Selenium Manager fetch anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,860", "--force-device-scale-factor=1", "--no-first-run",
                "--disable-extensions", "--disable-background-networking"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(UI_TIMEOUT)
    yield driver
    driver.quit()


@pytest.fixture
def shots(tmp_path) -> Path:
    if os.environ.get("UNIWS_ADMIN_SCREENSHOTS"):
        out = ROOT / "docs" / "admin"
        out.mkdir(parents=True, exist_ok=True)
        return out
    return tmp_path


def _wait(driver, condition, what):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, UI_TIMEOUT).until(condition, message=what)


def _by_id(driver, element_id):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.ID, element_id)


def _rows(driver, table_id):
    from selenium.webdriver.common.by import By
    return driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")


def _run_action(driver, method: str, params: dict) -> None:
    from selenium.webdriver.support.ui import Select
    Select(_by_id(driver, "method")).select_by_value(method)
    box = _by_id(driver, "params")
    box.clear()
    box.send_keys(json.dumps(params))
    raw = lambda d: _by_id(d, "result-raw").get_attribute("textContent")    # inside a closed <details>
    before = raw(driver)
    _by_id(driver, "send").click()
    _wait(driver, lambda d: raw(d) not in ("", before) or "error" in _by_id(d, "result-status").text,
          f"a reply to {method}")


def test_admin_ui_login_status_publish_presence_logout(start_server, browser, shots):
    server = start_server({"workers": 2, "admin": True, "admin_password": "pw", "admin_secret": "s",
                           "presence": True, "history_size": 10, "history_ttl": "60s"})
    clients = []
    try:
        for i in range(CLIENTS):
            clients.append(connect(server, f"user{i}", {"room": {}})[0])
        workers = api(server, "info")["result"]["nodes"][0]["workers"]
        assert len(workers) == 2

        driver = browser
        driver.get(server.base + "/")
        _wait(driver, lambda d: _by_id(d, "login-view").is_displayed(), "the login form")
        driver.save_screenshot(str(shots / "login.png"))

        # A wrong password is refused and the form stays.
        _by_id(driver, "password").send_keys("wrong")
        _by_id(driver, "login-button").click()
        _wait(driver, lambda d: _by_id(d, "login-error").is_displayed(), "the wrong-password message")
        assert _by_id(driver, "login-error").text == "Wrong password."
        assert not _by_id(driver, "app-view").is_displayed()
        assert driver.execute_script("return localStorage.getItem('uniws.admin.token')") is None

        password = _by_id(driver, "password")
        password.clear()
        password.send_keys("pw")
        _by_id(driver, "login-button").click()
        _wait(driver, lambda d: _by_id(d, "app-view").is_displayed(), "the status page")

        # Status: two workers, the clients counted over both.
        _wait(driver, lambda d: len(_rows(d, "workers-table")) == 2, "two worker rows")
        _wait(driver, lambda d: d.find_element("css selector", '[data-stat="clients"] .value').text == str(CLIENTS),
              "the client count")
        cells = [row.find_elements("tag name", "td") for row in _rows(driver, "workers-table")]
        assert [c[0].text for c in cells] == ["0", "1"]
        assert sum(int(c[2].text) for c in cells) == CLIENTS
        node_cells = _rows(driver, "nodes-table")[0].find_elements("tag name", "td")
        assert node_cells[3].text == str(CLIENTS) and node_cells[8].text == "2"
        _wait(driver, lambda d: d.find_element("css selector", '[data-stat="publications_s"] .value').text != "–",
              "a publication rate from the second sample")
        driver.save_screenshot(str(shots / "status.png"))

        # Actions: publish reaches every WebSocket client.
        _by_id(driver, "nav-actions").click()
        _wait(driver, lambda d: _by_id(d, "actions-page").is_displayed(), "the actions page")
        _run_action(driver, "publish", {"channel": "room", "data": {"text": "hello from the admin UI"}})
        assert _by_id(driver, "result-status").text.startswith("ok")
        assert json.loads(_by_id(driver, "result-raw").get_attribute("textContent"))["result"]["offset"] == 1
        for client in clients:
            assert client.recv_json()["data"]["data"] == {"text": "hello from the admin UI"}
        driver.save_screenshot(str(shots / "actions-publish.png"))

        # Presence: a readable table with every client.
        _run_action(driver, "presence", {"channel": "room"})
        _wait(driver, lambda d: len(d.find_elements("css selector", "#result-view tbody tr")) == CLIENTS,
              "a presence row per client")
        users = {row.find_elements("tag name", "td")[1].text
                 for row in driver.find_elements("css selector", "#result-view tbody tr")}
        assert users == {f"user{i}" for i in range(CLIENTS)}
        driver.save_screenshot(str(shots / "actions-presence.png"))

        # A bad params value is caught before sending.
        box = _by_id(driver, "params")
        box.clear()
        box.send_keys("{not json")
        _by_id(driver, "send").click()
        _wait(driver, lambda d: _by_id(d, "params-error").is_displayed(), "the JSON error")

        # Log out: back to the login form, the token forgotten.
        _by_id(driver, "logout").click()
        _wait(driver, lambda d: _by_id(d, "login-view").is_displayed(), "the login form again")
        assert driver.execute_script("return localStorage.getItem('uniws.admin.token')") is None
        driver.refresh()
        _wait(driver, lambda d: _by_id(d, "login-view").is_displayed(), "still logged out after a reload")
    finally:
        for client in clients:
            client.close()


def test_admin_ui_logs_in_by_itself_when_insecure(start_server, browser):
    server = start_server({"admin": True, "admin_insecure": True})
    browser.get(server.base + "/")
    browser.execute_script("localStorage.clear()")
    browser.refresh()
    _wait(browser, lambda d: _by_id(d, "app-view").is_displayed(), "the status page without a login")
    _wait(browser, lambda d: len(_rows(d, "workers-table")) == 1, "one worker row")
