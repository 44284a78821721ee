"""Housekeeping (mta/qmgr/housekeeping.py): tmp/ leftovers, corrupt/, queue depth metrics."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from mta import metrics
from mta.qmgr import housekeeping
from mta.queue.ids import new_queue_id, queue_id_time
from mta.queue.spool import Spool

DEAD_PID = "FFFFFE"  # above any pid_max: a writer that is surely gone


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    spool = Spool(str(tmp_path / "spool"))
    spool.create()
    return spool


def put(spool: Spool, state: str, name: str, age: float = 0.0) -> str:
    path = spool.file(state, name)
    Path(path).write_bytes(b"m")
    if age:
        then = os.stat(path).st_mtime - age
        os.utime(path, (then, then))
    return name


def test_tmp_keeps_what_live_writers_write_and_removes_leftovers(spool: Spool) -> None:
    now = Path(spool.dir("tmp")).stat().st_mtime + 1
    being_written = put(spool, "tmp", new_queue_id())  # by us: alive
    put(spool, "tmp", new_queue_id()[:13] + DEAD_PID)
    put(spool, "tmp", new_queue_id(), age=housekeeping.TMP_MAX_AGE + 10)  # alive, but ancient
    put(spool, "tmp", "stranger", age=housekeeping.TMP_MAX_AGE + 10)
    young_stranger = put(spool, "tmp", "young-stranger")
    copy = put(spool, "tmp", ".copy-" + new_queue_id()[:13] + DEAD_PID)  # ours: at start only
    housekeeping.clean_tmp(spool, now)
    assert sorted(spool.list("tmp")) == sorted([being_written, young_stranger, copy])
    housekeeping.remove_copy_leftovers(spool)
    assert sorted(spool.list("tmp")) == sorted([being_written, young_stranger])


def test_strangers_in_message_states_go_to_corrupt_and_are_logged(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    good = put(spool, "deferred", new_queue_id())
    put(spool, "incoming", "notes.txt")
    put(spool, "hold", "core")
    with caplog.at_level(logging.ERROR, logger="mta.qmgr"):
        housekeeping.quarantine_strangers(spool)
    assert spool.list("corrupt") == ["core", "notes.txt"]
    assert spool.list("deferred") == [good]
    assert "notes.txt: moved to corrupt/: not a queue file name" in caplog.messages


def test_quarantining_what_is_gone_says_nothing(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    housekeeping.quarantine(spool, "active", new_queue_id(), "why")
    assert caplog.records == [] and spool.list("corrupt") == []


def test_queue_depth_counts_segment_messages_as_active(spool: Spool) -> None:
    oldest = put(spool, "deferred", new_queue_id())
    put(spool, "active", new_queue_id())
    put(spool, "corrupt", "0000000000001000000")  # ancient, but corrupt/ does not count
    now = queue_id_time(oldest) + 50
    housekeeping.count_queue(spool, in_segments=3, now=now)

    def depth(state: str) -> float:
        return metrics.QUEUE_DEPTH.labels(state)._value.get()  # type: ignore[attr-defined,no-any-return]

    assert [depth(s) for s in ("incoming", "active", "deferred", "corrupt")] == [0, 4, 1, 1]
    age = metrics.QUEUE_OLDEST_AGE._value.get()  # type: ignore[attr-defined]
    assert age == pytest.approx(50, abs=1e-3)
