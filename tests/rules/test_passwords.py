"""The password rules and the app-password format, as pure functions.

Rules proven here: each rule of the policy refuses with a message that names
it (length, user name, common passwords also when decorated, control
characters, reuse); a good passphrase passes; app passwords carry 100 random
bits in an alphabet without look-alikes and are recognised however they were
copied; labels are one clean line; expiry starts strictly after max_age_days.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from zxcvbn.frequency_lists import FREQUENCY_LISTS

from submitgw.config import AuthConfig, PasswordsConfig
from submitgw.rules.passwords import (
    APP_ALPHABET,
    PasswordRejected,
    app_password_form,
    check_label,
    check_new_password,
    check_rules,
    common_passwords,
    is_expired,
    new_app_password,
)
from submitgw.services.authn import make_hasher

CFG = PasswordsConfig()
ALICE = "alice@example.org"
GOOD = "tawny owl at dusk"
CHEAP = make_hasher(AuthConfig(argon2_time_cost=1, argon2_memory_kib=8192, argon2_parallelism=1))
APP_SHAPE = re.compile(r"[a-z2-9]{4}(-[a-z2-9]{4}){4}")


def rejection(password: str, email: str = ALICE, cfg: PasswordsConfig = CFG) -> str:
    with pytest.raises(PasswordRejected) as info:
        check_rules(password, email, cfg)
    return str(info.value)


def most_common_long_password() -> str:
    """The most frequent entry of the packaged list that is long enough to pass the length rule."""
    return next(p for p in FREQUENCY_LISTS["passwords"] if len(p) >= CFG.min_length)


# --- the rules -----------------------------------------------------------------------------


def test_a_good_passphrase_passes_every_rule() -> None:
    check_rules(GOOD, ALICE, CFG)
    check_new_password(GOOD, ALICE, CFG, [CHEAP.hash("something else entirely")], CHEAP)


def test_too_short_is_refused_and_the_minimum_is_allowed() -> None:
    assert rejection("owl at dusk") == "The password must be at least 12 characters long."
    assert len("owl at dusk!") == 12
    check_rules("owl at dusk!", ALICE, CFG)


def test_the_minimum_follows_the_config() -> None:
    strict = PasswordsConfig(min_length=20)

    assert rejection(GOOD, cfg=strict) == "The password must be at least 20 characters long."


def test_too_long_is_refused_and_the_maximum_is_allowed() -> None:
    longest = ("tawny owl " * 103)[:1024]

    check_rules(longest, ALICE, CFG)
    assert rejection(longest + "x") == "The password must be at most 1024 characters long."


@pytest.mark.parametrize("control", ["\t", "\x00", "\x1b", "\x7f", "\u0085"])
def test_control_characters_are_refused(control: str) -> None:
    message = rejection(f"tawny owl{control}at dusk")

    assert message == "The password must not contain control characters."


@pytest.mark.parametrize(
    "password", ["alice in the owl tree", "my ALICE owl at dusk", "xAlIcEx owl dusk"]
)
def test_the_local_part_is_refused_in_any_case(password: str) -> None:
    assert rejection(password) == "The password must not contain your user name."


def test_a_local_part_shorter_than_three_is_not_a_rule() -> None:
    """`al@…` would otherwise forbid every password with "al" in it."""
    check_rules("always a tawny owl", "al@example.org", CFG)
    assert rejection("always a tawny owl", "always@example.org").endswith("your user name.")


def test_a_common_password_from_the_packaged_list_is_refused() -> None:
    common = most_common_long_password()
    assert common in common_passwords()

    assert rejection(common) == "This is a commonly used password; choose another."
    assert rejection(common.upper()) == "This is a commonly used password; choose another."


@pytest.mark.parametrize(
    "decorated",
    ["Password123456", "Password123456!", "  password  2024", "!!Dragon!!2024", "DRAGON 2024 ##"],
)
def test_a_decorated_common_password_is_refused(decorated: str) -> None:
    """Case, spaces and digits or punctuation on either end do not make "password" rare."""
    assert len(decorated) >= CFG.min_length
    assert rejection(decorated) == "This is a commonly used password; choose another."


def test_rules_are_reported_in_the_order_a_user_fixes_them() -> None:
    """A short password is told it is short first, whatever else is wrong with it."""
    assert rejection("alice") == "The password must be at least 12 characters long."
    assert rejection("alice\x00password") == "The password must not contain control characters."


def test_reuse_of_a_recent_password_is_refused() -> None:
    recent = [CHEAP.hash(p) for p in ("the newest of them all", GOOD, "the oldest one kept")]

    with pytest.raises(PasswordRejected) as info:
        check_new_password(GOOD, ALICE, CFG, recent, CHEAP)

    assert str(info.value) == "The password must differ from your last 5 passwords."
    check_new_password("a brand new sentence", ALICE, CFG, recent, CHEAP)


def test_reuse_is_checked_only_once_the_cheap_rules_pass() -> None:
    """No argon2 work for a password that a cheap rule refuses anyway."""
    with pytest.raises(PasswordRejected, match="at least 12"):
        check_new_password("short", ALICE, CFG, ["not an argon2 hash"], CHEAP)


# --- expiry --------------------------------------------------------------------------------

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
QUARTER = PasswordsConfig(max_age_days=90)


def test_no_maximum_age_never_expires() -> None:
    assert not is_expired(NOW - timedelta(days=10_000), False, CFG, NOW)


def test_expiry_starts_strictly_after_max_age_days() -> None:
    at_limit = NOW - timedelta(days=90)

    assert not is_expired(at_limit, False, QUARTER, NOW)
    assert is_expired(at_limit - timedelta(seconds=1), False, QUARTER, NOW)
    assert not is_expired(NOW, False, QUARTER, NOW)


def test_forced_expiry_wins_over_age() -> None:
    assert is_expired(NOW, True, CFG, NOW)
    assert is_expired(None, True, QUARTER, NOW)


def test_a_password_of_unknown_age_does_not_expire_by_age() -> None:
    """Without a recorded change date there is no age to judge: no lockout by guesswork."""
    assert not is_expired(None, False, QUARTER, NOW)


# --- app passwords -------------------------------------------------------------------------


def test_new_app_passwords_have_the_documented_shape_and_alphabet() -> None:
    drawn = [new_app_password() for _ in range(200)]

    for secret in drawn:
        assert APP_SHAPE.fullmatch(secret), secret
        assert not set(secret) & set("lo01"), secret
    assert len(set(drawn)) == len(drawn)
    assert len(APP_ALPHABET) == 32 and len(set(APP_ALPHABET)) == 32, "5 bits a symbol"
    used = set("".join(drawn).replace("-", ""))
    assert used == set(APP_ALPHABET), "every symbol is drawn"


def test_a_new_app_password_passes_the_account_rules_too() -> None:
    """An app password would be accepted as an account password: no rule is weakened."""
    check_rules(new_app_password(), ALICE, CFG)


@pytest.mark.parametrize(
    "typed",
    [
        "abcd-efgh-ijkm-npqr-stuv",
        "ABCD-EFGH-IJKM-NPQR-STUV",
        "abcdefghijkmnpqrstuv",
        "abcd efgh ijkm npqr stuv",
        " abcd-efgh ijkm-npqrstuv ",
    ],
)
def test_an_app_password_is_recognised_however_it_was_copied(typed: str) -> None:
    assert app_password_form(typed.encode()) == ("abcd", "abcd-efgh-ijkm-npqr-stuv")


@pytest.mark.parametrize(
    "typed",
    [
        b"abcd-efgh-ijkm-npqr-stu",
        b"abcd-efgh-ijkm-npqr-stuvw",
        b"abcd-efgh-ijkm-npqr-stuo",
        b"abcd-efgh-ijkm-npqr-stu1",
        b"abcd-efgh-ijkm-npqr-stu\xc3\xa4",
        b"tawny owl at dusk",
        b"",
    ],
)
def test_anything_else_is_not_an_app_password(typed: bytes) -> None:
    assert app_password_form(typed) is None


# --- labels --------------------------------------------------------------------------------


def test_a_label_is_trimmed_to_one_line() -> None:
    assert check_label("  Thunderbird   laptop ") == "Thunderbird laptop"
    assert check_label("Thunderbird\nlaptop\r\n") == "Thunderbird laptop"
    assert check_label("Téléphone ☎") == "Téléphone ☎"


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("", "Give the app password a label"),
        (" \t\n", "Give the app password a label"),
        ("x" * 101, "at most 100 characters"),
        ("phone\x00", "control characters"),
        ("phone\x1b[31m", "control characters"),
        ("phone\u200b", "control characters"),
    ],
)
def test_bad_labels_are_refused_with_a_message(label: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        check_label(label)


def test_a_label_of_exactly_100_characters_is_allowed() -> None:
    assert check_label("x" * 100) == "x" * 100
