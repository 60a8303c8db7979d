"""Give the heap back to the system after bursts of connections.

Each TLS connection allocates buffers of a few hundred KB. glibc keeps what a
burst freed inside its heap for reuse, so after a flood of handshakes the
process stays at its peak size although nothing is held; `malloc_trim`
returns those pages. Where the C library has no `malloc_trim` (not glibc),
nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def heap_trimmer() -> Callable[[], object] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


async def trim_after_churn(closed: Callable[[], int], interval: float) -> None:
    """Every `interval` seconds, trim the heap if connections ended since the last look."""
    trim = heap_trimmer()
    if trim is None or interval <= 0:
        return
    loop = asyncio.get_running_loop()
    seen = closed()
    while True:
        await asyncio.sleep(interval)
        now = closed()
        if now != seen:
            seen = now
            await loop.run_in_executor(None, trim)
