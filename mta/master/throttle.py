"""Respawn throttling: a child that dies young waits longer and longer before it returns.

Postfix throttles a service whose processes die at start; gunicorn does not and spins.
A child that lived at least ``healthy_after`` seconds resets its slot's delay.  The clock
(``time.monotonic`` unless given) is an argument so that tests need not sleep.
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
        healthy_after: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.healthy_after = healthy_after
        self.clock = clock
        self._delay: dict[Hashable, float] = {}
        self._not_before: dict[Hashable, float] = {}

    def died(self, slot: Hashable, lived: float) -> None:
        if lived >= self.healthy_after:
            self._delay.pop(slot, None)
            self._not_before.pop(slot, None)
            return
        delay = min(self.max_delay, self._delay.get(slot, self.first_delay / 2) * 2)
        self._delay[slot] = delay
        self._not_before[slot] = self.clock() + delay

    def may_start(self, slot: Hashable) -> bool:
        return self.clock() >= self._not_before.get(slot, 0.0)

    def delay(self, slot: Hashable) -> float:
        """The current respawn delay of ``slot`` (0 when it is healthy)."""
        return self._delay.get(slot, 0.0)
