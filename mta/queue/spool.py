"""The spool directory layout, the only module that knows where message files live.

``tmp/`` (being written) → ``incoming/`` (accepted, durable) → ``active/`` (claimed by the
queue manager) → removed, or ``deferred/``; ``hold/`` (kept by an operator); ``corrupt/``
(unreadable, never deleted).  Moving between states is a ``rename(2)`` within one file
system, so a message is always in exactly one state, whatever crashes when.

Most mail is small, and a file per small message costs more in metadata than the rest of
accepting it: smtpd appends small messages to ``segments/`` instead (segment.py), and the
queue manager treats a message there as active.  Only a message that must outlive its
first delivery attempt gets a file of its own.

A deferred message's next try is its file's mtime (Postfix's trick): :meth:`Spool.defer`,
:meth:`Spool.set_next_try` and :meth:`Spool.flush_deferred` are the only writers of it.
The daemons and the CLI name spool files through :class:`Spool` only and move, remove or
quarantine them through its methods (state.py and segment.py keep the files of the
directory they are handed).

:class:`MessageWriter` holds a small message in memory (it becomes a segment record) and
streams a large one into ``tmp/``; making either durable is the group committer's job
(commit.py), because the flush is what costs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

from mta.queue.durable import fsync_directory, replace_file, write_all
from mta.queue.envelope import Envelope
from mta.queue.ids import is_queue_id
from mta.queue.msgfile import HEADER, Checksum, MessageFile, read_message_file, trailer_for
from mta.queue.segment import (
    DONE_SUFFIX,
    RecordRef,
    SegmentTail,
    read_payload,
    read_record,
    record_prefix,
)

__all__ = ["COPY_PREFIX", "SEGMENTS", "STAGED_PREFIX", "STATES", "MessageWriter", "Spool"]

STATES = ("tmp", "incoming", "active", "deferred", "hold", "corrupt")
SEGMENTS = "segments"  # small messages, many to a file (segment.py)
COPY_PREFIX = ".copy-"  # in tmp/: a message being copied out of a segment (Spool.store)
STAGED_PREFIX = "."  # in incoming/: a file whose directory entry is not yet durable
IN_MEMORY_MAX = 1 << 20  # octets: a larger message is streamed into a file of its own
MEMORY_BUDGET = 128 << 20  # octets per process for all the messages held in memory at once
_WRITE_BUFFER = 64 * 1024  # gather small chunks into few write(2) calls
_Errors = list[OSError]  # (inside Spool, "list" is a method)


class MemoryBudget:
    """What the messages of one process held in memory may take together.

    A message is held in memory while it arrives, up to :data:`IN_MEMORY_MAX`, so that it
    can be appended to a segment without a file of its own; when the budget is spent, the
    next one is streamed to a file instead.  So memory stays bounded however many clients
    are in DATA at once.  Taken on the event loop, given back from the commit thread.
    """

    def __init__(self, octets: int) -> None:
        self.free = octets
        self._lock = threading.Lock()

    def take(self, octets: int) -> bool:
        with self._lock:
            if octets > self.free:
                return False
            self.free -= octets
            return True

    def give(self, octets: int) -> None:
        with self._lock:
            self.free += octets


class Spool:
    """A spool directory tree rooted at ``path``."""

    def __init__(self, path: str, memory_budget: int = MEMORY_BUDGET) -> None:
        self.path = os.path.abspath(path)
        self.memory = MemoryBudget(memory_budget)

    def create(self) -> None:
        """Make the state directories; raise OSError if the spool is not writable."""
        for state in (*STATES, SEGMENTS, "dkim"):  # dkim/: signatures of retried mail
            os.makedirs(os.path.join(self.path, state), mode=0o700, exist_ok=True)
        probe = os.path.join(self.path, "tmp", f".probe-{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.unlink(probe)

    def dir(self, state: str) -> str:
        return os.path.join(self.path, state)

    def file(self, state: str, queue_id: str) -> str:
        return os.path.join(self.path, state, queue_id)

    def segment(self, name: str) -> str:
        return os.path.join(self.path, SEGMENTS, name)

    def new_message(self, queue_id: str) -> MessageWriter:
        return MessageWriter(self, queue_id)

    def move(self, queue_id: str, source: str, target: str) -> None:
        os.rename(self.file(source, queue_id), self.file(target, queue_id))

    # ----- incoming/: staged until durable (commit.py) ---------------------------------

    def stage_incoming(self, queue_id: str) -> None:
        """``tmp/ID`` → ``incoming/.ID``: there, but not to be claimed while its writer
        lives (the directory entry is not yet durable)."""
        os.rename(self.file("tmp", queue_id), self.file("incoming", STAGED_PREFIX + queue_id))

    def publish_incoming(self, queue_id: str) -> None:
        """``incoming/.ID`` → ``incoming/ID``, once ``incoming/`` was fsynced."""
        staged = self.file("incoming", STAGED_PREFIX + queue_id)
        os.rename(staged, self.file("incoming", queue_id))

    def unstage_incoming(self, queue_id: str) -> None:
        """Remove a staged file whose flush failed (never acknowledged)."""
        try:
            os.unlink(self.file("incoming", STAGED_PREFIX + queue_id))
        except OSError:
            pass  # the queue manager removes it once our pid is gone (housekeeping.py)

    def store(self, queue_id: str, state: str, data: bytes) -> None:
        """Write a whole message file into ``state`` durably (durable.py).  For the rare
        copies (a segment message that must outlive its first attempt), not for accepting
        mail."""
        # a dot name: not a writer's file (the queue manager removes leftovers at start)
        tmp_path = self.file("tmp", COPY_PREFIX + queue_id)
        replace_file(self.file(state, queue_id), data, tmp_path)

    def sync(self, state: str) -> None:
        """Make the renames into ``state`` durable (one fsync of its directory)."""
        fsync_directory(self.dir(state))

    def remove(self, state: str, name: str) -> None:
        """Delete a file from ``state``; FileNotFoundError if it is not there.  A queued
        message's saved DKIM signature (mta/delivery/signing.py) goes with it."""
        os.unlink(self.file(state, name))
        if state in ("active", "deferred", "hold"):
            try:
                os.unlink(os.path.join(self.path, "dkim", name))
            except FileNotFoundError:
                pass  # the usual case: delivered at the first attempt, or not signed

    def save_segment_damage(self, name: str, offset: int, length: int) -> str:
        """Copy ``length`` unreadable octets at ``offset`` of segment ``name`` durably to
        ``corrupt/<name>.<offset>`` (at most a segment's size); return that file name."""
        fd = os.open(self.segment(name), os.O_RDONLY)
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        target = f"{name}.{offset}"
        replace_file(self.file("corrupt", target), data, self.file("tmp", COPY_PREFIX + target))
        return target

    def to_corrupt(self, state: str, name: str) -> bool:
        """Move ``name`` from ``state`` (or ``segments/``) to ``corrupt/``, where it is kept
        for a person to look at; False if it was gone."""
        try:
            os.rename(self.file(state, name), self.file("corrupt", name))
        except FileNotFoundError:
            return False
        return True

    # ----- deferred/: a file's mtime is its next try (Postfix's trick) ------------------

    def defer(self, queue_id: str, source: str, until: float) -> None:
        """Move a message from ``source`` to ``deferred/``, due at ``until``."""
        self.move(queue_id, source, "deferred")
        self.set_next_try(queue_id, until)

    def set_next_try(self, queue_id: str, when: float) -> None:
        """FileNotFoundError if the message is not in ``deferred/`` (any more)."""
        os.utime(self.file("deferred", queue_id), (when, when))

    def next_try(self, queue_id: str) -> float:
        """When a deferred message is due; FileNotFoundError if it is not deferred."""
        return os.stat(self.file("deferred", queue_id)).st_mtime

    def flush_deferred(self, now: float) -> None:
        """Every deferred message is due at ``now`` (``mta queue flush``)."""
        for queue_id in self.list("deferred"):
            try:
                self.set_next_try(queue_id, now)
            except FileNotFoundError:
                continue

    def deferred_times(self) -> list[tuple[float, str]]:
        """(next try, queue ID) of every deferred message, in no order."""
        found = []
        try:
            entries = list(self.scan("deferred"))
        except FileNotFoundError:
            return []
        for entry in entries:
            if is_queue_id(entry.name):
                try:
                    found.append((entry.stat().st_mtime, entry.name))
                except FileNotFoundError:
                    continue
        return found

    def read(self, state: str, queue_id: str) -> MessageFile:
        return read_message_file(self.file(state, queue_id))

    def list(self, state: str) -> list[str]:
        """Names in one state directory, oldest queue ID first."""
        try:
            return sorted(os.listdir(self.dir(state)))
        except FileNotFoundError:
            return []

    def segment_messages(self) -> Iterator[RecordRef]:
        """Messages in segments that are not marked done, oldest first, read from disk
        (for the queue CLI; the queue manager keeps its own view as it goes)."""
        for name in self.list(SEGMENTS):
            if name.endswith(DONE_SUFFIX) or not is_queue_id(name):
                continue
            try:
                tail = self.open_segment(name)
            except FileNotFoundError:
                continue  # done and deleted meanwhile
            try:
                while refs := tail.read_new(4096, whole_file=True):
                    yield from (ref for ref in refs if ref.offset not in tail.done)
            except FileNotFoundError:
                continue  # dropped between open and read: every message in it was done
            finally:
                tail.close()

    # ----- segments/ (segment.py) ------------------------------------------------------

    def open_segment(self, name: str) -> SegmentTail:
        """Follow segment ``name`` from its start; FileNotFoundError if it is gone."""
        return SegmentTail.open(self.dir(SEGMENTS), name)

    def read_segment_payload(self, ref: RecordRef) -> bytes:
        """The raw message-file bytes of a segment message, unchecked."""
        return read_payload(self.segment(ref.segment), ref.offset, ref.length)

    def open_done_marks(self, name: str) -> int:
        """A descriptor appending to the done marks of segment ``name``."""
        path = self.segment(name) + DONE_SUFFIX
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def remove_segment(self, name: str, keep_data: bool = False) -> _Errors:
        """Delete segment ``name`` and its done marks (``keep_data``: only the marks, it
        was moved to ``corrupt/``); the errors, other than files already gone."""
        paths = [self.segment(name) + DONE_SUFFIX]
        if not keep_data:
            paths.append(self.segment(name))
        errors: _Errors = []
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                errors.append(exc)
        return errors

    def read_segment_message(self, ref: RecordRef) -> MessageFile:
        return read_record(self.segment(ref.segment), ref.offset, ref.length)

    def find(self, queue_id: str) -> tuple[str, MessageFile] | None:
        """Where ``queue_id`` is and its message file (a message in a segment is
        "active"), or None; CorruptMessageFile if it cannot be read."""
        for state in STATES[1:]:
            try:
                return state, self.read(state, queue_id)
            except FileNotFoundError:
                continue
        for ref in self.segment_messages():
            if ref.queue_id == queue_id:
                try:
                    return "active", self.read_segment_message(ref)
                except FileNotFoundError:
                    return None
        return None

    def scan(self, state: str) -> Iterator[os.DirEntry[str]]:
        with os.scandir(self.dir(state)) as entries:
            yield from entries


