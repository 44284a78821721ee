"""Segments: many small messages appended to one file, one ``fdatasync`` per batch.

DESIGN.md §3 measured the price of a file per message on these machines: creating a file
costs ~100 µs, and making a batch of new files durable needs a flush of the whole file
system (or an fsync per file plus one of the directory) — while appending a batch of
messages to one open file and calling ``fdatasync`` once costs a fraction of that.  So every
smtpd worker appends the messages it accepts (all but the large ones, which keep a file of
their own) to its current segment, and the queue manager delivers them from there.

Layout of ``spool/segments/<name>`` (the name is a queue ID made by the writer, so names
sort by age and carry the writer's pid)::

    record* [end]
    record  = b"MTAR" payload_length:u32 queue_id:19s payload
    payload = one whole message file (msgfile.py), byte for byte
    end     = b"MTAZ" 0:u32 19 zero octets        the writer closed the segment

One writer appends, the queue manager reads.  A record is written by one ``write(2)`` and
acknowledged only after the ``fdatasync`` that follows it, so after a crash a segment ends
in complete records, possibly followed by one cut-off record that was never acknowledged.

The queue manager marks the messages that are done in ``<name>.done`` (8-octet offsets,
appended and not flushed: a mark lost in a crash costs a second delivery, never a loss).
A message that must stay after its first attempt (deferred, partly failed) is first copied
into a file of its own in ``active/`` and then marked done.  A segment is deleted once its
writer closed it (or died) and every message in it is done.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from mta.queue.durable import write_all
from mta.queue.ids import new_queue_id, queue_id_pid
from mta.queue.msgfile import END, HEADER, TRAILER_SIZE, MessageFile, parse_message_bytes

__all__ = [
    "DONE_SUFFIX",
    "PREFIX_SIZE",
    "SEGMENT_MAX",
    "RecordRef",
    "SegmentTail",
    "SegmentWriter",
    "encode_done",
    "read_done",
    "read_payload",
    "read_record",
    "record_prefix",
]

_PREFIX = struct.Struct(">4sI19s")
_RECORD = b"MTAR"
_CLOSED = b"MTAZ"
_OFFSET = struct.Struct(">Q")
PREFIX_SIZE = _PREFIX.size
DONE_SUFFIX = ".done"
SEGMENT_MAX = 16 << 20  # octets; the writer starts a new segment past this
READ_CHUNK = 128 << 10  # the queue manager reads new records in pieces of this size (a
# bigger read costs more in allocating its buffer than it saves in calls)


def record_prefix(queue_id: str, payload_length: int) -> bytes:
    return _PREFIX.pack(_RECORD, payload_length, queue_id.encode("ascii"))


@dataclass(frozen=True, slots=True)
class RecordRef:
    """Where one message lives: its payload is ``length`` octets at ``offset``."""

    segment: str
    queue_id: str
    offset: int
    length: int


def read_payload(path: str, offset: int, length: int) -> bytes:
    """The raw message-file bytes of the record at ``offset``, unchecked."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def read_record(path: str, offset: int, length: int) -> MessageFile:
    """The message at ``offset``; CorruptMessageFile if it is not a whole message file."""
    return parse_message_bytes(f"{path}@{offset}", read_payload(path, offset, length))


