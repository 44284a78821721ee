"""An smtpd worker's end of the node's anvil: the :class:`CounterStore` that holds per-client
limits across all workers, with this worker's own counts as the fallback.

One connection per worker, made when the worker starts and kept.  Requests made in one turn
of the event loop go out in one frame (anvil_wire.py), however many sessions made them;
each caller awaits only its own answer.

Failures, and why mail keeps flowing through them:

* anvil unreachable (not started yet, restarting, killed): requests are decided by this
  worker's :class:`~mta.policy.counters.ClientCounters` alone (limits per worker), the
  worker tries again every :data:`RETRY` seconds, and says so once in the log (and once
  when it is back) and in the ``mta_smtpd_limits_fallback`` gauge;
* anvil slow: a request unanswered after ``timeout`` drops the connection and is decided
  locally, as are the others in flight;
* the worker's open connections are always mirrored locally, so the fallback starts with
  them, and a new connection to anvil first tells it which are open (:class:`Hold`): a
  restarted anvil counts them again.  Anvil forgets a worker's connections when that
  worker's connection to it closes (the worker died).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Callable

from mta import metrics
from mta.policy import anvil_wire
from mta.policy.anvil_wire import Add, Connect, Counts, Disconnect, FrameReader, Hold, Request
from mta.policy.counters import ClientCounters, Kind

__all__ = ["RETRY", "AnvilStore", "AnvilUnavailableError"]

log = logging.getLogger("mta.smtpd")

RETRY = 1.0  # seconds between attempts to reach anvil
TIMEOUT = 0.5  # seconds an answer may take before anvil counts as down
_MAX_VIEWS = 10_000  # (kind, client) counts remembered for add_now
STARTUP_GRACE = 5.0  # seconds: anvil may start after the workers; not worth a warning


class AnvilUnavailableError(Exception):
    """The request could not be answered by anvil (decided locally instead)."""


class _Link(asyncio.Protocol):
    """The stream to anvil; hands answers and the loss back to the store."""

    def __init__(self, store: AnvilStore) -> None:
        self.store = store
        self.transport: asyncio.Transport | None = None
        self.reader: FrameReader[Counts] = FrameReader(Counts)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            answers = self.reader.feed(data)
        except ValueError as exc:
            self.store.lost(self, f"bad answer: {exc}")
            return
        self.store.answered(answers)

    def connection_lost(self, exc: Exception | None) -> None:
        self.store.lost(self, "connection closed" if exc is None else str(exc))


class AnvilStore:
    """The node's counts, asked of anvil at ``address``; local counts while it cannot be."""

    def __init__(
        self,
        address: str,
        loop: asyncio.AbstractEventLoop,
        *,
        timeout: float = TIMEOUT,
        retry: float = RETRY,
        grace: float = STARTUP_GRACE,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.address = address
        self.loop = loop
        self.timeout = timeout
        self.retry = retry
        self.grace = grace
        self.clock = clock or loop.time
        self.local = ClientCounters()  # open connections always; rates while degraded
        self._link: _Link | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[float, asyncio.Future[Counts]]] = {}
        self._outbox: list[Request] = []
        self._flush_handle: asyncio.Handle | None = None
        self._watch: asyncio.TimerHandle | None = None
        self._dialer: asyncio.Task[None] | None = None
        self._born = self.clock()
        self._was_up = False
        self.degraded = False  # logged and shown in the gauge
        self._closed = False
        # add_now: anvil's count per (kind, client) as this worker sees it, the additions
        # not sent yet, and the ids of the Adds whose answers refresh the view
        self._views: dict[tuple[Kind, str], int] = {}
        self._unsent: dict[tuple[Kind, str], int] = {}
        self._refreshing: dict[int, tuple[tuple[Kind, str], float]] = {}  # id: key, sent
        self._hello: tuple[int, asyncio.Future[Counts]] | None = None  # the handshake's
        self._held: dict[str, int] = {}  # the open connections the handshake told anvil

    # ----- CounterStore ---------------------------------------------------------------

    async def connect(self, client: str) -> tuple[int, int]:
        mine = self.local.connect(client, self.clock())  # mirrored: the fallback's start
        if self._link is None:
            return mine
        try:
            counts = await self._ask(Connect(next(self._ids), client))
        except AnvilUnavailableError:
            return mine
        return counts.open, counts.rate

    def disconnect(self, client: str) -> None:
        self.local.disconnect(client)
        if self._link is not None:
            self._send(Disconnect(client))

    async def add(self, kind: Kind, client: str, amount: int) -> int:
        if self._link is not None:
            try:
                counts = await self._ask(Add(next(self._ids), kind, client, amount))
            except AnvilUnavailableError:
                pass
            else:
                self._see((kind, client), counts.rate)
                return counts.rate
        return self.local.add(kind, client, amount, self.clock())

    def add_now(self, kind: Kind, client: str, amount: int, ceiling: int) -> int | None:
        """Count without waiting while this worker's view of the client's window (anvil's
        last answer plus what this worker added since) stays at or below ``ceiling``; the
        view, or None: ask with :meth:`add`.  The additions of a loop turn go to anvil as
        one Add per client and kind, whose answer refreshes the view.  The view misses only
        what other workers added since the last answer (a round trip's worth), so the
        limiter keeps ``ceiling`` well below the limit and asks near it."""
        if self._link is None:
            return self.local.add(kind, client, amount, self.clock())
        key = (kind, client)
        seen = self._views.get(key)
        if seen is None or seen + amount > ceiling:
            return None
        self._views[key] = seen + amount
        self._unsent[key] = self._unsent.get(key, 0) + amount
        self._schedule_flush()
        return seen + amount

    def _see(self, key: tuple[Kind, str], count: int) -> None:
        views = self._views
        if len(views) >= _MAX_VIEWS and key not in views:
            views.clear()  # rare; forgetting only costs a question each
        views[key] = count

    def close(self) -> None:
        self._closed = True
        if self._dialer is not None:
            self._dialer.cancel()
        link, self._link = self._link, None
        if link is not None and link.transport is not None:
            link.transport.close()
        self._fail_pending()

    # ----- the connection ------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (and again whenever the connection is lost)."""
        if self._dialer is None and not self._closed:
            self._dialer = self.loop.create_task(self._dial())

    async def _dial(self) -> None:
        while not self._closed:
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
                try:
                    await self.loop.sock_connect(sock, self.address)
                except BaseException:
                    sock.close()
                    raise
                _, link = await self.loop.create_unix_connection(lambda: _Link(self), sock=sock)
            except OSError as exc:
                self._down(f"cannot connect: {exc.strerror or exc}")
                await asyncio.sleep(self.retry)
                continue
            if await self._handshake(link):
                self._up(link)
                break
            await asyncio.sleep(self.retry)
        self._dialer = None

    async def _handshake(self, link: _Link) -> bool:
        """Tell anvil which connections this worker holds; it is up once it answers (a
        stopped anvil accepts connections all the same: its kernel does)."""
        assert link.transport is not None
        self._held = self.local.open_counts()
        hold = Hold(next(self._ids), self._held)
        self._hello = hold.id, self.loop.create_future()
        link.transport.write(anvil_wire.encode([hold]))
        try:
            await asyncio.wait_for(self._hello[1], self.timeout)
        except TimeoutError:
            link.transport.abort()
            self._down(f"no answer within {self.timeout:g}s")
            return False
        finally:
            self._hello = None
        return True

    def _up(self, link: _Link) -> None:
        """Connected and answered: from now on anvil decides.  What opened or closed
        since the handshake's snapshot is told first."""
        self._link = link
        self._views.clear()  # a new anvil may know nothing of them
        now = self.local.open_counts()
        for client in self._held.keys() | now.keys():
            change = now.get(client, 0) - self._held.get(client, 0)
            if change > 0:
                self._outbox.append(Hold(0, {client: change}))
            elif change < 0:
                self._outbox.append(Disconnect(client, -change))
        if self._outbox:
            self._schedule_flush()
        self._was_up = True
        if self.degraded:
            self.degraded = False
            metrics.SMTPD_LIMITS_FALLBACK.set(0)
            log.warning("anvil is back: per-client limits hold for the node again")

    def _down(self, why: str) -> None:
        """Anvil cannot be asked: limits per worker until it can (said once)."""
        if self.degraded:
            return
        if not self._was_up and self.clock() - self._born < self.grace:
            return  # anvil is starting with us; the requests meanwhile are decided here
        self.degraded = True
        metrics.SMTPD_LIMITS_FALLBACK.set(1)
        log.warning(
            "anvil unreachable (%s): per-client limits hold per worker until it is back", why
        )

    def lost(self, link: _Link, why: str) -> None:
        """The connection closed or misbehaved: fail what waits, dial again."""
        if link is not self._link:
            return
        self._link = None
        if link.transport is not None:
            link.transport.abort()
        self._outbox.clear()
        self._unsent.clear()
        self._refreshing.clear()
        self._fail_pending()
        if not self._closed:
            self._down(why)
            self.loop.call_later(self.retry, self.start)

    def answered(self, answers: list[Counts]) -> None:
        pending, hello, refreshing = self._pending, self._hello, self._refreshing
        for answer in answers:
            refresh = refreshing.pop(answer.id, None)
            if refresh is not None:
                # never below the view: it holds additions made after this Add was sent
                key = refresh[0]
                self._see(key, max(answer.rate, self._views.get(key, 0)))
                continue
            if hello is not None and answer.id == hello[0]:
                if not hello[1].done():
                    hello[1].set_result(answer)
                continue
            entry = pending.pop(answer.id, None)
            if entry is not None and not entry[1].done():
                entry[1].set_result(answer)

    # ----- requests -------------------------------------------------------------------

    def _ask(self, request: Connect | Add) -> asyncio.Future[Counts]:
        future: asyncio.Future[Counts] = self.loop.create_future()
        self._pending[request.id] = (self.clock(), future)
        self._send(request)
        self._watch_answers()
        return future

    def _watch_answers(self) -> None:
        if self._watch is None:
            self._watch = self.loop.call_later(self.timeout, self._check_slow)

    def _send(self, request: Request) -> None:
        self._outbox.append(request)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_handle is None:
            # the next turn of the loop: every request made in this one goes in one frame
            self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        link = self._link
        if link is None or link.transport is None:
            return
        outbox, self._outbox = self._outbox, []
        if self._unsent:
            now = self.clock()
            for (kind, client), amount in self._unsent.items():
                request = Add(next(self._ids), kind, client, amount)
                self._refreshing[request.id] = (kind, client), now
                outbox.append(request)
            self._unsent.clear()
            self._watch_answers()
        if not outbox:
            return
        link.transport.write(anvil_wire.encode(outbox))

    def _check_slow(self) -> None:
        self._watch = None
        # the oldest of each kind of question (dicts keep the order they were asked in)
        sent = [next(iter(self._refreshing.values()))[1]] if self._refreshing else []
        if self._pending:
            sent.append(next(iter(self._pending.values()))[0])
        if not sent:
            return
        due = min(sent) + self.timeout
        if self.clock() >= due:
            if self._link is not None:
                self.lost(self._link, f"no answer within {self.timeout:g}s")
        else:
            self._watch = self.loop.call_later(max(0.0, due - self.clock()), self._check_slow)

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, {}
        for _, future in pending.values():
            if not future.done():
                future.set_exception(AnvilUnavailableError())
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
