"""The site's wording of the shared refusals: HTTP status and text, one place."""

from __future__ import annotations

import time

import pytest

from submitgw.errors import AuthBusy, Kind, LoginLocked, Need, Refusal, TooManyLogins, Unavailable
from submitgw.web.replies import BUSY, web_error


@pytest.mark.parametrize(
    ("refusal", "status", "message"),
    [
        (AuthBusy(), 503, BUSY),
        (TooManyLogins(), 503, BUSY),
        (Unavailable(Need.LOGIN), 503, BUSY),
        (Unavailable(Need.ACCOUNT), 503, BUSY),
        (Unavailable(Need.ACCESS_RULES), 503, "Temporarily unavailable, try again later"),
        (Refusal(Kind.ACCESS_DENIED, text="Not from here"), 403, "Not from here"),
        (Refusal(Kind.ACCESS_DENIED, text=""), 403, "Access denied"),
    ],
)
def test_shared_refusals_as_http(refusal: Refusal, status: int, message: str) -> None:
    err = web_error(refusal)
    assert (err.status, err.message, err.retry_after) == (status, message, None)


def test_a_lockout_says_until_when_and_sets_retry_after() -> None:
    err = web_error(LoginLocked(time.time() + 120))
    assert err.status == 429
    assert err.message.startswith("Too many failed sign-ins; try again after ")
    assert err.message.endswith(" UTC")
    assert err.retry_after is not None and 100 <= err.retry_after <= 120
