"""DKIM signatures made off the delivery agent's event loop, by one thread of its own.

:class:`SigningThread` takes messages from the loop (:meth:`sign` is awaited) and signs them
in the order they came, one at a time, in a daemon thread; each result is handed back to the
loop as soon as it is made.  Nothing else runs in that thread, so signatures never wait for
a DNS lookup or a file read in the default executor, and the loop never waits for them.

Why a thread, measured (``python -m bench.dkim``, bench/README.md; a loaded two-core
machine).  Jobs come to the agent in bursts (every job of one read of the queue manager's
socket starts at once); signed inline, each at its start, a burst of 200 held the loop for
270-310 ms with RSA-2048 and 80-110 ms with Ed25519, and every other delivery of the process
(SMTP replies, timeouts, results to the queue manager) waited that long.  With this thread
the loop's worst lag was 4-13 ms: dkimpy's canonicalisation and hashing are Python and hold
the GIL (so the interpreter's 5 ms switch interval shows), while OpenSSL's RSA private-key
operation, over half of an RSA signature's CPU, releases it and runs beside the loop on the
other core.  End to end (1 KiB, 50 sessions, the same run, 4 interleaved runs each) the
thread against inline signing: RSA 417 against 355 msgs/s for 2.88 against 2.51 CPU ms per
message (the GIL hand-offs cost about 0.3 ms), Ed25519 740 against 520 msgs/s for 1.44
against 1.58 ms.  ``run_in_executor`` did the same with more CPU per hop for Ed25519; a
one-process pool frees the loop wholly but pickles each message both ways and signed the
fewest a second: more CPU per message is fewer messages on cores that are busy relaying.
A faster backend is in already (OpenSSL for RSA, :mod:`mta.delivery.signing`); what is left
is dkimpy's Python, which no backend swap removes.

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
