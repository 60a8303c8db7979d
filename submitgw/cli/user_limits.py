"""`submitgw user set-limit | limits | unlock`: a user's sending limits and login lockout.

Commands of the `user` group kept in their own module; `user.register` attaches them.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from submitgw.cli.context import COUNT_MAX, Context, email_argument, pass_context
from submitgw.cli.services import admin_actor
from submitgw.rules.limits import Window, account_key, login_name, per_window, user_key

DEFAULT = "default"


class LimitValue(click.ParamType[int | str]):
    """A whole number 0 to COUNT_MAX, or the word `default`: back to the configured value."""

    name = "N|default"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None:
            return value
        text = str(value).strip().lower()
        if text == DEFAULT:
            return DEFAULT
        # isdigit() also takes other scripts' digits and superscripts; int() does not.
        if text.isascii() and text.isdigit() and int(text) <= COUNT_MAX:
            return int(text)
        self.fail(f"{value!r} is not a whole number from 0 to {COUNT_MAX} or 'default'", param, ctx)


def _limit_line(what: str, used: int, limit: int, own: int | None, window: int) -> str:
    source = "set for this user" if own is not None else "default"
    return f"{what}: {used} of {limit} {per_window(window)} ({source})"


@click.command("set-limit")
@click.argument("email")
@click.option(
    "--messages-per-hour",
    "messages",
    type=LimitValue(),
    help="Messages the user may send per rate window (0: none; 'default': the configured).",
)
@click.option(
    "--recipients-per-hour",
    "recipients",
    type=LimitValue(),
    help="Recipients the user may send to per rate window ('default': the configured).",
)
@pass_context
def set_limit(ctx: Context, email: str, messages: Any, recipients: Any) -> None:
    """Give EMAIL its own sending limits, beating [limits] messages/recipients_per_user.

    Effective from the user's next MAIL FROM on every gateway. "Hour" is the
    rate window, [limits] rate_window (3600 seconds unless changed).
    """
    if messages is None and recipients is None:
        raise click.UsageError("give --messages-per-hour and/or --recipients-per-hour")
    address = email_argument(email)
    changes = {
        name: None if value == DEFAULT else value
        for name, value in (("messages", messages), ("recipients", recipients))
        if value is not None
    }
    with ctx.services() as s:
        own = s.counters.set_override(address, **changes)
        detail = " ".join(
            f"{name} {DEFAULT if value is None else value}" for name, value in changes.items()
        )
        s.accounts.trail(address, "limits-changed", admin_actor(), detail)
    cfg = ctx.config.limits
    window = per_window(cfg.rate_window)
    for what, value, default in (
        ("messages", own.messages, cfg.messages_per_user),
        ("recipients", own.recipients, cfg.recipients_per_user),
    ):
        shown = f"{value} {window}" if value is not None else f"{default} {window} (default)"
        click.echo(f"{address} {what}: {shown}")


@click.command("limits")
@click.argument("email")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def show_limits(ctx: Context, email: str, as_json: bool) -> None:
    """Show EMAIL's sending limits, what it sent in the window, and its login lockout."""
    address = email_argument(email)
    cfg = ctx.config.limits
    now = time.time()
    rates, logins = Window(cfg.rate_window), Window(cfg.auth_window)
    with ctx.services() as s:
        own = s.counters.override(address)
        used, _ = s.counters.usage([user_key(address)], rates.first_counted(now))
        state = s.counters.login_state([account_key(address)], logins.first_counted(now))
    messages, recipients = used.get(user_key(address), (0, 0))
    own_messages = own.messages if own else None
    own_recipients = own.recipients if own else None
    failures = state.failures.get(account_key(address), 0)
    lock = next((lk for lk in state.locks if lk.locked_until.timestamp() > now), None)
    if as_json:
        row = {
            "email": address,
            "window_seconds": cfg.rate_window,
            "messages": messages,
            "messages_limit": cfg.messages_per_user if own_messages is None else own_messages,
            "messages_limit_is_default": own_messages is None,
            "recipients": recipients,
            "recipients_limit": (
                cfg.recipients_per_user if own_recipients is None else own_recipients
            ),
            "recipients_limit_is_default": own_recipients is None,
            "failed_logins": failures,
            "locked_until": lock.locked_until.isoformat() if lock else None,
        }
        click.echo(json.dumps(row, indent=2))
        return
    click.echo(address)
    limit = cfg.messages_per_user if own_messages is None else own_messages
    click.echo(_limit_line("messages", messages, limit, own_messages, cfg.rate_window))
    limit = cfg.recipients_per_user if own_recipients is None else own_recipients
    click.echo(_limit_line("recipients", recipients, limit, own_recipients, cfg.rate_window))
    recent = f"{failures} failed logins in the last {cfg.auth_window} s"
    if lock is not None:
        until = lock.locked_until.isoformat(timespec="seconds")
        click.echo(f"login: locked until {until} ({recent}); lift with: submitgw user unlock")
    else:
        click.echo(f"login: not locked ({recent})")


@click.command("unlock")
@click.argument("email")
@pass_context
def unlock(ctx: Context, email: str) -> None:
    """Lift EMAIL's login lockout at once and forget its failed logins.

    Works for any login name, existing or not, as lockouts do. A client IP
    lockout is not lifted; it expires after [limits] auth_lockout.
    """
    name = login_name(email)
    if not name:
        raise click.ClickException("the login name is empty")
    with ctx.services() as s:
        lifted = s.counters.unlock(account_key(name))
        s.accounts.trail(name, "login-unlocked", admin_actor())
    if lifted is not None and lifted.locked_until.timestamp() > time.time():
        click.echo(f"{name} unlocked (was locked until {lifted.locked_until.isoformat()})")
    else:
        click.echo(f"{name} was not locked; its failed logins are forgotten")
