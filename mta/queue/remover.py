"""Removing delivered messages from ``active/`` in a thread of their own.

An ``unlink`` must join the file system's running journal transaction; while smtpd's group
commit flushes, that wait can take a millisecond, and the queue manager's event loop must
not stall on it.  Removal needs no flush: a message whose unlink is lost in a crash is
delivered once more (a duplicate, never a loss), so the thread just works through the ids
handed to it, oldest first, and logs each removal as Postfix's qmgr does.
"""

from __future__ import annotations

import logging
import os

from mta import metrics
from mta.queue.batches import BatchThread
from mta.queue.spool import Spool

__all__ = ["Remover"]

log = logging.getLogger("mta.qmgr")


class Remover:
    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._worker: BatchThread[str] = BatchThread(self._remove_all, "qmgr-remove")

    def remove(self, queue_id: str) -> None:
        """Every recipient of ``queue_id`` is done: delete its file from ``active/``."""
        self._worker.put(queue_id)

    def stop(self) -> None:
        """Finish what was handed over, then end the thread."""
        self._worker.stop()

    def _remove_all(self, batch: list[str]) -> None:
        for queue_id in batch:
            try:
                os.unlink(self.spool.file("active", queue_id))
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("%s: cannot remove the delivered message: %s", queue_id, exc)
                continue
            metrics.MESSAGES_DELIVERED.inc()
            log.info("%s: removed", queue_id)
