"""stores: a state store that fails on purpose, put in place of a running controller's store, and
the leftover temp file an interrupted save leaves."""

from __future__ import annotations

from admin.state import StateError


class FailingStore:
    """FailingStore: wraps a state store; its commits fail as a broken disk would.

    The next ``failures`` commits fail (every one when ``failures`` is None), raising
    ``error`` (by default a StateError naming the store); with ``write_first`` the wrapped
    store commits before the error is raised, as when the file was written but its folder
    could not be synced. Everything else is the wrapped store's.
    """

    def __init__(self, store, error: Exception | None = None, failures: int | None = None,
                 write_first: bool = False) -> None:
        self.store = store
        self.error = error
        self.failures = failures
        self.write_first = write_first
        self.history_limit = getattr(store, "history_limit", None)

    async def load(self):
        return await self.store.load()

    def describe(self) -> str:
        return self.store.describe()

    async def commit(self, state, expect, event=None):
        if self.failures == 0:
            return await self.store.commit(state, expect, event)
        if self.failures is not None:
            self.failures -= 1
        if self.write_first:
            await self.store.commit(state, expect, event)
        raise self.error or StateError(f"state {self.describe()}: disk full (test)")

    def __getattr__(self, name):      # append, amend, add_drain, watch: the wrapped store's
        return getattr(self.store, name)


def leftover(folder, name: str = "state.json", tag: str = "k3j2") -> object:
    """leftover: the temp file a save of ``folder/name`` cut mid-write leaves (FileStateStore's naming)."""
    path = folder / f".{name}.{tag}.tmp"
    path.write_text('{"half": ')     # what a save cut mid-write leaves
    return path
