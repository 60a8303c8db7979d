"""The self-service site's wording of refusals: each `Kind` it can meet as HTTP status + text.

The site's own refusals (a form field missing, a bad CSRF token) are raised as
`WebError` where they are decided; refusals from the shared services (logins,
lockouts, storage failures, the access rules) arrive as `Refusal` and are
worded here, once, as `smtp.replies` words them for SMTP.
"""

from __future__ import annotations

import time

from submitgw.errors import Kind, LoginLocked, Need, Refusal
from submitgw.rules.limits import format_time

BUSY = "The server is busy; try again shortly"
GENERIC_LOGIN_ERROR = "Invalid email or password"


class WebError(Exception):
    """A refusal with the HTTP status and the text the user sees."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


WORDING: dict[Kind, tuple[int, str]] = {
    Kind.AUTH_FAILED: (401, GENERIC_LOGIN_ERROR),
    Kind.AUTH_BUSY: (503, BUSY),
    Kind.TOO_MANY_LOGINS: (503, BUSY),
    Kind.UNAVAILABLE: (503, BUSY),
    Kind.LOGIN_LOCKED: (429, "Too many failed sign-ins; try again after {until}"),
    Kind.ACCESS_DENIED: (403, "{text}"),
}

# The access rules are read before the site is even reached: no "busy" to speak of.
UNAVAILABLE: dict[str, tuple[int, str]] = {
    Need.ACCESS_RULES: (503, "Temporarily unavailable, try again later")
}


def web_error(refusal: Refusal) -> WebError:
    """The answer to `refusal`; a kind without wording here is the server being busy."""
    params = dict(refusal.params)
    retry_after = None
    status, text = WORDING.get(refusal.kind, (503, BUSY))
    if refusal.kind is Kind.UNAVAILABLE:
        status, text = UNAVAILABLE.get(str(params.get("what")), (status, text))
    elif isinstance(refusal, LoginLocked):
        until = refusal.until
        params["until"] = format_time(until)
        retry_after = max(1, int(until - time.time()))
    elif refusal.kind is Kind.ACCESS_DENIED:
        params["text"] = params.get("text") or "Access denied"
    return WebError(status, text.format_map(params), retry_after=retry_after)
