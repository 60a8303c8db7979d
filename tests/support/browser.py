"""Debian's Chromium, headless and driven by selenium, for tests of the self-service site.

The browser trusts a test CA the way a user who imported that CA would: the CA goes into a
private NSS database ($HOME/.pki/nssdb under a temporary HOME), where Chromium on Linux looks
for locally trusted roots. The site's certificate is then verified for real (chain, validity,
the name 127.0.0.1), so a wrong certificate fails the test. Measured with Chromium 156:
`--ignore-certificate-errors-spki-list=<pin>` also loads the page, but it accepted a pinned
certificate that names another host (the pin bypasses verification), and
`acceptInsecureCerts` accepts anything.

Paths are absolute and selenium-manager never runs, so nothing is ever downloaded: the driver
is Debian's chromedriver and the browser Debian's chromium (both installed by scripts/test.sh).
A missing one skips the test on a workstation and fails it in CI, like `require_tool`.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.remote_connection import RemoteConnection
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support.smarthost import require_tool

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Seconds. Navigation (and a click that submits a form) waits for the page load; a missing
# element is waited for briefly (the site renders on the server, so it is there or never);
# every command to chromedriver is bounded too, so a wedged browser cannot hang the run.
PAGE_LOAD_TIMEOUT = 20
IMPLICIT_WAIT = 2
SCRIPT_TIMEOUT = 10
COMMAND_TIMEOUT = 60
CERTUTIL_TIMEOUT = 30

CHROMIUM_FLAGS = (
    "--headless=new",  # the real browser engine without a display
    # The tests run as root (CI) or in containers without user namespaces, where Chromium's
    # sandbox cannot start; the browser only ever visits the test's own loopback site.
    "--no-sandbox",
    "--disable-gpu",  # no GPU here: skip probing it (and the errors that come with it)
    "--disable-dev-shm-usage",  # container /dev/shm is often tiny: use the temporary dir
    # No traffic of its own (updates, field trials, sync, default apps): nothing outside
    # is reachable, and waiting for it would only slow the test down.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-proxy-server",  # the site is on loopback: ignore any http_proxy of the machine
    "--password-store=basic",  # no desktop keyring to look for
    "--lang=en-US",
    "--window-size=1280,900",  # stable layout for screenshots
)
# The password manager would offer to save what the test types; keep its prompts away.
CHROMIUM_PREFS = {
    "credentials_enable_service": False,
    "profile.password_manager_enabled": False,
    "profile.password_manager_leak_detection": False,
}

_DRIVERS = pytest.StashKey[list[WebDriver]]()


def trust_cas(home: Path, ca_files: list[Path]) -> None:
    """A new NSS database in `home` that trusts each CA for TLS servers ("C,,"), nothing else."""
    certutil = require_tool("certutil")
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    commands = [[certutil, "-N", "-d", f"sql:{nssdb}", "--empty-password"]]
    commands += [
        [certutil, "-A", "-d", f"sql:{nssdb}", "-n", f"test CA {i}", "-t", "C,,", "-i", str(ca)]
        for i, ca in enumerate(ca_files)
    ]
    for command in commands:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=CERTUTIL_TIMEOUT, check=False
        )
        assert result.returncode == 0, f"{' '.join(command)} failed: {result.stderr}"


def chromium_options(profile: Path) -> webdriver.ChromeOptions:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_experimental_option("prefs", CHROMIUM_PREFS)
    # Console messages, for driver.get_log("browser").
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return options


def _kill_group(pgid: int) -> None:
    """Whatever is left of one chromedriver process group (chromedriver and its browser)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, 0)
        os.killpg(pgid, signal.SIGKILL)


@contextlib.contextmanager
def chromium(ca_files: list[Path]) -> Iterator[WebDriver]:
    """A headless Chromium trusting `ca_files`, with a private HOME and profile; always quit."""
    require_tool(CHROMIUM)
    require_tool(CHROMEDRIVER)
    with tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True) as tmp:
        home = Path(tmp)
        trust_cas(home, ca_files)
        env = {
            **os.environ,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_CACHE_HOME": str(home / ".cache"),
        }
        service = Service(
            executable_path=CHROMEDRIVER,
            env=env,
            log_output=str(home / "chromedriver.log"),
            # selenium lets $SE_CHROMEDRIVER replace the path given here; read a variable
            # nobody sets instead, so that the Debian driver is the one that runs.
            driver_path_env_key="SUBMITGW_TESTS_NO_DRIVER_OVERRIDE",
            # Its own process group: the browser processes join it, so teardown can end
            # exactly them if chromedriver cannot.
            popen_kw={"start_new_session": True},
        )
        try:
            driver = webdriver.Chrome(options=chromium_options(home / "profile"), service=service)
        except Exception as err:
            log = home / "chromedriver.log"
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            if service.process is not None:
                _kill_group(service.process.pid)
            raise RuntimeError(f"Chromium did not start: {err}\n{tail}") from err
        pgid = cast(subprocess.Popen[bytes], service.process).pid
        try:
            cast(RemoteConnection, driver.command_executor).client_config.timeout = COMMAND_TIMEOUT
            driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT)
            driver.set_script_timeout(SCRIPT_TIMEOUT)
            driver.implicitly_wait(IMPLICIT_WAIT)
            yield driver
        finally:
            try:
                driver.quit()
            finally:
                _kill_group(pgid)


def absent(driver: WebDriver, by: str, value: str) -> bool:
    """True when no element matches, answered at once (without the implicit wait)."""
    driver.implicitly_wait(0)
    try:
        return not driver.find_elements(by, value)
    finally:
        driver.implicitly_wait(IMPLICIT_WAIT)


def console_errors(driver: WebDriver) -> list[dict[str, Any]]:
    """Console entries at level SEVERE (failed resources, CSP violations, script errors)
    logged since the last call."""
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def full_screenshot(driver: WebDriver, path: Path) -> Path:
    """A PNG of the whole page, not just the window (Chromium's DevTools capture)."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics["cssContentSize"]
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        },
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def describe(driver: WebDriver) -> str:
    """Where the browser is and what it shows, for the report of a failed test."""
    try:
        text = driver.execute_script("return document.body ? document.body.innerText : ''")
        return f"URL: {driver.current_url}\ntitle: {driver.title}\n\n{str(text)[:3000]}"
    except Exception as err:  # the browser may be what failed
        return f"(browser state unavailable: {err!r})"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed:
        for i, driver in enumerate(item.stash.get(_DRIVERS, [])):
            report.sections.append((f"browser {i} at failure", describe(driver)))
    return report


@pytest.fixture
def browser_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., WebDriver]]:
    """`browser_factory(ca_file, ...)`: a new headless Chromium trusting those CA files.
    Each is quit at teardown; a failed test's report shows what each browser displayed."""
    with contextlib.ExitStack() as stack:
        drivers = request.node.stash.setdefault(_DRIVERS, [])

        def make(*ca_files: Path) -> WebDriver:
            driver = stack.enter_context(chromium(list(ca_files)))
            drivers.append(driver)
            return driver

        yield make


@pytest.fixture
def browser(browser_factory: Callable[..., WebDriver], gateway_template: Path) -> WebDriver:
    """A headless Chromium trusting the CA of the test gateways (every `gateway_factory`
    setup is a copy of the template, CA included)."""
    return browser_factory(gateway_template / "ca" / "ca.crt")
