"""Segments and segment messages for the queue manager's tests."""

from __future__ import annotations

from mta.qmgr.manager import QueueManager
from mta.queue.ids import new_queue_id
from mta.queue.segment import PREFIX_SIZE, record_prefix
from mta.queue.spool import Spool
from tests.queue.messages import finished_message

DEAD_PID = "FFFFFE"  # above any pid_max: a writer that is surely gone


def payload(queue_id: str, body: bytes = b"Subject: s\r\n\r\nbody\r\n") -> bytes:
    """A whole message file for ``queue_id``, as a segment record carries it."""
    writer = finished_message(Spool("/nonexistent"), body, queue_id)
    return writer.record()[PREFIX_SIZE:]


def write_segment(spool: Spool, ids: list[str], *, closed: bool, pid: str = DEAD_PID) -> str:
    """A segment holding a message for each of ``ids``, written by process ``pid``."""
    name = new_queue_id()[:13] + pid
    data = b"".join(record_prefix(q, len(payload(q))) + payload(q) for q in ids)
    if closed:
        data += b"MTAZ" + bytes(23)
    with open(spool.segment(name), "wb") as f:
        f.write(data)
    return name


def offsets(spool: Spool, name: str) -> list[int]:
    return [ref.offset for ref in spool.segment_messages() if ref.segment == name]


def claim(qmgr: QueueManager) -> list[str]:
    """One scheduling round's worth of segment work; the queue IDs that became jobs."""
    qmgr.segments.open_new()
    before = len(qmgr.schedule.pending)
    qmgr.schedule.schedule_segment_messages(qmgr.segments.claim(qmgr.schedule.room()))
    return [job.queue_id for job in list(qmgr.schedule.pending)[before:]]
