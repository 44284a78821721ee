"""DKIM signatures off the delivery agent's event loop (mta/delivery/sign_thread.py): the
loop goes on while a signature is made, each caller gets its own signature, in order, and
a failure in signing is raised in the caller's task."""

from __future__ import annotations

import asyncio
import threading

import pytest
import uvloop

from mta.delivery.sign_thread import SigningThread

pytestmark = pytest.mark.timeout(30)


def run(coroutine_function):  # type: ignore[no-untyped-def]
    loop = uvloop.new_event_loop()  # as the delivery agent runs
    try:
        return loop.run_until_complete(coroutine_function())
    finally:
        loop.close()


def test_the_loop_runs_on_while_a_signature_is_made() -> None:
    release = threading.Event()
    signed_in: list[str] = []

    def slow_sign(message: bytes) -> bytes:
        signed_in.append(threading.current_thread().name)
        assert release.wait(10), "the loop never got to release the signature"
        return b"DKIM-Signature: " + message

    async def main() -> None:
        signing = SigningThread(slow_sign)
        task = asyncio.ensure_future(signing.sign(b"one"))
        while not signed_in:  # the loop ticks while the thread holds the signature
            await asyncio.sleep(0.001)
        for _ in range(3):
            await asyncio.sleep(0.001)
        assert not task.done()
        release.set()
        assert await task == b"DKIM-Signature: one"
        signing.close()

    run(main)
    assert signed_in == ["dkim-sign"]


def test_every_caller_gets_its_own_signature_in_order() -> None:
    order: list[bytes] = []

    def sign(message: bytes) -> bytes | None:
        order.append(message)
        return None if message == b"unsigned" else b"sig " + message

    async def main() -> list[bytes | None]:
        signing = SigningThread(sign)
        messages = [b"m%d" % i for i in range(50)] + [b"unsigned"]
        results = await asyncio.gather(*(signing.sign(m) for m in messages))
        signing.close()
        assert order == messages
        return results

    results = run(main)
    assert results[:2] == [b"sig m0", b"sig m1"] and results[-1] is None
    assert len(results) == 51


def test_a_failure_in_signing_is_raised_in_the_callers_task_and_the_thread_goes_on() -> None:
    def sign(message: bytes) -> bytes:
        if message == b"bad":
            raise RuntimeError("a bug in signing")
        return b"ok"

    async def main() -> None:
        signing = SigningThread(sign)
        with pytest.raises(RuntimeError, match="a bug in signing"):
            await signing.sign(b"bad")
        assert await signing.sign(b"good") == b"ok"
        signing.close()

    run(main)
