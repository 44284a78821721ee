"""Operator commands on the queue (``mta queue ...``), safe while the relay runs.

Every change is a ``rename(2)`` between state directories, so it either happens whole or
not at all, and it cannot race the queue manager into a lost message: if the manager
claimed a message first the rename fails with ENOENT and the operator is told to try
again after the delivery attempt.  Messages in ``active/`` or in a segment are being
delivered and are not touched.  After a change the queue manager is poked so it rescans at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from mta.queue.ids import is_queue_id, queue_id_time
from mta.queue.ipc import FlushDeferred, Rescan, Waker
from mta.queue.msgfile import CorruptMessageFile, MessageFile, read_message_file
from mta.queue.spool import STATES, Spool
from mta.queue.state import StateStore

__all__ = ["QueueAdmin", "QueueEntry"]

LISTED_STATES = STATES[1:]  # every state but tmp/: ("incoming", ..., "corrupt")


class AdminError(Exception):
    """An operator request that cannot be carried out (the message says why)."""


@dataclass(frozen=True)
class QueueEntry:
    queue_id: str
    state: str
    age: float
    size: int
    sender: str
    recipients: list[str]
    next_try: float | None
    last_error: str

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.queue_id,
            "state": self.state,
            "age": round(self.age, 3),
            "size": self.size,
            "sender": self.sender,
            "recipients": self.recipients,
            "next_try": self.next_try,
            "last_error": self.last_error,
        }


class QueueAdmin:
    def __init__(self, spool_path: str) -> None:
        """AdminError if there is no queue at ``spool_path``; nothing is created there."""
        self.spool = Spool(spool_path)
        if not os.path.isdir(self.spool.dir("incoming")):
            raise AdminError(f"{self.spool.path}: no queue here; is queue.path right?")
        self.states = StateStore(self.spool.path, create=False)
        self.waker = Waker(self.spool.path)

    def entries(self) -> Iterator[QueueEntry]:
        now = time.time()
        # segments first: a message there may be copied into active/ while we look
        in_segments = list(self.spool.segment_messages())
        listed: set[str] = set()
        for state in LISTED_STATES:
            for name in self.spool.list(state):
                listed.add(name)
                yield self._entry(state, name, now)
        for ref in in_segments:  # small messages being delivered
            if ref.queue_id in listed:
                continue  # copied out to a file of its own (listed above)
            age = now - queue_id_time(ref.queue_id) if is_queue_id(ref.queue_id) else 0.0
            try:
                envelope = self.spool.read_segment_message(ref).envelope
            except (CorruptMessageFile, FileNotFoundError) as exc:
                yield QueueEntry(ref.queue_id, "active", age, 0, "", [], None, str(exc))
                continue
            recipients = [r.address for r in envelope.recipients]
            yield QueueEntry(
                ref.queue_id, "active", age, envelope.size, envelope.sender, recipients, None, ""
            )

    def _entry(self, state: str, name: str, now: float) -> QueueEntry:
        age = now - queue_id_time(name) if is_queue_id(name) else 0.0
        saved = self.states.load(name)
        next_try = None
        if state == "deferred":
            try:
                next_try = self.spool.next_try(name)
            except FileNotFoundError:
                pass
        try:
            envelope = read_message_file(self.spool.file(state, name)).envelope
        except (CorruptMessageFile, FileNotFoundError) as exc:
            return QueueEntry(name, state, age, 0, "", [], next_try, str(exc))
        pending = saved.pending() if saved else [r.address for r in envelope.recipients]
        return QueueEntry(
            name,
            state,
            age,
            envelope.size,
            envelope.sender,
            pending,
            next_try,
            saved.last_error if saved else "",
        )

    def locate(self, queue_id: str) -> str:
        """The state holding ``queue_id`` (a message in a segment is "active");
        AdminError if there is none."""
        for state in LISTED_STATES:
            if os.path.exists(self.spool.file(state, queue_id)):
                return state
        if any(ref.queue_id == queue_id for ref in self.spool.segment_messages()):
            return "active"
        raise AdminError(f"{queue_id}: no such message in the queue")

    def show(self, queue_id: str) -> tuple[MessageFile, str]:
        try:
            found = self.spool.find(queue_id)
        except CorruptMessageFile as exc:
            raise AdminError(str(exc)) from None
        if found is None:
            raise AdminError(f"{queue_id}: no such message in the queue")
        state, message = found
        return message, state

    def flush(self) -> None:
        """Every deferred message is due now (``postqueue -f``)."""
        if not self.waker.send(FlushDeferred()):  # the queue manager does it when it runs
            self.spool.flush_deferred(time.time())

    def hold(self, queue_id: str) -> None:
        self._move(queue_id, ("incoming", "deferred"), "hold")

    def release(self, queue_id: str) -> None:
        self._move(queue_id, ("hold",), "deferred", due_now=True)

    def requeue(self, queue_id: str) -> None:
        self._move(queue_id, ("deferred", "hold", "corrupt"), "incoming")

    def delete(self, queue_id: str) -> None:
        state = self.locate(queue_id)
        if state == "active":
            raise AdminError(f"{queue_id}: being delivered now; try again in a moment")
        try:
            self.spool.remove(state, queue_id)
        except FileNotFoundError:
            raise AdminError(f"{queue_id}: moved meanwhile; try again") from None
        self.states.remove(queue_id)

    def all_ids(self, states: tuple[str, ...] = LISTED_STATES) -> list[str]:
        return [n for s in states for n in self.spool.list(s) if s != "active"]

    def _move(
        self, queue_id: str, sources: tuple[str, ...], target: str, due_now: bool = False
    ) -> None:
        state = self.locate(queue_id)
        if state == target:
            return
        if state not in sources:
            raise AdminError(f"{queue_id}: is {state}, cannot move it to {target}")
        try:
            self.spool.move(queue_id, state, target)
        except FileNotFoundError:
            raise AdminError(f"{queue_id}: moved meanwhile; try again") from None
        if due_now:
            self.spool.set_next_try(queue_id, time.time())
        self.waker.send(Rescan())
