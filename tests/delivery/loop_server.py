"""What the test servers (CaptureSink, DnsServer) share: a thread of their own running an
asyncio loop, and one way to start and stop it.

The tests are synchronous, yet a server must keep answering while a test blocks inside a
client call; so each server owns a loop in a thread of its own, and the test thread
touches it only through :meth:`LoopThread.run`.

Invariants:

- :meth:`LoopServer.start` returns once the server listens (its ``port`` is then the
  real one), or raises, and then leaves no thread behind.
- :meth:`LoopServer.stop` closes the listeners, aborts every connection, lets the loop
  run their ``connection_lost`` and joins the thread; calling it twice is harmless.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from collections.abc import Set as AbstractSet
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

__all__ = ["LoopServer", "LoopThread"]

T = TypeVar("T")
START_SECONDS = 10.0  # for the thread to run its loop, and for a coroutine sent to it
ACCEPT_TURNS = 3  # loop turns from accept(2) to connection_made (TLS: the handshake later)


class LoopThread:
    """An asyncio event loop running forever in a daemon thread, ready once constructed."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        if not self._ready.wait(START_SECONDS):
            raise RuntimeError(f"{name}: the event loop did not start")

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
        finally:
            self._abort_transports()
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def _abort_transports(self) -> None:
        """Abort whatever connection is still open when the loop stops (one that slipped
        past a server's own shutdown: accepted in the same turn that closed the listener), and
        let its ``connection_lost`` run: a transport left behind with a closed loop is only
        freed by a later garbage collection, whose ResourceWarning fails whatever test is
        running then.  ``_transports`` is the selector loop's own registry (fd → transport)."""
        transports = getattr(self.loop, "_transports", {})
        for transport in list(transports.values()):
            transport.abort()
        for _ in range(ACCEPT_TURNS):
            self.loop.run_until_complete(asyncio.sleep(0))

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = START_SECONDS) -> T:
        """Run ``coro`` on the loop and return its result (or raise its exception) here."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Stop the loop and wait for its thread to end."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(START_SECONDS)


class _Abortable(Protocol):
    def abort(self) -> None: ...


class LoopServer:
    """Base of a test server whose sockets live on a :class:`LoopThread`.

    A subclass writes :meth:`_listen` and :meth:`_shutdown` (coroutines run on the loop)
    and reaches the loop with :meth:`_call`; a context manager starts and stops it.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._loop: LoopThread | None = None  # set while started

    def start(self) -> Self:
        if self._loop is not None:
            return self
        loop = LoopThread(f"{type(self).__name__}:{self.host}:{self.port}")
        try:
            loop.run(self._listen())
        except BaseException:
            loop.close()
            raise
        self._loop = loop
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        loop, self._loop = self._loop, None
        try:
            loop.run(self._shutdown())
        finally:
            loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the server's loop (from the test thread); its result."""
        if self._loop is None:
            coro.close()
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._loop.run(coro)

    # -- for the subclass, on the loop thread -------------------------------------------

    async def _listen(self) -> None:
        raise NotImplementedError

    async def _shutdown(self) -> None:
        raise NotImplementedError

    @staticmethod
    async def _abort_all(connections: AbstractSet[_Abortable]) -> None:
        """Abort every connection in ``connections`` (which their ``connection_lost``
        empties), and let those callbacks run so that no socket outlives the loop.

        A connection accepted just before the listener closed is still being made (a task
        of the loop's own): a few turns of the loop first let it reach ``connections``."""
        for _ in range(ACCEPT_TURNS):
            await asyncio.sleep(0)
        for connection in list(connections):
            connection.abort()
        for _ in range(100):  # (two hops of the loop for TLS)
            if not connections:
                return
            await asyncio.sleep(0.001)
