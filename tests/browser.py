"""Debian's Chromium, driven by Selenium through chromium-driver, for the web pages' tests.

Skipped where chromium or chromedriver is not installed, unless ESL_CB_REQUIRE_BROWSER=1 (CI sets
it; .ci/run installs both), where that fails. Screenshots go to the session's pytest folder,
screenshots/ (each test prints where)."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("ESL_CB_CHROMIUM", "/usr/bin/chromium")
DRIVER = os.environ.get("ESL_CB_CHROMEDRIVER", "/usr/bin/chromedriver")


def require_browser() -> None:
    missing = [p for p in (CHROMIUM, DRIVER) if not (Path(p).exists() or shutil.which(p))]
    if missing:
        why = f"no {', '.join(missing)}: apt-get install chromium chromium-driver (.ci/run does)"
        if os.environ.get("ESL_CB_REQUIRE_BROWSER") == "1":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)


class Browser:
    def __init__(self, base_url: str, shots: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1600,1100", "--force-device-scale-factor=1", "--lang=en-US"):
            options.add_argument(arg)
        self.driver = webdriver.Chrome(service=Service(DRIVER), options=options)
        self.driver.set_page_load_timeout(20)
        self.base = base_url
        self.shots = shots
        shots.mkdir(parents=True, exist_ok=True)

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def sign_in(self, secret: str, then: str) -> None:
        from selenium.webdriver.common.by import By

        self.open(f"/ui/signin?next={then}")
        field = self.driver.find_element(By.ID, "token")
        field.send_keys(secret)
        self.driver.find_element(By.ID, "signin-button").click()
        self.wait(lambda d: d.current_url.endswith(then), what=f"the sign-in to land on {then}")

    def wait(self, condition, timeout: float = 10.0, what: str = "the page"):
        """Until `condition(driver)`; an element the page re-rendered meanwhile (live updates) is read again."""
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=0.05,
                             ignored_exceptions=(StaleElementReferenceException,)).until(
            condition, f"timed out waiting for {what}")

    def click(self, selector: str) -> None:
        """Click the first element matching `selector`, found again if a live update replaced it."""
        def clicked(_):
            found = self.css(selector)
            if found:
                found[0].click()
            return bool(found)
        self.wait(clicked, what=f"{selector} to click")

    def text(self, selector: str) -> str:
        """The text of the first element matching `selector` ('' when none), read again if the page
        re-rendered it while it was being read."""
        return self.wait(lambda d: [e.text for e in self.css(selector)[:1]] or [""], what=selector)[0] or ""

    def css(self, selector: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def screenshot(self, name: str) -> Path:
        """The whole page (the window grown to its height for the shot)."""
        path = self.shots / f"{name}.png"
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(1600, max(1100, min(int(height) + 140, 4000)))
        self.driver.save_screenshot(str(path))
        self.driver.set_window_size(1600, 1100)
        print(f"screenshot: {path}")
        return path

    def watch_rows(self) -> None:
        """Record in the page the time (the browser's clock, this host's) each contact's row first shows
        in each state."""
        self.driver.execute_script("""
            window.__seen = {};
            const mark = () => document.querySelectorAll('tr[data-contact]').forEach(r => {
                const key = r.dataset.contact + ':' + r.dataset.state;
                if (!(key in window.__seen)) window.__seen[key] = Date.now(); });
            new MutationObserver(mark).observe(document.body, {childList: true, subtree: true});
            mark();""")

    def seen_at(self, contact_id: int, state: str) -> float | None:
        ms = self.driver.execute_script(f"return window.__seen['{contact_id}:{state}'] || null")
        return ms / 1000.0 if ms else None

    def close(self) -> None:
        self.driver.quit()


@pytest.fixture
def browser_factory(tmp_path_factory):
    require_browser()
    shots = tmp_path_factory.getbasetemp() / "screenshots"
    made: list[Browser] = []

    def make(base_url: str) -> Browser:
        b = Browser(base_url, shots)
        made.append(b)
        return b
    yield make
    for b in made:
        b.close()


def now() -> float:
    return time.time()
