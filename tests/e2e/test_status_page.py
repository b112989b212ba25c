"""The status page at / in a real headless Chromium (Debian's chromium and chromedriver, driven by Selenium):
the open incident, a failed step's error and the daemon's checks appear; a tenant's hostile subject stays text;
the page logs no console error and runs no script. The screenshot is kept beside the test's files."""
import os
import shutil
from pathlib import Path

import pytest

from emergencyd.escalation.records import FAILED
from tests.harness import make_message

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
HOSTILE = '<script>alert("owned")</script><img src=x onerror=alert(2)> checkout down'


@pytest.fixture
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        message = "Chromium is not installed (make test installs chromium and chromium-driver when run as root)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1400"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_status_page_shows_the_incident_and_the_failed_page_safely(tmp_path, live_daemon, zendesk, pagerduty,
                                                                       browser):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    pagerduty.inject_status(400, path="/v2/enqueue", times=None)     # a revoked routing key
    daemon = live_daemon(policy=True, metrics="status_page = true\n")
    daemon.send(make_message(subject="All our apps are down", message_id="<p1@tenant.example>"))
    daemon.send(make_message(subject=HOSTILE, body="All our apps are down since 02:10.", sender="ops@evil.example",
                             message_id="<hostile@evil.example>"))
    assert {m["state"] for m in daemon.wait_settled(2)["messages"]} == {FAILED}

    browser.get(f"http://127.0.0.1:{daemon.metrics_port}/")
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "All our apps are down" in text and "Incidents" in text
    assert "Invalid Routing Key" in text or "400" in text, text[:2000]
    assert HOSTILE in text                                           # shown as the tenant wrote it, as text
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text                                 # no script of the subject's ran
    assert browser.find_elements(By.TAG_NAME, "script") == [] and browser.find_elements(By.TAG_NAME, "img") == []
    assert browser.find_elements(By.CSS_SELECTOR, ".incident[data-state=open]")
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == [], errors
    screenshot = tmp_path / "status-page.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    if os.environ.get("EMERGENCYD_SCREENSHOT_TO"):                   # how docs/status-page.png is made
        shutil.copy(screenshot, os.environ["EMERGENCYD_SCREENSHOT_TO"])
    print(f"screenshot: {screenshot}")


def test_without_status_page_the_root_is_not_found(start_daemon):
    daemon = start_daemon()
    assert daemon.http_get("/")[0] == 404
