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

from mta.queue.commit import GroupCommitter
from mta.queue.envelope import Envelope, Recipient
from mta.queue.ids import new_queue_id
from mta.queue.spool import STATES, MessageWriter, Spool

T = TypeVar("T")
MODES = ["syncfs", "fsync"]


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro_fn())


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    spool = Spool(str(tmp_path / "spool"))
    spool.create()
    return spool


def finished_message(spool: Spool, body: bytes = b"Subject: t\r\n\r\nbody\r\n") -> MessageWriter:
    """A message written to tmp/ and finished, ready to be committed."""
    writer = spool.new_message(new_queue_id())
    writer.write(body)
    writer.finish(
        Envelope(
            queue_id=writer.queue_id,
            sender="a@x.test",
            recipients=[Recipient(address="b@y.test")],
            size=writer.length,
        )
    )
    return writer


def names(spool: Spool, state: str) -> list[str]:
    return sorted(os.listdir(spool.dir(state)))


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


@pytest.mark.parametrize("mode", MODES)
def test_many_messages_are_committed_in_batches(spool: Spool, mode: str) -> None:
    count = 200
    writers = [finished_message(spool, b"message %d\r\n" % i) for i in range(count)]

    async def main() -> tuple[list[OSError | None], set[int], int]:
        loop = asyncio.get_running_loop()
        committer = GroupCommitter(spool, loop, mode=mode)
        results: list[OSError | None] = []
        threads: set[int] = set()
        all_done = loop.create_future()

        def done(error: OSError | None) -> None:
            results.append(error)
            threads.add(threading.get_ident())
            if len(results) == count:
                all_done.set_result(None)

        try:
            for writer in writers:
                committer.submit(writer, done)
            await asyncio.wait_for(all_done, 20)
        finally:
            committer.stop()
        assert committer.committed == count
        return results, threads, committer.batches

    results, threads, batches = run(main)
    assert results == [None] * count
    assert threads == {threading.get_ident()}  # callbacks run on the event loop's thread
    assert 1 <= batches < count  # one flush carried many messages
    assert names(spool, "incoming") == sorted(w.queue_id for w in writers)
    assert names(spool, "tmp") == []
    for i, writer in enumerate(writers):
        assert writer.fd == -1  # closed by the committer
        message = spool.read("incoming", writer.queue_id)
        assert message.read_message() == b"message %d\r\n" % i


@pytest.mark.parametrize("mode", MODES)
def test_lone_message_is_committed_promptly(spool: Spool, mode: str) -> None:
    async def main() -> tuple[OSError | None, float]:
        loop = asyncio.get_running_loop()
        committer = GroupCommitter(spool, loop, mode=mode)
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
    assert len(names(spool, "incoming")) == 1


@pytest.mark.parametrize("mode", MODES)
def test_commit_failure_reaches_the_callbacks(spool: Spool, mode: str) -> None:
    async def main() -> tuple[list[OSError | None], OSError | None]:
        loop = asyncio.get_running_loop()
        committer = GroupCommitter(spool, loop, mode=mode)
        try:
            broken = finished_message(spool)
            os.mkdir(broken.tmp_path)  # something squats on its name: creating it fails
            failed: asyncio.Future[OSError | None] = loop.create_future()
            committer.submit(broken, failed.set_result)
            first = await asyncio.wait_for(failed, 5)
            # the committer survives a failed flush: the next message still goes through
            later: asyncio.Future[OSError | None] = loop.create_future()
            committer.submit(finished_message(spool), later.set_result)
            second = await asyncio.wait_for(later, 5)
            return [first], second
        finally:
            committer.stop()

    (error,), after = run(main)
    assert isinstance(error, OSError)
    assert error.errno == errno.EEXIST
    assert after is None
    assert len(names(spool, "incoming")) == 1


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
    assert names(spool, "incoming") == sorted(w.queue_id for w in writers)
    assert names(spool, "tmp") == []
    assert results == [None] * 5


def test_sync_gate_skips_a_flush_another_process_already_did(spool: Spool) -> None:
    """Two committers (two smtpd workers): a flush that began after our renames covers us."""
    import time

    from mta.queue.commit import SyncGate

    first, second = SyncGate(spool.path), SyncGate(spool.path)
    fd = os.open(spool.dir("incoming"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        renamed_at = time.monotonic_ns()
        first.flush(renamed_at, fd)  # does the flush
        second.flush(renamed_at, fd)  # its renames were before that flush began: skipped
        assert (first.shared, second.shared) == (0, 1)
        second.flush(time.monotonic_ns(), fd)  # renamed after the last flush: must flush
        assert second.shared == 1
    finally:
        os.close(fd)
        first.close()
        second.close()
