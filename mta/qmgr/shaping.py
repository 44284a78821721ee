"""Destination shaping: how many deliveries each destination gets at once, how fast, and
whether it is worth connecting to at all (DESIGN.md §8: one owner, the queue manager).

Delivery agents ask for a *slot* before each SMTP/LMTP transaction to a next hop and give
it back with what they found (ipc.py: SlotRequest, SlotGrant, SlotRelease); the queue
manager keeps one :class:`Shaper` and feeds it those frames.  A destination is a next
hop's key (``smtp:example.com:25:mx``, ``smtp:relay.example:587``); its overrides in
``[destinations."NAME"]`` are found by NAME = the key's target: the recipient domain for MX
delivery, the host of the relayhost or of an ``smtp:``/``lmtp:`` route.

Per destination (Postfix's qmgr, whose numbers are the defaults):

* **concurrency window**: starts at ``initial_destination_concurrency`` (5) and grows by one
  for every window's worth of deliveries that reached a server, up to the limit
  (``destination_concurrency`` or the override); every unreachable attempt shrinks it by
  one, never below 1 (Postfix's slow start with its default +1/-1 feedback);
* **rate** (optional, messages per minute): grants are at least ``60/rate`` s apart, and
  a rated slot is never passed on by an agent (``passable`` false), so each transaction is
  counted here;
* **waiting requests** in FIFO order, granted as slots come free;
* **dead**: after ``dead_after`` consecutive unreachable attempts (default 5: Postfix
  suspends a destination after one failed pseudo-cohort, which at its initial concurrency of
  5 is five failures in a row) the destination is suspended for ``dead_backoff`` (Postfix's
  minimal_backoff_time, 300 s), doubling up to ``dead_max_backoff`` while probes fail.
  Meanwhile every request is answered "dead" at once (the agent defers without
  connecting).  Once the backoff is over, one request is granted as a "probe" and the
  requests that come while it runs wait for its outcome: "up" revives the destination and
  grants them, "unreachable" suspends it again and answers them "dead".  Any "up" outcome
  (a slot granted before the suspension) revives it too; a flush (``mta queue flush``)
  revives every destination, as ``postqueue -f`` does.

Invariants: a destination never has more "go"/"probe" slots out than its window (except
that slots granted before the window shrank are not recalled); at most one probe per
destination; a slot is owned by one holder (an agent connection) and freed when released
or when its holder goes away (:meth:`Shaper.drop`); destinations idle (no slot out, none
waiting, not suspended) for :data:`FORGET_SECONDS` are forgotten, so memory follows the
destinations in use.  Time is an argument (``now``, monotonic seconds), never read here,
so the shaper is tested without waiting.  A release for an unknown slot is ignored.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

from mta.config import Config, DestinationConfig
from mta.protocol.printable import for_log
from mta.queue.ipc import SlotOutcome, SlotVerdict

__all__ = ["FORGET_SECONDS", "Grant", "Shaper", "destination_name"]

log = logging.getLogger("mta.qmgr")

FORGET_SECONDS = 60.0  # an idle destination's window is kept this long for the next burst
SWEEP_SECONDS = 10.0  # how often idle destinations are looked for
# A loop's timer may fire up to half a millisecond early (uvloop keeps whole milliseconds):
# a grant that early is on time, rather than a timer re-armed until the clock ticks.
TIMER_SLACK = 0.001

Slot = tuple[Hashable, int]  # (holder, ticket)


@dataclass(frozen=True, slots=True)
class Grant:
    """An answer to send: request ``ticket`` of ``holder``."""

    holder: Hashable
    ticket: int
    verdict: SlotVerdict
    reason: str = ""
    passable: bool = False


@dataclass(slots=True)
class _Destination:
    limit: int  # concurrency limit
    interval: float  # seconds between grants; 0: no rate
    window: int
    successes: int = 0  # "up" outcomes since the window last changed
    failures: int = 0  # consecutive unreachable outcomes
    busy: set[Slot] = field(default_factory=set)
    waiting: deque[Slot] = field(default_factory=deque)
    next_grant: float = 0.0  # rate: the earliest time of the next grant
    dead_until: float | None = None  # suspended until then (None: alive)
    backoff: float = 0.0  # the current suspension's length
    probe: Slot | None = None
    reason: str = ""  # the last unreachable attempt's error
    idle_since: float = 0.0

    def idle(self) -> bool:
        return not self.busy and not self.waiting and self.dead_until is None


def destination_name(destination: str) -> str:
    """The name overrides are keyed by: the target of a next hop's key
    (``smtp:example.com:25:mx`` → ``example.com``), lower case."""
    _, _, rest = destination.partition(":")
    rest = rest.removesuffix(":mx")
    target = rest.rpartition(":")[0] or rest
    return target.lower().rstrip(".")


class Shaper:
    def __init__(self, config: Config) -> None:
        delivery = config.delivery
        self.default = DestinationConfig(
            concurrency=delivery.destination_concurrency, rate=delivery.destination_rate
        )
        self.overrides = {name.lower().rstrip("."): o for name, o in config.destinations.items()}
        self.initial = delivery.initial_destination_concurrency
        self.dead_after = delivery.dead_after
        self.dead_backoff = delivery.dead_backoff
        self.dead_max_backoff = delivery.dead_max_backoff
        self.destinations: dict[str, _Destination] = {}
        self.suspensions = 0  # times a destination was marked dead
        self.suspended: set[str] = set()  # destinations dead now
        self._timed: set[str] = set()  # destinations with requests waiting for their rate
        self._last_sweep = 0.0

    # ----- what the queue manager feeds in -----------------------------------------------

    def request(self, holder: Hashable, destination: str, ticket: int, now: float) -> list[Grant]:
        dest = self._get(destination, now)
        if dest.dead_until is not None and now < dest.dead_until:
            return [Grant(holder, ticket, "dead", dest.reason)]
        dest.waiting.append((holder, ticket))
        return self._pump(destination, dest, now)

    def release(
        self,
        holder: Hashable,
        destination: str,
        ticket: int,
        outcome: SlotOutcome,
        reason: str,
        passed: int,
        now: float,
        kept: bool = False,
    ) -> list[Grant]:
        """Slot ``ticket`` is free (``kept``: still held, only ``passed`` is news)."""
        dest = self.destinations.get(destination)
        slot = (holder, ticket)
        if dest is None or slot not in dest.busy:
            return []
        if kept:
            self._up(destination, dest, passed)
            return self._pump(destination, dest, now)
        dest.busy.discard(slot)
        was_probe = dest.probe == slot
        if was_probe:
            dest.probe = None
        if passed:
            self._up(destination, dest, passed)
        if outcome == "up":
            self._up(destination, dest, 1)
        elif outcome == "unreachable":
            return self._unreachable(destination, dest, reason, was_probe, now)
        if dest.idle():
            dest.idle_since = now
        return self._pump(destination, dest, now)

    def drop(self, holder: Hashable, now: float) -> list[Grant]:
        """``holder`` went away: its slots are free, its waiting requests forgotten."""
        grants: list[Grant] = []
        for name, dest in self.destinations.items():
            mine = {slot for slot in dest.busy if slot[0] == holder}
            queued = [slot for slot in dest.waiting if slot[0] == holder]
            if not mine and not queued:
                continue
            dest.busy -= mine
            dest.waiting = deque(slot for slot in dest.waiting if slot[0] != holder)
            if dest.probe in mine:
                dest.probe = None
            grants += self._pump(name, dest, now)
        return grants

    def revive_all(self, now: float) -> list[Grant]:
        """Every suspended destination is alive again (a flush asks to try everything)."""
        grants: list[Grant] = []
        for name, dest in self.destinations.items():
            if dest.dead_until is not None:
                log.info("destination %s: suspension lifted by a flush", for_log(name))
                self._revive(name, dest)
                grants += self._pump(name, dest, now)
        return grants

    def due(self, now: float) -> list[Grant]:
        """Grants whose rate interval has passed; forgets idle destinations now and then."""
        grants: list[Grant] = []
        for name in list(self._timed):
            dest = self.destinations[name]  # a timed destination has requests: not forgotten
            if dest.next_grant <= now + TIMER_SLACK:
                grants += self._pump(name, dest, now)
        if now - self._last_sweep >= SWEEP_SECONDS:
            self._last_sweep = now
            self._forget_idle(now)
        return grants

    def next_due(self) -> float | None:
        """When :meth:`due` has grants to make (None: nothing is waiting for the clock)."""
        return min((self.destinations[name].next_grant for name in self._timed), default=None)

    @property
    def dead(self) -> int:
        return len(self.suspended)

    # ----- the rules ---------------------------------------------------------------------

    def _get(self, destination: str, now: float) -> _Destination:
        dest = self.destinations.get(destination)
        if dest is None:
            override = self.overrides.get(destination_name(destination), self.default)
            limit = override.concurrency or self.default.concurrency or 1
            rate = self.default.rate if override.rate is None else override.rate
            dest = _Destination(
                limit=limit,
                interval=60.0 / rate if rate else 0.0,
                window=min(self.initial, limit),
                idle_since=now,
            )
            self.destinations[destination] = dest
        return dest

    def _pump(self, name: str, dest: _Destination, now: float) -> list[Grant]:
        """Grant waiting requests while the window, the rate and the dead state allow."""
        grants: list[Grant] = []
        if dest.dead_until is not None:
            if now < dest.dead_until:
                grants = [Grant(h, t, "dead", dest.reason) for h, t in dest.waiting]
                dest.waiting.clear()
            elif dest.probe is None and dest.waiting:
                dest.probe = dest.waiting.popleft()
                dest.busy.add(dest.probe)
                grants.append(Grant(*dest.probe, "probe"))
            self._timed.discard(name)
            return grants
        passable = dest.interval == 0
        while dest.waiting and len(dest.busy) < dest.window:
            if dest.interval:
                if now + TIMER_SLACK < dest.next_grant:
                    break
                late = now - dest.next_grant
                dest.next_grant = (now if late >= dest.interval else dest.next_grant) + (
                    dest.interval
                )
            slot = dest.waiting.popleft()
            dest.busy.add(slot)
            grants.append(Grant(*slot, "go", passable=passable))
        if dest.interval and dest.waiting and len(dest.busy) < dest.window:
            self._timed.add(name)  # the clock, not a release, grants the next one
        else:
            self._timed.discard(name)
        return grants

    def _up(self, name: str, dest: _Destination, count: int) -> None:
        """Deliveries reached a server: slow start grows the window, a suspension ends."""
        dest.failures = 0
        if dest.dead_until is not None:
            log.info("destination %s is back up: suspension lifted", for_log(name))
            self._revive(name, dest)
        dest.successes += count
        while dest.successes >= dest.window and dest.window < dest.limit:
            dest.successes -= dest.window
            dest.window += 1
        if dest.window >= dest.limit:
            dest.successes = 0

    def _unreachable(
        self, name: str, dest: _Destination, reason: str, was_probe: bool, now: float
    ) -> list[Grant]:
        dest.failures += 1
        dest.successes = 0
        dest.window = max(1, dest.window - 1)
        dest.reason = reason or dest.reason or "destination unreachable"
        if was_probe:
            dest.backoff = min(dest.backoff * 2, self.dead_max_backoff)
            self._suspend(name, dest, now, "probe failed")
        elif dest.dead_until is None and dest.failures >= self.dead_after:
            dest.backoff = self.dead_backoff
            self.suspensions += 1
            self._suspend(name, dest, now, f"{dest.failures} failed attempts")
        return self._pump(name, dest, now)

    def _suspend(self, name: str, dest: _Destination, now: float, why: str) -> None:
        dest.dead_until = now + dest.backoff
        self.suspended.add(name)
        log.warning(
            "warning: destination %s marked dead for %.0fs after %s: %s",
            for_log(name),
            dest.backoff,
            why,
            for_log(dest.reason),
        )

    def _revive(self, name: str, dest: _Destination) -> None:
        self.suspended.discard(name)
        dest.dead_until, dest.failures, dest.successes = None, 0, 0
        dest.window = min(self.initial, dest.limit)

    def _forget_idle(self, now: float) -> None:
        forget = [
            name
            for name, dest in self.destinations.items()
            if (dest.idle() and now - dest.idle_since >= FORGET_SECONDS)
            or (
                dest.dead_until is not None
                and not dest.busy
                and not dest.waiting
                and now - dest.dead_until >= self.dead_max_backoff
            )
        ]
        for name in forget:
            del self.destinations[name]
            self.suspended.discard(name)
