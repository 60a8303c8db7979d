"""Who may send as what: the sender bindings, read off the event loop."""

from __future__ import annotations

from submitgw.errors import Need
from submitgw.services.offload import offload
from submitgw.store import SenderStore


class Senders:
    """The addresses and `@domain` patterns a user may use, their own address first."""

    def __init__(self, store: SenderStore | None) -> None:
        # Without a store (some tests), users may use their own address only.
        self._store = store

    async def allowed(self, user: str) -> list[str]:
        store = self._store
        if store is None:
            return [user]
        return await offload(lambda: store.allowed(user), Need.SENDERS)
