"""Blocking work off the event loop, with one meaning for a failing database.

Every hand-off to a worker thread (database reads and writes, argon2) goes
through `offload`, so the loop keeps serving other clients while it runs, and
a database failure (connection lost, locked, schema missing) becomes one
`Unavailable` refusal naming what was needed, however the store failed. Each
layer words that refusal once: `smtp.replies` for SMTP, the site for HTTP.
Anything else the work raises (a `Refusal`, a `StoreError`, a rule's
`ValueError`) reaches the caller unchanged: those are answers, not failures.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import TypeVar

from submitgw.errors import Need, Unavailable
from submitgw.store.errors import DATABASE_FAILURES

log = logging.getLogger(__name__)

T = TypeVar("T")


async def offload(
    call: Callable[[], T],
    what: Need,
    *,
    pool: Executor | None = None,
    on_done: Callable[[Future[T]], object] | None = None,
) -> T:
    """Run `call` in `pool` (the loop's default pool if None) and wait for it.

    `on_done` (with a `pool` only) runs when the work is over (in the worker, or
    at once if it was cancelled before it started), not when the caller stops
    waiting: what it gives back stays held while the work runs. A shut-down
    pool (the process is stopping) counts as unavailable, and `on_done` never
    runs then.
    """
    work: asyncio.Future[T]
    try:
        if pool is None:
            work = asyncio.get_running_loop().run_in_executor(None, call)
        else:
            submitted = pool.submit(call)
            if on_done is not None:
                submitted.add_done_callback(on_done)
            work = asyncio.wrap_future(submitted)
    except RuntimeError as exc:
        raise _unavailable(what, exc) from exc
    try:
        return await work
    except DATABASE_FAILURES as exc:
        raise _unavailable(what, exc) from exc


def _unavailable(what: Need, exc: BaseException) -> Unavailable:
    log.error("storage unavailable (needed for %s): %s", what.value, type(exc).__name__)
    return Unavailable(what)