def read_done(path: str) -> set[int]:
    """The offsets marked done in a ``.done`` file (a torn last mark is ignored)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return set()
    usable = len(data) - len(data) % _OFFSET.size
    return {offset for (offset,) in _OFFSET.iter_unpack(data[:usable])}


def encode_done(offsets: list[int]) -> bytes:
    return b"".join(_OFFSET.pack(o) for o in offsets)


class SegmentWriter:
    """The appending end, owned by one smtpd worker's commit thread.

    ``append`` writes a batch of records with one ``write(2)``; ``sync`` makes them durable
    (``fdatasync`` of the segment, plus an fsync of the directory once for a new segment).
    After a failed write or flush the segment is abandoned — it is never appended to again
    — and the next batch starts a new one.
    """

    def __init__(self, directory: str, max_size: int = SEGMENT_MAX) -> None:
        self.directory = directory
        self.max_size = max_size
        self.name = ""
        self.fd = -1
        self.size = 0
        self._dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        self._new = False  # the directory entry is not yet durable

    def append(self, data: bytes) -> None:
        if self.fd < 0 or self.size >= self.max_size:
            self._start()
        try:
            write_all(self.fd, data)
        except OSError:
            self._abandon(truncate_to=self.size)
            raise
        self.size += len(data)

    def sync(self) -> None:
        try:
            os.fdatasync(self.fd)
            if self._new:
                os.fsync(self._dir_fd)
                self._new = False
        except OSError:
            self._abandon()
            raise

    def close(self) -> None:
        """Mark the segment closed (the queue manager may delete it once it is done)."""
        self._finish_segment()
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    def _finish_segment(self) -> None:
        """Write the end marker and close the current segment, if there is one."""
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        try:
            os.write(fd, _PREFIX.pack(_CLOSED, 0, bytes(19)))
        except OSError:
            pass  # the queue manager falls back on our pid being gone, when it is
        finally:
            os.close(fd)

    def _start(self) -> None:
        self._finish_segment()
        self.name = new_queue_id()
        path = os.path.join(self.directory, self.name)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        self.size = 0
        self._new = True

    def _abandon(self, truncate_to: int = -1) -> None:
        """Stop using the current segment after an error; what it holds stays readable,
        and it is closed like any other so that the queue manager can delete it."""
        if self.fd >= 0 and truncate_to >= 0:
            try:
                os.ftruncate(self.fd, truncate_to)  # drop a half-written batch
            except OSError:
                pass
        self._finish_segment()


@dataclass(eq=False)
class SegmentTail:
    """The queue manager's view of one segment: how far it has read, what is still live."""

    name: str
    path: str
    fd: int
    writer_pid: int
    offset: int = 0  # where the next unread record starts
    closed: bool = False  # the end marker was read
    broken: str = ""  # why reading stopped (a damaged record), if it did
    caught_up: bool = False  # the last read found no complete record left to read
    writer_gone: bool = False  # its writer died without closing it (set by the reader)
    live: set[int] = field(default_factory=set)  # offsets of messages not yet done
    done: set[int] = field(default_factory=set)  # offsets marked done when it was opened

    @classmethod
    def open(cls, directory: str, name: str) -> SegmentTail:
        """Follow segment ``name`` from its start, with the done marks it has so far."""
        path = os.path.join(directory, name)
        fd = os.open(path, os.O_RDONLY)
        tail = cls(name=name, path=path, fd=fd, writer_pid=queue_id_pid(name))
        tail.done = read_done(path + DONE_SUFFIX)
        return tail

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def read_new(self, max_records: int) -> list[RecordRef]:
        """Records appended since the last call, at most ``max_records`` (complete ones
        only: one being written is read next time).  OSError if reading failed before
        any record was found (the next call tries again from the same place)."""
        if self.closed or self.broken or max_records <= 0:
            return []
        refs: list[RecordRef] = []
        self.caught_up = False
        while len(refs) < max_records:
            try:
                data = os.pread(self.fd, READ_CHUNK, self.offset)
            except OSError:
                if not refs:
                    raise
                break  # what was read is handed out; the rest next time
            if not data:
                self.caught_up = True
                break
            used = self._parse(data, refs, max_records)
            if used == 0 and len(data) >= READ_CHUNK and not self.broken:
                data = os.pread(self.fd, self._record_size(data), self.offset)  # a big one
                used = self._parse(data, refs, max_records)
            self.offset += used
            if used == 0 or self.closed or self.broken:
                self.caught_up = used == 0
                break
        return refs

    def _record_size(self, data: bytes) -> int:
        return PREFIX_SIZE + _PREFIX.unpack_from(data)[1]

    def _parse(self, data: bytes, refs: list[RecordRef], max_records: int) -> int:
        """Append complete records in ``data`` to ``refs``; return the octets used."""
        pos = 0
        end = len(data)
        while pos + PREFIX_SIZE <= end and len(refs) < max_records:
            magic, length, raw_id = _PREFIX.unpack_from(data, pos)
            if magic == _CLOSED:
                self.closed = True
                return pos + PREFIX_SIZE
            start = pos + PREFIX_SIZE
            if magic != _RECORD:
                self.broken = f"no record at offset {self.offset + pos}"
                return pos
            if start + length > end:
                break  # not all here yet
            if (
                length < len(HEADER) + TRAILER_SIZE
                or data[start : start + len(HEADER)] != HEADER
                or data[start + length - len(END) : start + length] != END
            ):
                self.broken = f"damaged record at offset {self.offset + pos}"
                return pos
            queue_id = raw_id.decode("ascii", "replace")
            refs.append(RecordRef(self.name, queue_id, self.offset + start, length))
            pos = start + length
        return pos
