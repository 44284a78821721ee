"""The spool layout and the group committer, on a real file system and a real uvloop loop."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from mta.queue import durable
from mta.queue.commit import GroupCommitter
from mta.queue.spool import IN_MEMORY_MAX, MEMORY_BUDGET, STATES, MessageWriter, Spool
from tests.queue.messages import finished_message

T = TypeVar("T")


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro_fn())


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    spool = Spool(str(tmp_path / "spool"))
    spool.create()
    return spool


def names(spool: Spool, state: str) -> list[str]:
    return sorted(os.listdir(spool.dir(state)))


def in_segments(spool: Spool) -> list[str]:
    """Queue IDs of the messages in segments, in the order they were appended."""
    return [ref.queue_id for ref in spool.segment_messages()]


def large_message(spool: Spool) -> MessageWriter:
    """A finished message too large to stay in memory: it has its own file in tmp/."""
    writer = finished_message(spool, b"x" * 1_200_000 + b"\r\n")
    assert not writer.in_memory
    return writer


# ----- the spool ----------------------------------------------------------------------------


def test_create_makes_every_state_directory(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "new" / "spool"))
    spool.create()
    for state in STATES:
        assert os.path.isdir(spool.dir(state))
        assert os.listdir(spool.dir(state)) == []  # the write probe leaves nothing behind
    spool.create()  # idempotent


def test_spool_path_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spool = Spool("spool")
    assert spool.path == str(tmp_path / "spool")


def test_writer_is_invisible_until_committed_and_discard_removes(spool: Spool) -> None:
    writer = finished_message(spool)
    assert names(spool, "incoming") == []
    writer.persist()  # what the committer does first: the complete file, still in tmp/
    assert names(spool, "tmp") == [writer.queue_id]
    assert names(spool, "incoming") == []
    writer.discard()
    assert names(spool, "tmp") == []
    writer.discard()  # twice is harmless


def test_writer_refuses_to_overwrite(spool: Spool) -> None:
    writer = finished_message(spool)
    writer.persist()
    twin = spool.new_message(writer.queue_id)
    twin.write(b"other")
    with pytest.raises(FileExistsError):
        twin.persist()
    writer.discard()


def test_move_and_list(spool: Spool) -> None:
    writers = [finished_message(spool) for _ in range(3)]
    for writer in reversed(writers):
        writer.persist()
        spool.move(writer.queue_id, "tmp", "deferred")
    assert spool.list("deferred") == sorted(w.queue_id for w in writers)
    assert spool.list("tmp") == []
    assert spool.list("no-such-state") == []
    message = spool.read("deferred", writers[0].queue_id)
    assert message.read_message() == b"Subject: t\r\n\r\nbody\r\n"


# ----- the group committer --------------------------------------------------------------


def test_many_messages_are_committed_in_batches(spool: Spool) -> None:
    count = 200
    writers = [finished_message(spool, b"message %d\r\n" % i) for i in range(count)]
    writers.insert(100, large_message(spool))

    async def main() -> tuple[list[OSError | None], set[int], int]:
        loop = asyncio.get_running_loop()
        committer = GroupCommitter(spool, loop)
        results: list[OSError | None] = []
        threads: set[int] = set()
        all_done = loop.create_future()

        def done(error: OSError | None) -> None:
            results.append(error)
            threads.add(threading.get_ident())
            if len(results) == len(writers):
                all_done.set_result(None)

        try:
            for writer in writers:
                committer.submit(writer, done)
            await asyncio.wait_for(all_done, 20)
        finally:
            committer.stop()
        assert committer.committed == len(writers)
        return results, threads, committer.batches

    results, threads, batches = run(main)
    assert results == [None] * len(writers)
    assert threads == {threading.get_ident()}  # callbacks run on the event loop's thread
    assert 1 <= batches < count  # one flush carried many messages
    large = writers.pop(100)
    assert names(spool, "incoming") == [large.queue_id]  # the large one has its own file
    assert spool.read("incoming", large.queue_id).read_message() == b"x" * 1_200_000 + b"\r\n"
    assert in_segments(spool) == [w.queue_id for w in writers]  # the small ones, in order
    assert names(spool, "tmp") == []
    for i, writer in enumerate(writers):
        assert writer.fd == -1  # nothing left open
        found = spool.find(writer.queue_id)
        assert found is not None
        assert found[0] == "active"
        assert found[1].read_message() == b"message %d\r\n" % i


def test_lone_message_is_committed_promptly(spool: Spool) -> None:
    async def main() -> tuple[OSError | None, float]:
        loop = asyncio.get_running_loop()
        committer = GroupCommitter(spool, loop)
        try:
            await asyncio.sleep(0.05)  # the flushing thread is idle, waiting
            writer = finished_message(spool)
            future: asyncio.Future[OSError | None] = loop.create_future()
            started = time.monotonic()
            committer.submit(writer, future.set_result)
            error = await asyncio.wait_for(future, 5)
            return error, time.monotonic() - started
        finally:
            committer.stop()

    error, elapsed = run(main)
    assert error is None
    assert elapsed < 1.0
    assert len(in_segments(spool)) == 1


def test_file_commit_failure_reaches_the_callbacks(spool: Spool) -> None:
    async def main() -> tuple[list[OSError | None], OSError | None]:
        loop = asyncio.get_running_loop()
        committer = GroupCommitter(spool, loop)
        try:
            broken = large_message(spool)
            broken.close()
            os.unlink(broken.tmp_path)
            os.mkdir(broken.tmp_path)  # something squats on its name: writing it fails
            failed: asyncio.Future[OSError | None] = loop.create_future()
            committer.submit(broken, failed.set_result)
            first = await asyncio.wait_for(failed, 5)
            # the committer survives a failed flush: the next message still goes through
            later: asyncio.Future[OSError | None] = loop.create_future()
            committer.submit(large_message(spool), later.set_result)
            second = await asyncio.wait_for(later, 5)
            return [first], second
        finally:
            committer.stop()

    (error,), after = run(main)
    assert isinstance(error, OSError)
    assert after is None
    assert len(names(spool, "incoming")) == 1


def test_segment_failure_reaches_the_callbacks_and_the_next_batch_recovers(
    spool: Spool,
) -> None:
    segments = os.path.join(spool.path, "segments")

    async def main() -> tuple[OSError | None, OSError | None]:
        loop = asyncio.get_running_loop()
        committer = GroupCommitter(spool, loop)
        try:
            os.rename(segments, segments + ".away")  # no segment can be created now
            failed: asyncio.Future[OSError | None] = loop.create_future()
            committer.submit(finished_message(spool), failed.set_result)
            first = await asyncio.wait_for(failed, 5)
            os.rename(segments + ".away", segments)
            later: asyncio.Future[OSError | None] = loop.create_future()
            committer.submit(finished_message(spool), later.set_result)
            second = await asyncio.wait_for(later, 5)
            return first, second
        finally:
            committer.stop()

    error, after = run(main)
    assert isinstance(error, OSError)
    assert error.errno == errno.ENOENT
    assert after is None
    assert len(in_segments(spool)) == 1


def test_stop_flushes_what_is_queued(spool: Spool) -> None:
    writers = [finished_message(spool) for _ in range(5)]

    async def main() -> list[OSError | None]:
        loop = asyncio.get_running_loop()
        committer = GroupCommitter(spool, loop)
        results: list[OSError | None] = []
        for writer in writers:
            committer.submit(writer, results.append)
        committer.stop()
        await asyncio.sleep(0)  # let the callbacks scheduled by the thread run
        await asyncio.sleep(0)
        return results

    results = run(main)
    assert in_segments(spool) == [w.queue_id for w in writers]
    assert names(spool, "tmp") == []
    assert results == [None] * 5


def test_a_message_up_to_a_mebibyte_stays_in_memory_and_goes_into_a_segment(
    spool: Spool,
) -> None:
    body = b"y" * (IN_MEMORY_MAX - 1000)
    writer = finished_message(spool, body)
    assert writer.in_memory and names(spool, "tmp") == []
    assert spool.memory.free == MEMORY_BUDGET - len(body)
    _commit_all(spool, [writer])
    assert spool.memory.free == MEMORY_BUDGET  # given back once it is in the segment
    [ref] = spool.segment_messages()
    assert spool.read_segment_message(ref).read_message() == body


def test_messages_go_to_files_once_the_memory_budget_is_spent(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "spool"), memory_budget=250_000)
    spool.create()
    held = [finished_message(spool, b"z" * 100_000) for _ in range(2)]
    spilled = finished_message(spool, b"w" * 100_000)  # does not fit: streamed to a file
    assert [w.in_memory for w in held] == [True, True]
    assert not spilled.in_memory and names(spool, "tmp") == [spilled.queue_id]
    assert spool.memory.free == 50_000
    held[0].discard()  # a client that went away gives its share back
    assert spool.memory.free == 150_000
    later = finished_message(spool, b"v" * 100_000)
    assert later.in_memory
    _commit_all(spool, [held[1], spilled, later])
    assert spool.memory.free == 250_000
    assert names(spool, "incoming") == [spilled.queue_id]
    assert [r.queue_id for r in spool.segment_messages()] == [held[1].queue_id, later.queue_id]


def _commit_all(spool: Spool, writers: list[MessageWriter]) -> None:
    async def main() -> list[OSError | None]:
        loop = asyncio.get_running_loop()
        committer = GroupCommitter(spool, loop)
        futures = []
        try:
            for writer in writers:
                future: asyncio.Future[OSError | None] = loop.create_future()
                committer.submit(writer, future.set_result)
                futures.append(future)
            return list(await asyncio.wait_for(asyncio.gather(*futures), 10))
        finally:
            committer.stop()

    assert run(main) == [None] * len(writers)


def test_a_file_whose_directory_flush_failed_is_never_visible_in_incoming(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large message is named in incoming/ only once incoming/ was fsynced: until then
    the queue manager cannot claim it, and after a failed flush it is gone (451)."""
    seen: list[list[str]] = []

    def failing_fsync(fd: int) -> None:
        seen.append(os.listdir(spool.dir("incoming")))  # what a reader sees meanwhile
        raise OSError(errno.EIO, "injected")

    async def main() -> OSError | None:
        loop = asyncio.get_running_loop()
        committer = GroupCommitter(spool, loop)
        try:
            writer = large_message(spool)
            monkeypatch.setattr(durable, "fsync", failing_fsync)
            failed: asyncio.Future[OSError | None] = loop.create_future()
            committer.submit(writer, failed.set_result)
            return await asyncio.wait_for(failed, 5)
        finally:
            monkeypatch.undo()
            committer.stop()

    error = run(main)
    assert isinstance(error, OSError)
    assert len(seen) == 1 and all(name.startswith(".") for name in seen[0])
    assert names(spool, "incoming") == []
