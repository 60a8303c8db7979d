"""The limit decisions on their own: windows and buckets, quotas, reset times, delays, locks."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from submitgw.config import LimitsConfig
from submitgw.errors import LoginLocked
from submitgw.rules.limits import (
    Override,
    Window,
    account_key,
    client_key,
    has_room,
    ip_key,
    keys_to_lock,
    limit_refusal,
    login_delay,
    login_name,
    per_window,
    quota,
    reset_time,
    user_key,
)
from submitgw.smtp.replies import render

CFG = LimitsConfig()
NOW = 1_800_000_000.0  # a fixed moment; the decisions take the time as an argument


# --- windows --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "width", "steps"), [(3600, 60, 60), (900, 15, 60), (5, 1, 5), (90, 2, 45)]
)
def test_window_uses_about_sixty_buckets(seconds: int, width: int, steps: int) -> None:
    window = Window(seconds)
    assert (window.width, window.steps) == (width, steps)


@pytest.mark.parametrize("seconds", [3600, 900, 5, 90, 61])
def test_every_event_counts_for_a_whole_window_and_hardly_more(seconds: int) -> None:
    window = Window(seconds)
    for offset in range(0, 2 * window.width + 1):
        t = NOW + offset * 0.37
        bucket = window.bucket(t)
        assert bucket % window.width == 0 and bucket <= t < bucket + window.width
        assert window.first_counted(t) <= bucket
        assert window.first_counted(t + seconds - 0.001) <= bucket, "left the window too early"
        longest = window.steps * window.width + window.width
        assert longest == seconds + window.width or seconds % window.width
        assert longest < seconds + 2 * window.width
        assert window.first_counted(t + longest) > bucket, "stayed too long"
        assert seconds <= window.expires(bucket) - t <= longest
        assert window.first_counted(window.expires(bucket)) > bucket
        assert window.first_counted(window.expires(bucket) - 0.001) <= bucket


# --- keys -----------------------------------------------------------------------------------


def test_ipv4_clients_are_counted_per_address() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert ip_key("192.0.2.7") == "ip:192.0.2.7"


def test_ipv6_clients_are_counted_per_64() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:2:ffff::9") == client_key("2001:db8:1:2::1")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")


def test_login_names_are_counted_case_insensitively_whether_or_not_they_are_addresses() -> None:
    assert account_key(b" Alice@Example.ORG ") == account_key("alice@example.org")
    assert account_key(b"ADMIN") == "acct:admin"
    assert account_key(b"\xff\xfe") == account_key(b"\xff\xfe")


def test_very_long_login_names_are_hashed_to_fit_the_key_column() -> None:
    name = login_name(b"x" * 5000)
    assert name.startswith("sha256:") and len(name) < 100
    assert login_name(b"x" * 5000) != login_name(b"x" * 5001)


# --- sending quotas -------------------------------------------------------------------------


def used(user: tuple[int, int] = (0, 0), ip: tuple[int, int] = (0, 0)) -> dict:
    return {user_key("alice@example.org"): user, ip_key("192.0.2.7"): ip}


def test_defaults_apply_without_an_override() -> None:
    q = quota(CFG, "alice@example.org", "192.0.2.7", used(), None)
    user, ip = q.counts
    assert (user.max_messages, user.max_recipients) == (200, 1000)
    assert (ip.max_messages, ip.max_recipients) == (1000, 5000)


def test_an_override_beats_the_default_and_none_keeps_it() -> None:
    q = quota(CFG, "alice@example.org", "192.0.2.7", used(), Override(messages=5000))
    assert (q.counts[0].max_messages, q.counts[0].max_recipients) == (5000, 1000)


def test_message_limit_is_reached_at_the_limit_not_before() -> None:
    below = quota(CFG, "alice@example.org", "192.0.2.7", used(user=(199, 199)), None)
    at = quota(CFG, "alice@example.org", "192.0.2.7", used(user=(200, 200)), None)
    assert below.exceeded(messages=1, recipients=1) is None
    over = at.exceeded(messages=1, recipients=1)
    assert over is not None
    assert (over.counted.scope, over.measure) == ("user", "messages")
    assert (over.limit, over.excess) == (200, 1)


def test_recipient_limit_counts_the_recipients_of_the_open_transaction() -> None:
    q = quota(CFG, "alice@example.org", "192.0.2.7", used(user=(3, 995)), None)
    assert q.exceeded(recipients=5) is None
    over = q.exceeded(recipients=6)
    assert over is not None and (over.measure, over.excess) == ("recipients", 1)


def test_the_client_limit_applies_to_every_user_of_the_address() -> None:
    q = quota(CFG, "bob@example.org", "192.0.2.7", used(ip=(1000, 1000)), None)
    over = q.exceeded(messages=1, recipients=1)
    assert over is not None
    assert (over.counted.scope, over.counted.who) == ("ip", "client 192.0.2.7")


def test_a_zero_override_refuses_everything_and_never_resets() -> None:
    q = quota(CFG, "alice@example.org", "192.0.2.7", used(), Override(messages=0))
    over = q.exceeded(messages=1, recipients=1)
    assert over is not None
    assert reset_time(Window(3600), [], over.excess, NOW) is None


def test_reset_is_when_enough_old_buckets_have_left_the_window() -> None:
    window = Window(3600)
    start = window.bucket(NOW)
    buckets = [(start - 60, 2), (start - 600, 1), (start - 1200, 3)]
    # One unit: the oldest bucket frees three.
    assert reset_time(window, buckets, 1, NOW) == window.expires(start - 1200)
    # Four units: the oldest two buckets.
    assert reset_time(window, buckets, 4, NOW) == window.expires(start - 600)
    assert reset_time(window, buckets, 7, NOW) is None


def test_reply_names_the_limit_the_holder_and_the_reset_time() -> None:
    window = Window(3600)
    q = quota(CFG, "alice@example.org", "192.0.2.7", used(user=(200, 200)), None)
    over = q.exceeded(messages=1, recipients=1)
    assert over is not None
    reply = render(limit_refusal(over, window, int(NOW) + 754, NOW))
    assert (reply.code, reply.status) == (450, "4.7.1")
    expected = "Message limit reached for alice@example.org: 200 messages per hour"
    assert reply.text.startswith(expected)
    stamp = re.search(r"resets at (\S+ \S+) UTC \(in (\d+) s\)", reply.text)
    assert stamp is not None
    when = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    assert when.timestamp() == int(NOW) + 754 and stamp.group(2) == "754"
    assert reply.line.isascii() and "\r" not in reply.line and "\n" not in reply.line


def test_reply_does_not_put_a_non_ascii_login_on_the_wire() -> None:
    q = quota(CFG, "jösé@example.org", "192.0.2.7", {user_key("jösé@example.org"): (200, 1)}, None)
    over = q.exceeded(messages=1, recipients=1)
    assert over is not None
    assert render(limit_refusal(over, Window(3600), None, NOW)).line.isascii()


def test_recipient_reply_without_a_reset_says_to_split_the_message() -> None:
    q = quota(CFG, "alice@example.org", "192.0.2.7", used(), Override(recipients=2))
    over = q.exceeded(recipients=3)
    assert over is not None
    text = render(limit_refusal(over, Window(3600), None, NOW)).text
    assert text.startswith("Recipient limit reached for alice@example.org: 2 recipients per hour")
    assert "later message" in text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(3600, "per hour"), (7200, "per 2 hours"), (900, "per 15 minutes"), (5, "per 5 seconds")],
)
def test_window_wording(seconds: int, text: str) -> None:
    assert per_window(seconds) == text


# --- logins ---------------------------------------------------------------------------------


def test_no_delay_before_the_first_failure() -> None:
    assert login_delay(0, 0, CFG) == 0.0


def test_delay_doubles_with_each_account_failure_up_to_the_cap() -> None:
    delays = [login_delay(n, 0, CFG) for n in range(1, 8)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(delays) == CFG.auth_max_delay == delays[-1]


def test_client_failures_escalate_at_the_same_pace_relative_to_their_threshold() -> None:
    per_step = CFG.auth_failures_per_ip // CFG.auth_failures_per_account
    assert login_delay(0, per_step - 1, CFG) == 0.0
    assert login_delay(0, per_step, CFG) == login_delay(1, 0, CFG)
    assert login_delay(0, 2 * per_step, CFG) == login_delay(2, 0, CFG)


def test_thresholds_lock_the_account_and_the_client_separately() -> None:
    assert keys_to_lock(4, 19, CFG) == ()
    assert keys_to_lock(5, 1, CFG) == ("account",)
    assert keys_to_lock(1, 20, CFG) == ("ip",)
    assert keys_to_lock(5, 20, CFG) == ("account", "ip")


def test_lockout_reply_is_454_and_does_not_say_whose_lock_it_is() -> None:
    reply = render(LoginLocked(NOW + 60))
    assert (reply.code, reply.status) == (454, "4.7.0")
    assert "account" not in reply.text.lower() and "user" not in reply.text.lower()
    assert reply.line.isascii()


@pytest.mark.parametrize(
    ("limit", "used", "room"),
    [(200, 180, True), (200, 181, False), (30, 20, True), (30, 21, False), (5, 0, False)],
)
def test_a_reading_has_room_while_a_tenth_and_at_least_10_are_left(
    limit: int, used: int, room: bool
) -> None:
    cfg = LimitsConfig(messages_per_user=limit)
    assert (
        has_room(
            quota(cfg, "a@example.org", "192.0.2.1", {user_key("a@example.org"): (used, 0)}, None)
        )
        is room
    )
    client = LimitsConfig(recipients_per_ip=limit)
    used_by_client = {ip_key("192.0.2.1"): (0, used)}
    assert has_room(quota(client, "a@example.org", "192.0.2.1", used_by_client, None)) is room
