"""The self-service site in a real browser: Debian's headless Chromium against a running gateway.

One walk through what a user does (sign in, change the password, create and revoke an app
password, sign out), checking after each step that SMTP AUTH on the same gateway agrees at
once, and that the pages render cleanly: stylesheet applied, nothing in the console.
"""

from __future__ import annotations

import re
import smtplib
import time
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

import pki
from submitgw import config as config_mod
from submitgw.rules.passwords import APP_ALPHABET, PasswordRejected, check_rules
from tests.support.browser import absent, console_errors, full_screenshot
from tests.support.gateway import PASSWORD, USER, GatewayProcess

pytestmark = pytest.mark.slow

NEW_PASSWORD = "plum orchard lantern 42"
TOO_SHORT = "short one"
APP_PASSWORD = re.compile(rf"[{APP_ALPHABET}]{{4}}(-[{APP_ALPHABET}]{{4}}){{4}}")
COOKIE = "__Host-submitgw"
# The whole walk takes seconds; far more means something waits on a timeout.
TIME_BUDGET = 90.0
# The deliberate failures must not slow the walk down (lockouts have tests of their own).
QUIET_AUTH = {"auth_delay": 0.01, "auth_max_delay": 0.02}


def text_of(driver: WebDriver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text.strip()


def fill(driver: WebDriver, values: dict[str, str]) -> None:
    for element_id, value in values.items():
        field = driver.find_element(By.ID, element_id)
        field.clear()
        field.send_keys(value)


def submit(driver: WebDriver, button: str | WebElement) -> None:
    """Click a submit button (or the one with this id) and wait for the next page (a POST,
    then the redirect)."""
    if isinstance(button, str):
        button = driver.find_element(By.ID, button)
    page = driver.find_element(By.TAG_NAME, "html")
    button.click()
    # A click returns once the navigation has committed, but be sure the old page is gone.
    for _ in range(100):
        try:
            page.is_enabled()
        except StaleElementReferenceException:  # the new page is there
            return
        except WebDriverException as exc:
            # Caught mid-navigation, Chromium may say the same in other words.
            if "does not belong to the document" in str(exc):
                return
            raise
        time.sleep(0.05)
    raise AssertionError(f"clicking {button.text!r} did not lead to a new page")


def sign_in(driver: WebDriver, email: str, password: str) -> None:
    fill(driver, {"email": email, "password": password})
    submit(driver, "login-submit")


def smtp_login(gw: GatewayProcess, password: str) -> None:
    """SMTP AUTH on the gateway's STARTTLS port; raises SMTPAuthenticationError if refused."""
    client = gw.smtp(login=False)
    try:
        client.login(USER, password)
    finally:
        client.quit()


def smtp_refused(gw: GatewayProcess, password: str) -> int:
    with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        smtp_login(gw, password)
    return refused.value.smtp_code


def computed(driver: WebDriver, css: str, prop: str) -> str:
    element = driver.find_element(By.CSS_SELECTOR, css)
    return str(driver.execute_script(f"return getComputedStyle(arguments[0]).{prop}", element))


def assert_styled(driver: WebDriver) -> None:
    """/style.css was applied: without it a page body is transparent with 8px margins and a
    button is grey."""
    assert computed(driver, "body", "backgroundColor") not in ("rgba(0, 0, 0, 0)", "transparent")
    assert computed(driver, "body", "margin") == "0px"
    assert computed(driver, "button[type=submit]", "backgroundColor") != "rgb(239, 239, 239)"


def session_cookie(driver: WebDriver) -> dict[str, Any] | None:
    return driver.get_cookie(COOKIE)


def test_password_and_app_password_lifecycle_in_chromium(
    gateway_factory: Any, browser: WebDriver, tmp_path: Path
) -> None:
    started = time.monotonic()
    gw = gateway_factory({"limits": QUIET_AUTH}, selfservice=True)
    driver = browser
    console: list[dict[str, Any]] = []

    # Signed out: the sign-in form, styled, over TLS the browser verified.
    driver.get(gw.web_url)
    assert driver.current_url == gw.web_url
    assert driver.find_element(By.ID, "login").is_displayed()
    assert driver.execute_script("return window.isSecureContext") is True
    assert_styled(driver)
    assert console_errors(driver) == []
    full_screenshot(driver, tmp_path / "sign-in.png")

    # A wrong password and an unknown user get the same generic error, and no session.
    sign_in(driver, USER, "not the password at all")
    wrong = text_of(driver, "error")
    assert wrong
    sign_in(driver, "nobody@example.org", "not the password at all")
    assert text_of(driver, "error") == wrong
    assert absent(driver, By.ID, "user")
    assert session_cookie(driver) is None
    # The refusal is a page asking again, not an HTTP error: the console stays clean.
    assert console_errors(driver) == []

    # The right password: the account page, and a __Host- cookie with every flag.
    sign_in(driver, USER, PASSWORD)
    assert text_of(driver, "user") == USER
    assert absent(driver, By.ID, "error")
    cookie = session_cookie(driver)
    assert cookie is not None, driver.get_cookies()
    assert cookie["secure"] is True
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/"
    assert not cookie["domain"].startswith(".")  # host-only, as __Host- requires
    assert_styled(driver)
    console += console_errors(driver)

    # Rotation: a policy violation shows the rule's own message; a mismatch is refused.
    try:
        check_rules(TOO_SHORT, USER, config_mod.load(gw.config).passwords)
    except PasswordRejected as err:
        rule = str(err)
    else:
        raise AssertionError(f"{TOO_SHORT!r} should break the length rule")
    fill(
        driver,
        {"current_password": PASSWORD, "new_password": TOO_SHORT, "new_password_again": TOO_SHORT},
    )
    submit(driver, "password-submit")
    assert text_of(driver, "error") == rule
    fill(
        driver,
        {
            "current_password": PASSWORD,
            "new_password": NEW_PASSWORD,
            "new_password_again": NEW_PASSWORD + "!",
        },
    )
    submit(driver, "password-submit")
    assert text_of(driver, "error")
    assert absent(driver, By.ID, "notice")
    smtp_login(gw, PASSWORD)  # neither attempt changed anything

    fill(
        driver,
        {
            "current_password": PASSWORD,
            "new_password": NEW_PASSWORD,
            "new_password_again": NEW_PASSWORD,
        },
    )
    submit(driver, "password-submit")
    assert absent(driver, By.ID, "error"), text_of(driver, "error")
    assert text_of(driver, "notice")
    assert text_of(driver, "user") == USER  # this session survives its own change
    # At once, on the running gateway: the old password refused, the new one accepted.
    assert smtp_refused(gw, PASSWORD) == 535
    smtp_login(gw, NEW_PASSWORD)
    console += console_errors(driver)

    # An app password: shown once, listed, usable for SMTP AUTH.
    fill(driver, {"label": "Thunderbird laptop"})
    submit(driver, "app-password-submit")
    secret = text_of(driver, "new-app-password")
    assert APP_PASSWORD.fullmatch(secret), secret
    rows = driver.find_elements(By.CSS_SELECTOR, "#app-passwords tr[data-id]")
    assert [r.find_element(By.TAG_NAME, "td").text for r in rows] == ["Thunderbird laptop"]
    app_id = rows[0].get_attribute("data-id")
    assert_styled(driver)
    full_screenshot(driver, tmp_path / "account.png")
    driver.refresh()
    assert absent(driver, By.ID, "new-app-password")
    assert secret not in driver.page_source
    smtp_login(gw, secret)
    driver.refresh()
    row = driver.find_element(By.CSS_SELECTOR, f'#app-passwords tr[data-id="{app_id}"]')
    last_used = row.find_elements(By.TAG_NAME, "td")[2].text
    assert last_used and last_used != "never", row.text
    console += console_errors(driver)

    # Revocation: the row goes, and SMTP AUTH with that password fails at once.
    submit(driver, row.find_element(By.CSS_SELECTOR, "button.revoke"))
    assert absent(driver, By.CSS_SELECTOR, f'#app-passwords tr[data-id="{app_id}"]')
    assert "Thunderbird laptop" in text_of(driver, "notice")
    assert smtp_refused(gw, secret) == 535
    smtp_login(gw, NEW_PASSWORD)
    console += console_errors(driver)

    # Sign out: back to the sign-in form, and the old cookie no longer opens the account.
    submit(driver, "logout-submit")
    assert driver.find_element(By.ID, "login").is_displayed()
    assert absent(driver, By.ID, "user")
    driver.get(gw.web_url)
    assert absent(driver, By.ID, "user")
    console += console_errors(driver)

    assert console == [], console
    assert time.monotonic() - started < TIME_BUDGET


def test_chromium_refuses_the_site_without_the_gateway_ca(
    gateway_factory: Any, browser_factory: Any, tmp_path: Path
) -> None:
    """The browser trusts exactly the CA it was given (no blanket certificate bypass): with
    another CA, the site's certificate gets Chromium's certificate error page."""
    other_ca = pki.CA.create("Some other CA")
    pki.write_certificate(tmp_path / "other-ca.crt", other_ca.cert)
    gw = gateway_factory({"limits": QUIET_AUTH}, selfservice=True)
    driver = browser_factory(tmp_path / "other-ca.crt")
    driver.get(gw.web_url)
    assert absent(driver, By.ID, "login")
    assert "ERR_CERT_AUTHORITY_INVALID" in driver.page_source
