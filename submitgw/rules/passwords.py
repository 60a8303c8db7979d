"""Password rules and app-password format: pure functions, no I/O.

The common-password list is zxcvbn's (30,000 passwords from leaked sets),
packaged and maintained upstream rather than typed in here. Because every
password must be at least 12 characters long, a list entry is also refused
when it is merely decorated: upper case, spaces, or digits and punctuation
stuck on either end ("Password123456!" is "password").
"""

from __future__ import annotations

import functools
import re
import secrets
import string
import unicodedata
from datetime import UTC, datetime, timedelta

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from submitgw.config import PasswordsConfig

# 32 symbols without look-alikes (no l, o, 0, 1): 5 bits each, 20 of them = 100 bits.
APP_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"
APP_GROUPS = 5
APP_GROUP_LENGTH = 4
_APP_PASSWORD = re.compile(rf"[{APP_ALPHABET}]{{{APP_GROUPS * APP_GROUP_LENGTH}}}")
_DECORATION = string.digits + string.punctuation + " "


class PasswordRejected(ValueError):
    """A new password breaks a rule; the message says which, for the user to read."""


@functools.cache
def common_passwords() -> frozenset[str]:
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"])


def _common_forms(password: str) -> set[str]:
    lowered = unicodedata.normalize("NFKC", password).casefold()
    forms = {lowered, "".join(lowered.split()), lowered.strip(_DECORATION)}
    return {form for form in forms if len(form) >= 4}


def check_rules(password: str, email: str, cfg: PasswordsConfig) -> None:
    """The cheap rules, in the order a user fixes them; raises PasswordRejected."""
    if len(password) < cfg.min_length:
        raise PasswordRejected(f"The password must be at least {cfg.min_length} characters long.")
    if len(password) > cfg.max_length:
        raise PasswordRejected(f"The password must be at most {cfg.max_length} characters long.")
    if any(unicodedata.category(c) == "Cc" for c in password):
        raise PasswordRejected("The password must not contain control characters.")
    local = email.rpartition("@")[0].casefold()
    if len(local) >= 3 and local in password.casefold():
        raise PasswordRejected("The password must not contain your user name.")
    if _common_forms(password) & common_passwords():
        raise PasswordRejected("This is a commonly used password; choose another.")


def reused(password: str, recent_hashes: list[str], hasher: argon2.PasswordHasher) -> bool:
    """Whether `password` is one of the given hashes (one argon2 verify each)."""
    for stored in recent_hashes:
        try:
            if hasher.verify(stored, password):
                return True
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            continue
    return False


def check_new_password(
    password: str,
    email: str,
    cfg: PasswordsConfig,
    recent_hashes: list[str],
    hasher: argon2.PasswordHasher,
) -> None:
    """Every rule; the history (argon2 per entry) last, once the cheap ones passed."""
    check_rules(password, email, cfg)
    if reused(password, recent_hashes, hasher):
        raise PasswordRejected(f"The password must differ from your last {cfg.history} passwords.")


def is_expired(
    changed_at: datetime | None, forced: bool, cfg: PasswordsConfig, now: datetime | None = None
) -> bool:
    if forced:
        return True
    if cfg.max_age_days <= 0 or changed_at is None:
        return False
    now = now or datetime.now(UTC)
    return now - changed_at > timedelta(days=cfg.max_age_days)


def new_app_password() -> str:
    """`xxxx-xxxx-xxxx-xxxx-xxxx`: 100 random bits, easy to type on a phone."""
    raw = "".join(secrets.choice(APP_ALPHABET) for _ in range(APP_GROUPS * APP_GROUP_LENGTH))
    return "-".join(raw[i : i + APP_GROUP_LENGTH] for i in range(0, len(raw), APP_GROUP_LENGTH))


def app_password_form(password: bytes) -> tuple[str, str] | None:
    """(selector, canonical text) if `password` is shaped like an app password, else None.

    Dashes, spaces and case are forgiven, so a password copied with or without
    its separators works; the selector (first group) is stored in the clear and
    picks the single hash a login checks.
    """
    try:
        text = password.decode("ascii")
    except UnicodeDecodeError:
        return None
    compact = text.replace("-", "").replace(" ", "").lower()
    if not _APP_PASSWORD.fullmatch(compact):
        return None
    canonical = "-".join(
        compact[i : i + APP_GROUP_LENGTH] for i in range(0, len(compact), APP_GROUP_LENGTH)
    )
    return compact[:APP_GROUP_LENGTH], canonical


def check_label(label: str) -> str:
    """An app-password label, trimmed; raises ValueError with a message for the user."""
    label = " ".join(label.split())
    if not label:
        raise ValueError("Give the app password a label, such as “Thunderbird laptop”.")
    if len(label) > 100:
        raise ValueError("The label must be at most 100 characters long.")
    if any(unicodedata.category(c).startswith("C") for c in label):
        raise ValueError("The label must not contain control characters.")
    return label
