"""What a command works with: `submitgw.app.Stores` on one database handle.

`Context.services()` opens it, turns the refusals listed in `ONE_LINE_ERRORS`
into one-line errors, and disposes of the engine on every path, so no command
has its own copy of that.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import click

from submitgw.app import Stores
from submitgw.config import Config
from submitgw.rules.access import RuleError
from submitgw.rules.binding import InvalidPattern
from submitgw.rules.passwords import PasswordRejected
from submitgw.services.accounts import Actor
from submitgw.store import Database
from submitgw.store.errors import StoreError

# Refusals whose text is already the one line an admin should read, by class.
ONE_LINE_ERRORS: tuple[type[Exception], ...] = (
    # Every refusal of the store (not found, exists, revoked, not migrated).
    StoreError,
    # The rules' refusals of what an admin typed.
    InvalidPattern,
    PasswordRejected,
    RuleError,
)


def admin_actor() -> Actor:
    """Who the trail names for a CLI change: the OS login running it, on this host."""
    try:
        login = getpass.getuser()
    except OSError:
        # No login name in the environment nor the password database (bare containers).
        login = f"uid {os.getuid()}"
    return Actor(f"admin:{login}", f"cli on {socket.gethostname()}")


@contextmanager
def open_services(url: str, config: Config, *, require_current: bool = True) -> Iterator[Stores]:
    """Stores on a new engine: expected refusals become one line, the engine always goes."""
    db = Database(url)
    try:
        if require_current:
            db.check_current()
        yield Stores(db, config)
    except ONE_LINE_ERRORS as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        db.dispose()
