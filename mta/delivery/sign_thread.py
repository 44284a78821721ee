"""DKIM signatures made off the delivery agent's event loop, by one thread of its own.

:class:`SigningThread` takes messages from the loop (:meth:`sign` is awaited) and signs them
in the order they came, one at a time, in a daemon thread; each result is handed back to the
loop as soon as it is made.  Nothing else runs in that thread, so signatures never wait for
a DNS lookup or a file read in the default executor, and the loop never waits for them.

Why a thread, measured (``python -m bench.dkim``, bench/README.md): jobs come to the agent
in bursts (every job of one read of the queue manager's socket starts at once) and each
signed inline at its start, so a burst of 200 held the loop for 260 ms with RSA-2048 and
80 ms with Ed25519: every other delivery of the process (SMTP replies, timeouts, results
to the queue manager) waited that long.  In the thread the loop's worst lag was about
10 ms (the interpreter's switch interval: dkimpy's canonicalisation and hashing are Python
and hold the GIL) while OpenSSL's RSA private-key operation, 60% of an RSA signature's CPU
here, releases the GIL and runs beside the loop on another core.  A process pool would
free the loop wholly, but it pickles each message both ways, costs more CPU per message
than the thread hop and signed fewer messages a second on two cores: more CPU per message
is fewer messages a second on a machine whose cores are busy relaying.

Invariants: one signature per :meth:`sign` call, results in the caller's task (an
exception in signing, a bug, is raised there); a task cancelled while waiting leaves its
signature unused.  Failures: none of its own.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable

__all__ = ["SigningThread"]

Sign = Callable[[bytes], "bytes | None"]
_Work = tuple[bytes, asyncio.AbstractEventLoop, "asyncio.Future[bytes | None]"]


class SigningThread:
    def __init__(self, sign: Sign, name: str = "dkim-sign") -> None:
        self._sign = sign
        self._name = name
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def sign(self, message: bytes) -> bytes | None:
        """The signature ``sign(message)`` returns, made in the thread."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes | None] = loop.create_future()
        if self._thread is None:  # started on first use: after fork, in the agent
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        self._work.put((message, loop, future))
        return await future

    def close(self) -> None:
        """Let the thread end once the signatures asked for are made."""
        if self._thread is not None:
            self._work.put(None)
            self._thread = None

    def _run(self) -> None:
        while (work := self._work.get()) is not None:
            message, loop, future = work
            try:
                header = self._sign(message)
            except Exception as exc:  # noqa: BLE001 - raised in the task that asked (_fail)
                loop.call_soon_threadsafe(_fail, future, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, header)


def _settle(future: asyncio.Future[bytes | None], header: bytes | None) -> None:
    if not future.done():  # the task was cancelled meanwhile
        future.set_result(header)


def _fail(future: asyncio.Future[bytes | None], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
