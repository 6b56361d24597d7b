"""
Headless Chromium for the console's end-to-end tests: Debian's
C{chromium} and C{chromium-driver} (installed by .ci/run) driven through
Selenium's WebDriver client.

Selenium's calls block, so every one runs in the reactor's thread pool
(L{Browser.run}) while the reactor keeps serving the test's cairn
clients. Waits are on DOM conditions (C{WebDriverWait}), each bounded.
The browser talks to 127.0.0.1 only: background networking, component
updates and name resolution are switched off.
"""

import os
import shutil

from twisted.internet import threads
from twisted.trial import unittest

from tests._harness import eventually

try:
    from selenium import webdriver
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # the test extra is not installed
    webdriver = None

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

_FLAGS = [
    "--headless=new",
    "--no-sandbox",  # CI runs as root
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--disable-domain-reliability",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    "--no-pings",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--lang=en-GB",
    "--hide-scrollbars",
    "--force-color-profile=srgb",
]


def missing() -> str:
    """Why the browser tests cannot run here (empty if they can)."""
    if webdriver is None:
        return "selenium is not installed (pip install '.[test]')"
    if CHROMIUM is None or CHROMEDRIVER is None:
        return "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
    return ""


def require(testcase) -> None:
    """
    Skip C{testcase} where the browser tests cannot run (L{missing}),
    except in CI (C{CI=true}), where that fails it: CI must run them.
    """
    why = missing()
    if why:
        if os.environ.get("CI") == "true":
            testcase.fail(f"CI must run the browser tests: {why}")
        raise unittest.SkipTest(why)


class Browser:
    """One headless Chromium; every method returns a Deferred."""

    def __init__(self, profile_dir, width=1200, height=900):
        self.profile_dir = profile_dir
        self.size = (width, height)
        self.driver = None

    def run(self, function, *args, timeout=60):
        """Run C{function(driver, *args)} in a thread; a Deferred of its result, failing after C{timeout} s."""
        return eventually(threads.deferToThread(lambda: function(self.driver, *args)), timeout)

    def start(self):
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in _FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.profile_dir}")
        options.add_argument("--window-size={},{}".format(*self.size))
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(executable_path=CHROMEDRIVER, log_output=os.devnull)

        def start():
            self.driver = webdriver.Chrome(service=service, options=options)
            self.driver.set_page_load_timeout(30)
            self.driver.set_script_timeout(30)

        return eventually(threads.deferToThread(start), 90)

    def quit(self):
        if self.driver is None:
            return None
        driver, self.driver = self.driver, None
        return eventually(threads.deferToThread(driver.quit), 60)

    def until(self, condition, timeout=30, message=""):
        """Fires with C{condition(driver)}'s first true value, polled by WebDriverWait for at most C{timeout} s."""

        def guarded(driver):
            # The console re-renders a list when its data changes: an
            # element found a moment ago may be gone; look again.
            try:
                return condition(driver)
            except (NoSuchElementException, StaleElementReferenceException):
                return False

        return self.run(
            lambda driver: WebDriverWait(driver, timeout, poll_frequency=0.1).until(guarded, message),
            timeout=timeout + 30,
        )

    def click(self, css):
        """Click the element C{css} selects, once it is displayed and enabled."""

        def clickable(driver):
            element = driver.find_element(By.CSS_SELECTOR, css)
            if element.is_displayed() and element.is_enabled():
                element.click()
                return True
            return False

        return self.until(clickable, message=f"{css} not clickable")

    def shoot(self, path, full_page=False):
        """Save a screenshot (the whole page's height with C{full_page})."""

        def shoot(driver):
            if full_page:
                # The window's size includes what is not page (its frame).
                height = driver.execute_script(
                    "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight"
                )
                driver.set_window_size(self.size[0], min(max(height, self.size[1]), 4000))
            try:
                driver.save_screenshot(path)
            finally:
                if full_page:
                    driver.set_window_size(*self.size)
            return path

        return self.run(shoot)

    def resize(self, width, height):
        self.size = (width, height)
        return self.run(lambda driver: driver.set_window_size(width, height))


def text_of(css):
    """A condition: the text of the element C{css} selects (false while it is empty or hidden)."""

    def condition(driver):
        element = driver.find_element(By.CSS_SELECTOR, css)
        return element.is_displayed() and element.text.strip()

    return condition


def shown(css):
    """A condition: the element C{css} selects is displayed."""
    return lambda driver: driver.find_element(By.CSS_SELECTOR, css).is_displayed()


def gone(css):
    """A condition: nothing matches C{css}."""
    return lambda driver: not driver.find_elements(By.CSS_SELECTOR, css)
