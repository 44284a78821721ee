"""Respawn throttling: a child that dies before it is ready waits longer and longer to return.

*Ready* is the arbiter's word for a child that has proven it works: its first heartbeat,
which every kind sends from its event loop only once it has set up (smtpd listening, the
queue manager recovered and listening for agents, a delivery agent running).

Postfix's master throttles a service only when a process exits abnormally before it served
a single request (master_spawn.c: "bad command startup -- throttling"); gunicorn throttles
nothing and spins.  So
here too: a child that dies before it is ready is a start-up failure (the disk is not
mounted, the configuration cannot work), and respawning it at once would only spin, so its
slot waits ``first_delay``, doubling up to ``max_delay``.  A child that was ready and then
died (killed, crashed on some input) is replaced at once, and a ready child resets its
slot's delay.

A child that becomes ready and dies again and again is not throttled either, on purpose:
that is a service that works until something (a client, a message) kills it, and a delay
would turn whoever can kill it into an outage for everyone (issue 10: 28 s without smtpd
after kill -9).  Its respawn rate is bounded by its own start-up (a fork, imports, setting
up, the first beat: a few tenths of a second of CPU each time), every death is logged and
counted in ``mta_master_child_restarts_total``.

The clock (``time.monotonic`` unless given) is an argument so that tests need not sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

__all__ = ["Throttle"]


class Throttle:
    def __init__(
        self,
        first_delay: float = 0.5,
        max_delay: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.clock = clock
        self._delay: dict[Hashable, float] = {}
        self._not_before: dict[Hashable, float] = {}

    def ready(self, slot: Hashable) -> None:
        """A child of ``slot`` is ready: its start-up works, the slot's delay is reset."""
        self._delay.pop(slot, None)
        self._not_before.pop(slot, None)

    def died(self, slot: Hashable, ready: bool) -> None:
        """A child of ``slot`` died; ``ready``: after it was ready (replaced at once)."""
        if ready:
            self.ready(slot)
            return
        delay = min(self.max_delay, self._delay.get(slot, self.first_delay / 2) * 2)
        self._delay[slot] = delay
        self._not_before[slot] = self.clock() + delay

    def may_start(self, slot: Hashable) -> bool:
        return self.clock() >= self._not_before.get(slot, 0.0)

    def delay(self, slot: Hashable) -> float:
        """The current respawn delay of ``slot`` (0 when it is not throttled)."""
        return self._delay.get(slot, 0.0)
