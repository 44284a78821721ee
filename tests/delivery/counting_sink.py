"""CountingSink: a CaptureSink that also counts what destination shaping is about.

* transactions in progress (from an accepted MAIL to the reply after the data), the most
  seen at once, and how many were in progress when each one began (``levels``);
* when each transaction began (``starts``, monotonic seconds), for rates;
* ``hold``: seconds to wait before answering the end of data, so that transactions
  overlap and the concurrency is visible.

Connections are counted by CaptureSink itself (``connections``), also those it greets with
``greeting_reply`` (a 421: a dead destination that still accepts TCP).
"""

from __future__ import annotations

import asyncio
import threading
import time

from tests.delivery.sink import CaptureSink, _SinkProtocol

__all__ = ["CountingSink"]


class _CountingProtocol(_SinkProtocol):
    sink: CountingSink

    def __init__(self, sink: CountingSink) -> None:
        super().__init__(sink)
        self.open = False  # a transaction of this connection is being counted
        self.held = False  # its end of data has waited already

    def take_command(self) -> bool:
        before = self.mail_from
        taken = super().take_command()
        if before is None and self.mail_from is not None:  # MAIL was accepted
            self.open = True
            self.sink._begin()
        elif self.open and self.mail_from is None:  # RSET, EHLO: no transaction now
            self._end()
        return taken

    def take_message(self) -> bool:
        hold = self.sink.hold
        complete = self.buffer.find(b"\r\n.\r\n", self.scan) >= 0
        if hold and complete and not self.held:
            self.held, self.paused = True, True
            asyncio.get_running_loop().call_later(hold, self._resume)
            return False
        taken = super().take_message()
        if taken:
            self.held = False
            self._end()
        return taken

    def _resume(self) -> None:
        if not self.transport.is_closing():
            self.paused = False
            self.process()

    def _end(self) -> None:
        if self.open:
            self.open = False
            self.sink._finish()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()
        super().connection_lost(exc)


class CountingSink(CaptureSink):
    def __init__(self, *args: object, hold: float = 0.0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.hold = hold
        self.active = 0
        self.most = 0
        self.levels: list[int] = []
        self.starts: list[float] = []
        self._count_lock = threading.Lock()

    def _begin(self) -> None:
        with self._count_lock:
            self.active += 1
            self.most = max(self.most, self.active)
            self.levels.append(self.active)
            self.starts.append(time.monotonic())

    def _finish(self) -> None:
        with self._count_lock:
            self.active -= 1

    async def _listen(self) -> None:
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _CountingProtocol(self), self.host, self.port
        )
        self.port = self._server.sockets[0].getsockname()[1]
