"""A thread that works through items handed to it, in batches.

Both the group committer and the queue manager's remover take whatever piled up since
their last round and deal with it in one go; this is the queue, the wake-up and the clean
stop they share.  ``stop()`` lets the thread finish what it was given before it ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["BatchThread"]

T = TypeVar("T")


class BatchThread(Generic[T]):
    def __init__(
        self, handle: Callable[[list[T]], bool | None], name: str, max_batch: int = 0
    ) -> None:
        """``handle(batch)`` runs in the thread; returning False ends the thread early."""
        self._handle = handle
        self._max_batch = max_batch
        self._queue: list[T] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: T) -> None:
        with self._cond:
            self._queue.append(item)
            self._cond.notify()

    def put_many(self, items: list[T]) -> None:
        """Hand over several items with one wake-up of the thread."""
        with self._cond:
            self._queue.extend(items)
            self._cond.notify()

    def stop(self) -> None:
        """Handle what is queued, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                if self._max_batch:
                    batch = self._queue[: self._max_batch]
                    del self._queue[: self._max_batch]
                else:
                    batch, self._queue = self._queue, []
            if self._handle(batch) is False:
                return
