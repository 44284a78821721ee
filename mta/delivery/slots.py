"""The delivery agent's side of destination shaping: a slot from the queue manager around
each SMTP/LMTP transaction to a next hop (the rules are the queue manager's: shaping.py).

``async with slots.slot(destination) as lease`` waits for the queue manager's answer
(ipc.py: SlotRequest → SlotGrant) and gives the slot back at the end with what the
transaction found (``lease.up()`` / ``lease.unreachable(reason)``; SlotRelease).  A lease
whose verdict is ``"dead"`` holds no slot: the caller defers without connecting.

Round trips are kept off the hot path where the rules allow:

* at most one request per destination is outstanding; waiting transactions queue here, and
  each grant serves the first of them (then the next request goes out), so a burst costs
  one request per slot the agent ends up holding, not one per transaction;
* a slot whose destination has no rate (``passable``) and whose transaction reached a
  server is passed straight on to the next transaction waiting here for the same
  destination, at most :data:`MAX_PASSES` times (then it goes back, so agents share the
  destination fairly); the successes passed on are reported every
  :data:`REPORT_SECONDS` (SlotRelease with ``kept``), so the queue manager's slow start
  sees them without a frame per transaction;
* a "dead" verdict answers every transaction waiting here for that destination;
* requests and releases made in one turn of the event loop go out in one write.

If the queue manager is not connected (starting, restarting), a per-process limit of
``destination_concurrency`` transactions per destination stands in, so mail keeps flowing;
waiting transactions move to it when the connection is lost.  A slot from a connection
that was lost is not given back (the queue manager freed it when the connection went).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mta.queue.ipc import SlotGrant, SlotOutcome, SlotRelease, SlotRequest, encode_frame

__all__ = ["MAX_PASSES", "Lease", "SlotClient"]

MAX_PASSES = 32  # transactions one slot serves here before it is given back
REPORT_SECONDS = 0.05  # how often the successes of slots passed on are reported


class Lease:
    """One slot (or the answer that there is none: ``dead``)."""

    __slots__ = (
        "destination",
        "error",
        "generation",
        "local",
        "outcome",
        "passable",
        "passed",
        "passes",
        "reason",
        "ticket",
        "verdict",
    )  # fmt: skip

    def __init__(
        self,
        destination: str,
        ticket: int,
        verdict: str,
        reason: str = "",
        passable: bool = False,
        generation: int = 0,
        local: bool = False,
    ) -> None:
        self.destination = destination
        self.ticket = ticket
        self.verdict = verdict
        self.reason = reason
        self.passable = passable
        self.generation = generation
        self.local = local  # the per-process stand-in, no queue manager slot
        self.outcome: SlotOutcome = "none"
        self.error = ""
        self.passes = 0  # times it was passed on here
        self.passed = 0  # of those (all "up"), the ones not reported yet

    @property
    def dead(self) -> bool:
        return self.verdict == "dead"

    def up(self) -> None:
        """A server took or refused the message."""
        self.outcome = "up"

    def unreachable(self, reason: str) -> None:
        """Every server tried failed to connect, greet, do TLS or stay connected."""
        self.outcome, self.error = "unreachable", reason


_Waiter = asyncio.Future[Lease | None]  # None: use the local stand-in


class SlotClient:
    def __init__(self, local_limit: int) -> None:
        self.local_limit = local_limit
        self._writer: asyncio.StreamWriter | None = None
        self._generation = 0
        self._tickets = itertools.count(1)
        self._asked: dict[int, str] = {}  # outstanding ticket → destination
        self._asking: set[str] = set()  # destinations with a request outstanding
        self._waiting: dict[str, deque[_Waiter]] = {}
        self._local: dict[str, asyncio.Semaphore] = {}
        self._out: list[bytes] = []  # encoded frames to go out this turn
        self._passing: set[Lease] = set()  # leases with passes to report
        self._report_timer: asyncio.TimerHandle | None = None
        self._flushing = False  # a flush is due at the end of this turn

    # ----- the connection to the queue manager ---------------------------------------

    def attach(self, writer: asyncio.StreamWriter) -> None:
        self.detach()
        self._writer = writer

    def detach(self) -> None:
        """The queue manager went away: waiting transactions use the local stand-in."""
        self._writer = None
        self._generation += 1
        self._asked.clear()
        self._asking.clear()
        self._out.clear()
        self._passing.clear()
        if self._report_timer is not None:
            self._report_timer.cancel()
            self._report_timer = None
        waiting, self._waiting = self._waiting, {}
        for queue in waiting.values():
            for waiter in queue:
                if not waiter.done():
                    waiter.set_result(None)

    def granted(self, grant: SlotGrant) -> None:
        """The queue manager answered request ``grant.ticket``."""
        destination = self._asked.pop(grant.ticket, None)
        if destination is None:
            return
        self._asking.discard(destination)
        queue = self._waiting.get(destination)
        lease = Lease(
            destination,
            grant.ticket,
            grant.verdict,
            grant.reason,
            grant.passable,
            self._generation,
        )
        if grant.verdict == "dead":
            while queue:  # the same answer for every transaction waiting for it
                _resolve(queue.popleft(), Lease(destination, 0, "dead", grant.reason))
        elif not self._hand_over(queue, lease):
            self._release(lease)  # nobody waits any more
        if queue:
            self._ask(destination)
        elif queue is not None:
            del self._waiting[destination]

    # ----- transactions ------------------------------------------------------------------

    @asynccontextmanager
    async def slot(self, destination: str) -> AsyncIterator[Lease]:
        lease = await self._acquire(destination)
        if lease is None:
            async with self._local_limit(destination):
                yield Lease(destination, 0, "go", local=True)
            return
        try:
            yield lease
        finally:
            self._done(lease)

    async def _acquire(self, destination: str) -> Lease | None:
        if self._writer is None or self._writer.is_closing():
            return None
        waiter: _Waiter = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(destination, deque()).append(waiter)
        if destination not in self._asking:
            self._ask(destination)
        try:
            return await waiter
        except asyncio.CancelledError:
            self._forget(destination, waiter)
            raise

    def _done(self, lease: Lease) -> None:
        if lease.dead or lease.generation != self._generation:
            return
        queue = self._waiting.get(lease.destination)
        if lease.passable and lease.outcome == "up" and queue and lease.passes < MAX_PASSES:
            lease.outcome, lease.error = "none", ""
            if self._hand_over(queue, lease):
                lease.passes += 1
                lease.passed += 1
                self._passing.add(lease)
                if self._report_timer is None:
                    loop = asyncio.get_running_loop()
                    self._report_timer = loop.call_later(REPORT_SECONDS, self._report)
                return
            lease.outcome = "up"
        self._release(lease)

    def _hand_over(self, queue: deque[_Waiter] | None, lease: Lease) -> bool:
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(lease)
                return True
        return False

    def _forget(self, destination: str, waiter: _Waiter) -> None:
        """A transaction gave up waiting (cancelled); a slot it was just handed goes back."""
        queue = self._waiting.get(destination)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
        if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
            self._done(waiter.result())  # type: ignore[arg-type]

    def _local_limit(self, destination: str) -> asyncio.Semaphore:
        limit = self._local.get(destination)
        if limit is None:
            limit = self._local[destination] = asyncio.Semaphore(self.local_limit)
        return limit

    # ----- frames ----------------------------------------------------------------------

    def _ask(self, destination: str) -> None:
        ticket = next(self._tickets)
        self._asked[ticket] = destination
        self._asking.add(destination)
        self._send(SlotRequest(destination, ticket))

    def _release(self, lease: Lease) -> None:
        self._passing.discard(lease)
        passed, lease.passed = lease.passed, 0
        self._send(SlotRelease(lease.destination, lease.ticket, lease.outcome, lease.error, passed))

    def _send(self, frame: SlotRequest | SlotRelease) -> None:
        self._out.append(encode_frame(frame))
        self._soon()

    def _soon(self) -> None:
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _report(self) -> None:
        self._report_timer = None
        for lease in self._passing:
            report = SlotRelease(lease.destination, lease.ticket, "none", "", lease.passed, True)
            self._send(report)
            lease.passed = 0
        self._passing.clear()

    def _flush(self) -> None:
        self._flushing = False
        out, self._out = self._out, []
        writer = self._writer
        if out and writer is not None and not writer.is_closing():
            writer.write(b"".join(out))


def _resolve(waiter: _Waiter, lease: Lease) -> None:
    if not waiter.done():
        waiter.set_result(lease)
