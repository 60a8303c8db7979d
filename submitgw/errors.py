"""One exception tree: each rejection carries the SMTP reply the client will see.

Decisions raise these where they are made (auth, policy, relay); the server turns
them into replies in one place, so no Python text ever reaches a client.
"""

from __future__ import annotations


class SmtpReply(Exception):
    """An SMTP reply (RFC 5321 code + RFC 3463 enhanced status + text).

    `close` asks the session to end after the reply (421-class answers).
    """

    def __init__(self, code: int, status: str, text: str, *, close: bool = False) -> None:
        super().__init__(f"{code} {status} {text}")
        self.code = code
        self.status = status
        self.text = text
        self.close = close

    @property
    def line(self) -> str:
        return f"{self.code} {self.status} {self.text}"

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500


class AuthFailed(SmtpReply):
    """Any failed login: one reply for every cause, so nothing is revealed."""

    def __init__(self) -> None:
        super().__init__(535, "5.7.8", "Authentication credentials invalid")


class AuthBusy(SmtpReply):
    def __init__(self) -> None:
        super().__init__(454, "4.7.0", "Too many logins in progress, try again later")


class RelayError(SmtpReply):
    """The smarthost could not be reached or did not answer in time."""


def smarthost_unavailable(detail: str = "") -> RelayError:
    text = "Smarthost unavailable, try again later"
    return RelayError(451, "4.4.1", f"{text}{': ' + detail if detail else ''}")
