"""The remover (mta/qmgr/remover.py): typed items, handled in order in its thread."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from mta.qmgr.remover import DropSegment, MarkDone, RemoveFile, Remover
from mta.queue.ids import new_queue_id
from mta.queue.segment import DONE_SUFFIX, RecordRef, read_done
from mta.queue.spool import Spool


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    spool = Spool(str(tmp_path / "spool"))
    spool.create()
    return spool


def test_each_request_is_a_typed_item_handed_over_once_per_loop_turn(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = RecordRef("SEG", new_queue_id(), 30, 100)
    remover = Remover(spool)
    handed: list[list[object]] = []
    monkeypatch.setattr(remover._worker, "put_many", handed.append)

    async def one_turn() -> None:
        remover.remove("Q")
        remover.segment_done(ref, delivered=True)
        remover.drop_segment("SEG", keep=True)
        await asyncio.sleep(0)

    asyncio.run(one_turn())
    assert handed == [[RemoveFile("Q"), MarkDone(ref, True), DropSegment("SEG", True)]]
    remover.stop()


def test_a_delivered_message_file_is_removed_and_logged(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    queue_id = new_queue_id()
    Path(spool.file("active", queue_id)).write_bytes(b"m")
    remover = Remover(spool)
    with caplog.at_level(logging.INFO, logger="mta.qmgr"):
        remover.remove(queue_id)
        remover.stop()
    assert spool.list("active") == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == [
        f"{queue_id}: removed"
    ]


def test_marks_are_written_before_their_segment_is_dropped(spool: Spool) -> None:
    segment = new_queue_id()
    Path(spool.segment(segment)).write_bytes(b"records")
    other = new_queue_id()
    Path(spool.segment(other)).write_bytes(b"records")
    refs = [RecordRef(segment, new_queue_id(), offset, 10) for offset in (30, 70)]
    remover = Remover(spool)
    remover.segment_done(refs[0], delivered=True)
    remover.segment_done(RecordRef(other, new_queue_id(), 30, 10), delivered=False)
    remover.segment_done(refs[1], delivered=True)
    remover.drop_segment(segment)
    remover.stop()
    assert not os.path.exists(spool.segment(segment))
    assert not os.path.exists(spool.segment(segment) + DONE_SUFFIX)
    assert read_done(spool.segment(other) + DONE_SUFFIX) == {30}


def test_a_corrupt_segment_keeps_its_data_and_loses_its_marks(spool: Spool) -> None:
    segment = new_queue_id()
    Path(spool.segment(segment)).write_bytes(b"records")
    remover = Remover(spool)
    remover.segment_done(RecordRef(segment, new_queue_id(), 30, 10), delivered=True)
    remover.drop_segment(segment, keep=True)
    remover.stop()
    assert os.path.exists(spool.segment(segment))  # the caller moved it to corrupt/ first
    assert not os.path.exists(spool.segment(segment) + DONE_SUFFIX)
