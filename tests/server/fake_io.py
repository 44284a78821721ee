"""Running ``SMTPProtocol`` in the test process, over a fake transport (as uvicorn tests its
protocols): no sockets and no process tree, but a real Spool, the real group committer and
a real event loop whose clock the test moves.

* :class:`FakeTransport` records what the protocol does to its connection: writes, close,
  pause and resume of reading.  Like a real transport it reports the close to the protocol
  (``connection_lost``) from the loop, a moment later.
* :class:`ClockLoop` is an asyncio loop whose clock a test can move forward, so the idle
  timer fires without waiting for it.
* :class:`HeldCommitter` is the real group committer, except that a test can hold what is
  submitted and let it go later (or fail it), to see what happens meanwhile.
* :class:`Connection` is one client: bytes in, replies out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgspec

from mta.config import Config
from mta.protocol.session import ParserBackend
from mta.queue.commit import GroupCommitter
from mta.queue.spool import MessageWriter, Spool
from mta.server.context import WorkerContext
from mta.server.listeners import ListenerState
from mta.server.smtpd import SMTPProtocol

__all__ = [
    "ClockLoop",
    "Connection",
    "FakeSocket",
    "FakeTransport",
    "HeldCommitter",
    "make_context",
]

Done = Callable[[OSError | None], None]


class FakeSocket:
    """What ``get_extra_info("socket")`` gives: here only a descriptor number."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


class FakeTransport(asyncio.Transport):
    """What a stream transport offers the protocol, recorded (``socket_fd``: the number
    its socket reports, none by default)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, peer: str, socket_fd: int | None = None
    ) -> None:
        super().__init__()
        self.loop = loop
        self.peer = (peer, 40025)
        self.socket = FakeSocket(socket_fd) if socket_fd is not None else None
        self.protocol: asyncio.BaseProtocol | None = None
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.reading = True
        self.pauses = 0  # how often reading was paused

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket" and self.socket is not None:
            return self.socket
        return self.peer if name == "peername" else default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, f"write after close: {bytes(data)!r}"
        self.writes.append(bytes(data))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.protocol is not None:
                self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        assert self.reading, "paused twice"
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        assert not self.reading, "resumed while reading"
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading


class ClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock runs ahead of real time by what :meth:`advance` added.

    An exception in a callback (which a loop only logs) is kept in :attr:`errors`, for the
    test to fail on.
    """

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0
        self.errors: list[dict[str, Any]] = []
        self.set_exception_handler(lambda loop, context: self.errors.append(context))

    def time(self) -> float:
        return super().time() + self.offset

    def advance(self, seconds: float) -> None:
        """Move the clock and run what became due (timers) and what they scheduled."""
        self.offset += seconds
        for _ in range(3):
            self.run_until_complete(asyncio.sleep(0))

    def run_until(self, predicate: Callable[[], object], timeout: float = 10.0) -> None:
        """Run the loop until ``predicate()`` is true (real time, for the commit thread)."""

        async def wait() -> None:
            deadline = time.monotonic() + timeout
            while not predicate():
                if time.monotonic() > deadline:
                    raise AssertionError(f"condition not met within {timeout}s")
                await asyncio.sleep(0.001)

        self.run_until_complete(wait())


class HeldCommitter(GroupCommitter):
    """The real group committer; while ``holding``, submissions wait for :meth:`release`."""

    def __init__(self, spool: Spool, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(spool, loop)
        self.holding = False
        self.held: list[tuple[MessageWriter, Done]] = []

    def submit(self, writer: MessageWriter, done: Done) -> None:
        if self.holding:
            self.held.append((writer, done))
        else:
            super().submit(writer, done)

    def release(self, error: OSError | None = None) -> None:
        """Commit what is held (and stop holding), or report ``error`` for all of it."""
        held, self.held = self.held, []
        self.holding = False
        for writer, done in held:
            if error is None:
                super().submit(writer, done)
            else:
                done(error)


def make_context(
    loop: asyncio.AbstractEventLoop,
    spool: Spool,
    parser: ParserBackend,
    sections: dict[str, Any] | None = None,
    **smtp: Any,
) -> WorkerContext:
    """A worker's context around ``loop`` and ``spool``; ``smtp`` overrides [smtp] keys,
    ``sections`` other top-level keys (``listeners``, ``relay``).  Per-client connection
    limits are off unless ``sections`` set them (their check would hold every greeting back
    for a turn of the loop); tests/policy and tests/server/test_limits_stage turn them on."""
    settings = {
        "hostname": "mx.test",
        "queue": {"path": spool.path},
        "smtp": smtp,
        "limits": {"connections": 0},
    }
    settings.update(sections or {})
    config = msgspec.convert(settings, Config)
    spool.create()
    return WorkerContext(config, spool, HeldCommitter(spool, loop), loop, parser)


class Connection:
    """One client of the protocol under test."""

    def __init__(
        self,
        ctx: WorkerContext,
        peer: str = "127.0.0.1",
        socket_fd: int | None = None,
        listener: ListenerState | None = None,
    ) -> None:
        self.transport = FakeTransport(ctx.loop, peer, socket_fd)
        self.protocol = SMTPProtocol(ctx, listener)
        self.transport.set_protocol(self.protocol)
        self.protocol.connection_made(self.transport)
        self._taken = 0  # writes already returned by output()

    def send(self, data: bytes) -> None:
        self.protocol.data_received(data)

    def has_output(self) -> bool:
        """Something was written since the last :meth:`writes` or :meth:`replies`."""
        return len(self.transport.writes) > self._taken

    def writes(self) -> list[bytes]:
        """The writes since the last call (each one ``transport.write``)."""
        new = self.transport.writes[self._taken :]
        self._taken = len(self.transport.writes)
        return new

    def replies(self) -> list[bytes]:
        """The replies written since the last call, one per complete (multi-line) reply."""
        result: list[bytes] = []
        current = b""
        for line in b"".join(self.writes()).splitlines(keepends=True):
            current += line
            if line[3:4] != b"-":
                result.append(current)
                current = b""
        assert current == b"", f"unfinished reply {current!r}"
        return result

    def codes(self) -> list[bytes]:
        return [reply[:3] for reply in self.replies()]

    def lose(self, exc: Exception | None = None) -> None:
        """The client vanished (``exc`` is what the transport would report)."""
        self.transport.closed = True
        self.protocol.connection_lost(exc)