class MessageWriter:
    """Builds one message file in ``tmp/<queue_id>``; nothing is visible before commit.

    Most messages never touch the disk on the event loop: a message is held in memory
    up to :data:`IN_MEMORY_MAX` octets, while the spool's :class:`MemoryBudget` lasts,
    and then becomes a segment :meth:`record`, which the group committer appends from its
    thread.  Creating a file is the most expensive step of accepting a message here
    (DESIGN.md §3), so the common case creates none.  A larger message (or one that finds
    the budget spent) is streamed into its own file in ``tmp/`` from then on, in writes of
    :data:`_WRITE_BUFFER` octets, so it is never held whole in memory (DESIGN.md §2.3).
    """

    def __init__(self, spool: Spool, queue_id: str) -> None:
        self.spool = spool
        self.queue_id = queue_id
        self.tmp_path = spool.file("tmp", queue_id)
        self.fd = -1
        self.created = False  # the file exists in tmp/
        self.length = 0  # message octets written (after the header)
        self._pending: list[bytes] = [HEADER]
        self._pending_size = len(HEADER)
        self._held = 0  # octets taken from the spool's memory budget
        self._checksum = Checksum()  # of the message file, as it is written (msgfile.py)

    def write(self, data: bytes) -> None:
        """Append message bytes; raises OSError (e.g. ENOSPC) for the caller to refuse."""
        self._pending.append(data)
        self._pending_size += len(data)
        self.length += len(data)
        self._checksum.update(data)
        if self.created:
            if self._pending_size >= _WRITE_BUFFER:
                self._flush_buffer()
        elif self._pending_size > IN_MEMORY_MAX or not self.spool.memory.take(len(data)):
            self._flush_buffer()  # too big to hold: to a file of its own from now on
            self._release()
        else:
            self._held += len(data)

    def finish(self, envelope: Envelope) -> None:
        """Append the envelope and the end marker; :meth:`persist` writes what is left."""
        self._pending.append(trailer_for(envelope, self.length, self._checksum))

    def spill(self) -> None:
        """Give the message a file of its own now, not a segment record: one that the
        queue manager must find in ``incoming/`` (a message put on hold).  OSError as
        :meth:`write`."""
        if not self.created:
            self._flush_buffer()
            self._release()

    @property
    def in_memory(self) -> bool:
        """Nothing is on disk yet: the message can go into a segment."""
        return not self.created

    def record(self) -> bytes:
        """The finished message as one segment record (prefix + message file bytes)."""
        payload = b"".join(self._pending)
        self._pending.clear()
        self._release()
        return record_prefix(self.queue_id, len(payload)) + payload

    def persist(self, sync: bool = False) -> None:
        """Write everything still buffered (creating the file if needed), optionally fsync,
        and close.  The file is then complete in ``tmp/``.  Calling it again does nothing."""
        if self._pending or not self.created:
            self._flush_buffer()
        self._release()
        if sync:
            os.fsync(self.fd)
        self.close()

    def discard(self) -> None:
        """Throw the message away (refused, or the client went away)."""
        self.close()
        self._pending.clear()
        self._release()
        if self.created:
            try:
                os.unlink(self.tmp_path)
            except FileNotFoundError:
                pass  # committed meanwhile, or removed by the queue manager's cleanup

    def _release(self) -> None:
        if self._held:
            self.spool.memory.give(self._held)
            self._held = 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _flush_buffer(self) -> None:
        if self.fd < 0:
            self.fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self.created = True
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        write_all(self.fd, data)
