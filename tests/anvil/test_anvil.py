"""The anvil server and the workers' client (AnvilStore), in this process, over real Unix
sockets: shared counts, one frame per loop turn, a worker's counts dropped with its
connection, and the fallback when anvil is absent, slow or restarted."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable

import pytest

from mta.anvil.server import AnvilServer
from mta.policy import anvil_wire
from mta.policy.anvil_client import AnvilStore
from mta.policy.anvil_wire import Request

pytestmark = pytest.mark.timeout(30)

_serial = iter(range(1_000_000))


def address() -> str:
    return f"\0mta-anvil-test-{os.getpid()}-{next(_serial)}"


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


class RecordingServer(AnvilServer):
    """Remembers how many requests each frame carried."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[int] = []

    def handle(self, link, requests: list[Request]):  # type: ignore[no-untyped-def]
        self.frames.append(len(requests))
        return super().handle(link, requests)


async def up(store: AnvilStore) -> None:
    store.start()
    while store._link is None:  # connected and answered
        await asyncio.sleep(0.005)


def store_for(where: str, **kwargs: float) -> AnvilStore:
    kwargs.setdefault("retry", 0.05)
    return AnvilStore(where, asyncio.get_running_loop(), **kwargs)


def test_workers_share_counts_and_a_loop_turn_is_one_frame() -> None:
    async def test() -> None:
        where = address()
        anvil = RecordingServer()
        server = await anvil.listen(where)
        first, second = store_for(where), store_for(where)
        await up(first)
        await up(second)
        anvil.frames.clear()
        counts = await asyncio.gather(*(first.connect("192.0.2.1") for _ in range(5)))
        assert sorted(counts) == [(n, n) for n in range(1, 6)]
        assert anvil.frames == [5]  # five sessions asked in one turn: one frame
        assert await second.connect("192.0.2.1") == (6, 6)  # the other worker sees them
        assert await second.add("mail", "192.0.2.1", 1) == 1
        assert await first.add("mail", "192.0.2.1", 2) == 3
        first.disconnect("192.0.2.1")
        assert await second.connect("192.0.2.1") == (6, 7)
        first.close()  # the worker is gone: its four remaining connections stop counting
        await asyncio.sleep(0.05)
        assert anvil.counters.open("192.0.2.1") == 2
        second.close()
        server.close()

    run(test)


def test_without_anvil_the_worker_counts_alone_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        where = address()
        store = store_for(where, grace=0)
        store.start()
        assert await store.connect("c") == (1, 1)
        assert await store.connect("c") == (2, 2)
        assert await store.add("rcpt", "c", 3) == 3
        await asyncio.sleep(0.2)  # several attempts to connect
        assert store.degraded
        # anvil starts: the worker tells it the two connections it holds
        anvil = AnvilServer()
        server = await anvil.listen(where)
        await up(store)
        assert not store.degraded
        assert await store.connect("c") == (3, 1)
        store.close()
        server.close()

    with caplog.at_level(logging.WARNING, "mta.smtpd"):
        run(test)
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "anvil unreachable" in m]) == 1
    assert len([m for m in messages if "anvil is back" in m]) == 1


def test_a_silent_anvil_times_out_and_the_request_is_decided_locally() -> None:
    async def test() -> None:
        where = address()
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        silent.bind(where)
        silent.listen()  # accepts (the kernel does) and never answers
        store = store_for(where, timeout=0.1, grace=0)
        store.start()
        await asyncio.sleep(0.3)
        assert store._link is None and store.degraded  # the handshake went unanswered
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await store.add("mail", "c", 1) == 1
        assert loop.time() - started < 0.05  # no waiting on anvil while it is down
        store.close()
        silent.close()

    run(test)


def test_anvil_going_slow_after_it_answered_falls_back_within_the_timeout() -> None:
    async def test() -> None:
        where = address()
        anvil = AnvilServer()
        server = await anvil.listen(where)
        store = store_for(where, timeout=0.2, grace=0, retry=10)
        await up(store)
        [link] = anvil.links
        assert link.transport is not None
        link.transport.pause_reading()  # anvil stops reading this worker's requests
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await store.add("mail", "c", 1) == 1  # decided locally
        assert 0.15 < loop.time() - started < 1.0
        assert store.degraded and store._link is None
        store.close()
        server.close()

    run(test)


def test_anvil_drops_a_peer_that_sends_garbage() -> None:
    async def test() -> None:
        where = address()
        anvil = AnvilServer()
        server = await anvil.listen(where)
        reader, writer = await asyncio.open_unix_connection(where)
        good = anvil_wire.encode([anvil_wire.Connect(1, "c")])
        writer.write(good)
        data = await reader.read(100)
        assert anvil_wire.FrameReader(anvil_wire.Counts).feed(data) == [anvil_wire.Counts(1, 1, 1)]
        writer.write(b"\x00\x00\x00\x02\xc1\xc1")
        assert await reader.read() == b""  # closed
        await asyncio.sleep(0.01)
        assert anvil.counters.open("c") == 0  # what it held is released
        writer.close()
        server.close()

    run(test)


def test_far_below_the_limit_additions_need_no_wait_and_go_as_one_add_per_turn() -> None:
    async def test() -> None:
        where = address()
        anvil = RecordingServer()
        server = await anvil.listen(where)
        store = store_for(where, timeout=0.2, grace=0, retry=10)
        other = store_for(where)
        await up(store)
        await up(other)
        assert store.add_now("mail", "c", 1, 1000) is None  # no view yet: ask
        assert await store.add("mail", "c", 1) == 1
        anvil.frames.clear()
        assert [store.add_now("mail", "c", 1, 1000) for _ in range(50)] == list(range(2, 52))
        await asyncio.sleep(0.05)
        assert anvil.frames == [1]  # fifty additions, one Add
        assert await other.add("mail", "c", 10) == 61  # the node's count has them
        assert store.add_now("mail", "c", 1, 1000) == 52  # its view lags by others' adds...
        await asyncio.sleep(0.05)
        assert store.add_now("mail", "c", 1, 1000) == 63  # ...until the next answer
        assert store.add_now("mail", "c", 1, 63) is None  # past the ceiling: ask
        # anvil stops answering: unanswered additions make it count as down too
        other.close()
        await asyncio.sleep(0.05)
        [link] = anvil.links
        assert link.transport is not None
        link.transport.pause_reading()
        store.add_now("mail", "c", 1, 1000)
        await asyncio.sleep(0.4)
        assert store.degraded
        store.close()
        server.close()

    run(test)
