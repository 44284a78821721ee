"""Wake-ups: datagrams that tell the queue manager to look now instead of at its next poll.

The sockets and the messages are ipc.py's (:data:`~mta.queue.ipc.WakeUp`); here is what
each one asks for:

* ``SegmentAppended(name, committed)`` (smtpd's group commit) — the first ``committed``
  octets of segment ``name`` are durable and may be read (segments.py); look for new
  segment files if ``name`` is one we do not follow yet;
* ``Queued()`` (a large message, a bounce) — look into ``incoming/``;
* ``FlushDeferred()`` (``mta queue flush``) — every deferred message is due now, and every
  suspended destination may be tried again (``flushed``, the shaper's);
* ``Rescan()`` (another operator command) — look into ``incoming/`` and ``deferred/``.

Every datagram waiting is read in one go and ends in one wake of the scheduler: a burst
of commits costs one scheduling round.  A datagram that is no wake-up is ignored (logged
at debug level): wake-ups only hurry what the poll would find anyway.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable

from mta.qmgr.schedule import Scheduler
from mta.qmgr.segments import SegmentTracker
from mta.queue.ipc import (
    FlushDeferred,
    Queued,
    Rescan,
    SegmentAppended,
    WakeUp,
    decode_wakeup,
    wake_address,
)
from mta.queue.spool import Spool

__all__ = ["WakeupListener"]

log = logging.getLogger("mta.qmgr")

_DATAGRAM_MAX = 256  # octets; the largest wake-up (a segment name and length) takes 38


class WakeupListener:
    def __init__(
        self,
        spool: Spool,
        scheduler: Scheduler,
        segments: SegmentTracker,
        wake: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spool = spool
        self.scheduler = scheduler
        self.segments = segments
        self.wake = wake
        self.clock = clock
        self.flushed: Callable[[], None] | None = None  # told of a flush
        self._sock: socket.socket | None = None

    def listen(self, loop: asyncio.AbstractEventLoop) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        sock.bind(wake_address(self.spool.path))
        loop.add_reader(sock.fileno(), self._readable)
        self._sock = sock

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sock is not None:
            loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                datagram = self._sock.recv(_DATAGRAM_MAX)
            except BlockingIOError:
                break
            message = decode_wakeup(datagram)
            if message is None:
                log.debug("ignored a datagram that is no wake-up: %r", datagram[:64])
            else:
                self.handle(message)
        self.wake()

    def handle(self, message: WakeUp) -> None:
        """Note what ``message`` asks the next round to do."""
        if isinstance(message, SegmentAppended):
            self.segments.announce(message.name, message.committed)
        elif isinstance(message, Queued):
            self.scheduler.scan_incoming = True
        elif isinstance(message, FlushDeferred):
            self.scheduler.scan_incoming = True
            self.spool.flush_deferred(self.clock())
            self.scheduler.rescan_deferred = True
            if self.flushed is not None:
                self.flushed()
        elif isinstance(message, Rescan):
            self.scheduler.scan_incoming = True
            self.scheduler.rescan_deferred = True
