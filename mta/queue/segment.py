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
    record  = b"MTRC" payload_length:u32 queue_id:19s prefix_crc:u32 payload
    payload = one whole message file (msgfile.py, with its own checksum), byte for byte
    end     = b"MTAZ" 0:u32 19 zero octets        the writer closed the segment

``prefix_crc`` is the CRC-32 of the 27 octets before it, so a damaged prefix is told from
a good one, and the payload's checksum covers the rest of the record.  Segments written
before checksums existed hold version-1 records (``b"MTAR"``, no ``prefix_crc``, a
version-1 message file); they are still read, with the structural checks only.

**Commit.**  One writer appends, the queue manager reads.  A batch of records is written
by one ``write(2)`` and acknowledged only after the ``fdatasync`` that follows it.  The
writer's ``committed`` length is the end of the last batch that was flushed; the group
committer announces it with each wake-up (``SegmentAppended`` in ipc.py), and the reader
reads only up to the highest committed length it was told (:meth:`SegmentTail.announce`):
a message is never delivered before it is on disk.  A batch whose write or flush failed
is cut off again (``ftruncate`` to the committed length) before its clients hear ``451``,
and the writer keeps its segment: a failed commit leaves no file behind and is never
delivered.  If even the truncation fails, the segment is abandoned (an empty one is
removed) and the next batch starts a new one.

Past the last announced length the reader goes only when that length is proven:

* its writer has moved on to a newer segment and this one ends in the end marker: the
  writer writes it only at its committed length (after cutting off a failed batch), so
  everything before it was committed.  (Only once the writer moved on: a message body may
  hold the marker's octets, and a reader may see a write half done.)
* its writer is dead: then every complete record in the file was either committed, or its
  flush never returned — the client got no ``250`` and will send the message again.
  Delivering it is then at worst a duplicate, while skipping it could lose a message that
  was acknowledged just before the crash; so the reader delivers it (the same rule as
  before announcements existed).  A batch whose flush failed is cut off before the client
  is told, so it is gone unless the writer died in between (no reply: a duplicate at
  worst) or the machine crashed before the truncation reached the disk (a duplicate of a
  ``451``ed message, never a loss).

**Damage.**  The reader checks each prefix (magic, ``prefix_crc``, a plausible length) and
that the payload starts and ends like a message file.  What fails is skipped: the reader
resynchronises at the next valid record (its magic found by a scan, its prefix checksum
right and its payload a whole message file with a matching checksum and queue ID) and
reports the unreadable span as :class:`Damage` for the queue manager to copy to
``corrupt/`` and log with its offset.  A record cut short at the end of a dead writer's
segment is reported too (it was never acknowledged).  A checksum mismatch inside a
payload whose frame is intact is found when the message is read (read_record).  (A
message body may contain octets that look like a whole record; the scan could accept such
a forgery only right after real damage to the record around it.)

The queue manager marks the messages that are done in ``<name>.done`` (8-octet offsets,
appended and not flushed: a mark lost in a crash costs a second delivery, never a loss).
A message that must stay after its first attempt (deferred, partly failed) is first copied
into a file of its own in ``active/`` and then marked done.  A segment is deleted once its
writer closed it (or died) and every message in it is done.  The reader holds no file
descriptor between reads, so the queue manager's descriptors do not grow with the number
of segments.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field

from mta.queue import durable
from mta.queue.durable import write_all
from mta.queue.ids import is_queue_id, new_queue_id, queue_id_pid
from mta.queue.msgfile import (
    END,
    HEADERS,
    MIN_SIZE,
    CorruptMessageFile,
    MessageFile,
    parse_message_bytes,
)

__all__ = [
    "DONE_SUFFIX",
    "END_MARKER",
    "PREFIX_SIZE",
    "SEGMENT_MAX",
    "Damage",
    "RecordRef",
    "SegmentTail",
    "SegmentWriter",
    "encode_done",
    "read_done",
    "read_payload",
    "read_record",
    "record_prefix",
]

_PREFIX_V1 = struct.Struct(">4sI19s")
_CRC = struct.Struct(">I")
_RECORD = b"MTRC"
_RECORD_V1 = b"MTAR"
_CLOSED = b"MTAZ"
_MAGICS = (_RECORD, _RECORD_V1, _CLOSED)
_OFFSET = struct.Struct(">Q")
PREFIX_SIZE = _PREFIX_V1.size + _CRC.size  # of a record written now (version 2)
END_MARKER = _PREFIX_V1.pack(_CLOSED, 0, bytes(19))
DONE_SUFFIX = ".done"
SEGMENT_MAX = 16 << 20  # octets; the writer starts a new segment past this
MAX_RECORD = 64 << 20  # octets: a longer length field is damage (see spool.IN_MEMORY_MAX)
READ_CHUNK = 128 << 10  # the queue manager reads new records in pieces of this size (a
# bigger read costs more in allocating its buffer than it saves in calls)


def record_prefix(queue_id: str, payload_length: int) -> bytes:
    head = _PREFIX_V1.pack(_RECORD, payload_length, queue_id.encode("ascii"))
    return head + _CRC.pack(zlib.crc32(head))


def _parse_prefix(data: bytes, pos: int) -> tuple[int, int, str] | None:
    """(prefix size, payload length, queue ID) of a good prefix at ``pos`` (at least
    :data:`PREFIX_SIZE` octets, or the rest of ``data``), or None if it is damaged."""
    magic, length, raw_id = _PREFIX_V1.unpack_from(data, pos)
    if not MIN_SIZE <= length <= MAX_RECORD:
        return None
    if magic == _RECORD:  # the checksum vouches for the queue ID (the hot path: no regex)
        end = pos + PREFIX_SIZE
        if len(data) < end or _CRC.unpack_from(data, end - 4)[0] != zlib.crc32(data[pos : end - 4]):
            return None
        return PREFIX_SIZE, length, raw_id.decode("ascii", "replace")
    if magic == _RECORD_V1:
        queue_id = raw_id.decode("ascii", "replace")
        return (_PREFIX_V1.size, length, queue_id) if is_queue_id(queue_id) else None
    return None


@dataclass(frozen=True, slots=True)
class RecordRef:
    """Where one message lives: its payload is ``length`` octets at ``offset``."""

    segment: str
    queue_id: str
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Damage:
    """``length`` octets at ``offset`` of ``segment`` that hold no readable record."""

    segment: str
    offset: int
    length: int
    why: str  # "damaged record" | "cut record"

    @property
    def reason(self) -> str:
        """The label of ``mta_queue_corrupt_total``."""
        return "cut" if self.why == "cut record" else "record"


def read_payload(path: str, offset: int, length: int) -> bytes:
    """The raw message-file bytes of the record at ``offset``, unchecked."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def read_record(path: str, offset: int, length: int) -> MessageFile:
    """The message at ``offset``, checked (msgfile.parse_message_bytes): CorruptMessageFile
    if it is not a whole message file, ChecksumMismatch if its octets were altered."""
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

    :meth:`commit` (or ``append`` then ``sync``) writes a batch of records with one
    ``write(2)`` and makes it durable (``fdatasync`` of the segment, plus an fsync of the
    directory once for a new segment); :attr:`committed` is then the segment's length.
    After a failed write or flush the batch is cut off again and the segment kept (see
    the module docstring), so failures never multiply files.
    """

    def __init__(self, directory: str, max_size: int = SEGMENT_MAX) -> None:
        self.directory = directory
        self.max_size = max_size
        self.name = ""
        self.fd = -1
        self.size = 0  # octets written to the current segment
        self.committed = 0  # octets of it that are durable (a batch boundary)
        self._dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        self._new = False  # the directory entry is not yet durable

    def commit(self, data: bytes) -> None:
        """Append whole records and make them durable; OSError if that failed (then
        nothing of ``data`` stays in the segment)."""
        self.append(data)
        self.sync()

    def append(self, data: bytes) -> None:
        if self.fd < 0 or self.size >= self.max_size:
            self._start()
        try:
            write_all(self.fd, data)
        except OSError:
            self._cut_uncommitted()
            raise
        self.size += len(data)

    def sync(self) -> None:
        try:
            durable.fdatasync(self.fd)
            if self._new:
                durable.fsync(self._dir_fd)
                self._new = False
        except OSError:
            self._cut_uncommitted()
            raise
        self.committed = self.size

    def close(self) -> None:
        """Mark the segment closed (the queue manager may delete it once it is done)."""
        self._finish_segment()
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    def _finish_segment(self) -> None:
        """Write the end marker at the committed length and close the current segment."""
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        try:
            if self.size == self.committed:  # else a failed batch could not be cut off
                os.write(fd, END_MARKER)
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
        self.committed = 0
        self._new = True

    def _cut_uncommitted(self) -> None:
        """Drop what was written since the last commit; if that fails, abandon the
        segment (removed if it holds nothing committed) so that nothing of the failed batch
        is ever followed by more records or an end marker."""
        if self.fd < 0:
            return
        try:
            os.ftruncate(self.fd, self.committed)
            self.size = self.committed
            return
        except OSError:
            pass
        fd, self.fd = self.fd, -1
        os.close(fd)
        if self.committed == 0:
            try:
                os.unlink(os.path.join(self.directory, self.name))
            except OSError:
                pass  # the queue manager deletes it once our pid is gone


_EXACT, _CUT, _WAIT = "exact", "cut", "wait"  # what a partial record at the limit means


@dataclass(eq=False)
class SegmentTail:
    """The queue manager's view of one segment: how far it has read, what is still live.

    No descriptor is held between calls: each :meth:`read_new` opens the file and
    closes it again.
    """

    name: str
    path: str
    writer_pid: int
    offset: int = 0  # where the next unread record starts
    committed: int = 0  # the highest committed length its writer announced
    closed: bool = False  # the end marker was read
    caught_up: bool = False  # the last read found nothing left to read below its limit
    writer_gone: bool = False  # its writer died (as the queue manager found)
    look_for_end: bool = False  # its writer moved on: the next read trusts an end marker
    damage: list[Damage] = field(default_factory=list)  # found, for the caller to take
    live: set[int] = field(default_factory=set)  # offsets of messages not yet done
    done: set[int] = field(default_factory=set)  # offsets marked done when it was opened

    @classmethod
    def open(cls, directory: str, name: str) -> SegmentTail:
        """Follow segment ``name`` from its start, with the done marks it has so far;
        FileNotFoundError if it is gone."""
        path = os.path.join(directory, name)
        os.stat(path)
        tail = cls(name=name, path=path, writer_pid=queue_id_pid(name))
        tail.done = read_done(path + DONE_SUFFIX)
        return tail

    def close(self) -> None:
        """Nothing to release (no descriptor is kept); for symmetry with ``open``."""

    def announce(self, committed: int) -> None:
        """The writer says the first ``committed`` octets are durable."""
        if committed > self.committed:
            self.committed = committed

    def wants_reading(self) -> bool:
        """Is there anything a read could find now?"""
        if self.closed:
            return False
        if self.writer_gone:
            return not self.caught_up  # once read to its end, nothing more can come
        return self.offset < self.committed or self.look_for_end

    def read_new(self, max_records: int, whole_file: bool = False) -> list[RecordRef]:
        """Committed records not read yet, at most ``max_records``, in order; unreadable
        spans found on the way are added to :attr:`damage`.  ``whole_file``: read every
        complete record, committed or not (the queue CLI's view).  OSError if reading
        failed before any record was found (the next call tries again from there)."""
        if self.closed or max_records <= 0:
            return []
        fd = os.open(self.path, os.O_RDONLY)
        try:
            limit, partial = self._limit(fd, whole_file)
            return self._read(fd, limit, partial, max_records)
        finally:
            os.close(fd)

    def _limit(self, fd: int, whole_file: bool) -> tuple[int, str]:
        """How far reading may go, and what a record cut at that limit means."""
        if self.writer_gone or whole_file:
            return os.fstat(fd).st_size, _CUT if self.writer_gone else _WAIT
        limit = self.committed
        if self.look_for_end:
            self.look_for_end = False
            size = os.fstat(fd).st_size
            if size > limit and os.pread(fd, len(END_MARKER), size - len(END_MARKER)) == END_MARKER:
                limit = size  # closed: all before the marker was committed
        return limit, _EXACT

    def _read(self, fd: int, limit: int, partial: str, max_records: int) -> list[RecordRef]:
        refs: list[RecordRef] = []
        self.caught_up = False
        while len(refs) < max_records and self.offset < limit and not self.closed:
            try:
                data = os.pread(fd, min(READ_CHUNK, limit - self.offset), self.offset)
            except OSError:
                if not refs:
                    raise
                return refs  # what was read is handed out; the rest next time
            if not data:
                break  # shorter than announced: read again once it is there
            used, bad = self._parse(data, refs, max_records)
            if used == 0 and not bad:
                used, bad = self._parse_long(fd, data, limit, refs, max_records)
            self.offset += used
            if bad:
                self._skip_damage(fd, limit)
            elif used == 0:  # a record cut at the limit
                if partial == _WAIT:
                    break
                if partial == _CUT:
                    self._note_damage(limit, "cut record")
                else:
                    self._skip_damage(fd, limit)  # committed lengths end between records
        self.caught_up = len(refs) < max_records
        return refs

    def _parse_long(
        self, fd: int, data: bytes, limit: int, refs: list[RecordRef], max_records: int
    ) -> tuple[int, bool]:
        """A record longer than one chunk: read it whole if it ends below ``limit``."""
        if len(data) < PREFIX_SIZE:
            return 0, False
        prefix = _parse_prefix(data, 0)
        if prefix is None:
            return 0, True
        size = prefix[0] + prefix[1]
        if self.offset + size > limit or size <= len(data):
            return 0, False
        return self._parse(os.pread(fd, size, self.offset), refs, max_records)

    def _parse(self, data: bytes, refs: list[RecordRef], max_records: int) -> tuple[int, bool]:
        """Append whole records in ``data`` to ``refs``; (octets used, damage found at
        the end of them)."""
        pos = 0
        end = len(data)
        while len(refs) < max_records and end - pos >= _PREFIX_V1.size:
            if data[pos : pos + 4] == _CLOSED:
                if data[pos : pos + len(END_MARKER)] != END_MARKER:
                    return pos, True
                self.closed = True
                return pos + len(END_MARKER), False
            if data[pos : pos + 4] == _RECORD and end - pos < PREFIX_SIZE:
                return pos, False  # the rest of the prefix is in the next read
            prefix = _parse_prefix(data, pos)
            if prefix is None:
                return pos, True
            size, length, queue_id = prefix
            start = pos + size
            if start + length > end:
                return pos, False  # not all here yet
            if not _framed_like_a_message_file(data, start, length):
                return pos, True
            refs.append(RecordRef(self.name, queue_id, self.offset + start, length))
            pos = start + length
        return pos, False

    def _skip_damage(self, fd: int, limit: int) -> None:
        """From :attr:`offset` on, nothing is readable: find the next good record."""
        self._note_damage(self._next_good_record(fd, limit), "damaged record")

    def _note_damage(self, resume_at: int, why: str) -> None:
        self.damage.append(Damage(self.name, self.offset, resume_at - self.offset, why))
        self.offset = resume_at

    def _next_good_record(self, fd: int, limit: int) -> int:
        """The offset of the first valid record or end marker after :attr:`offset`
        (found by its magic, then checked whole), or ``limit`` if there is none."""
        pos = self.offset + 1
        while pos < limit:
            window = os.pread(fd, min(READ_CHUNK, limit - pos), pos)
            if len(window) < 4:
                break
            for at in sorted(i for magic in _MAGICS for i in _find_all(window, magic)):
                if self._good_record_at(fd, pos + at, limit):
                    return pos + at
            pos += len(window) - 3  # a magic across the boundary is found next time
        return limit

    def _good_record_at(self, fd: int, at: int, limit: int) -> bool:
        head = os.pread(fd, PREFIX_SIZE, at)
        if head.startswith(_CLOSED):  # only the last octets of a file (a body may hold one)
            end = at + len(END_MARKER)
            return head[: len(END_MARKER)] == END_MARKER and os.fstat(fd).st_size == end
        if len(head) < _PREFIX_V1.size or (prefix := _parse_prefix(head, 0)) is None:
            return False
        size, length, queue_id = prefix
        if at + size + length > limit:
            return False
        try:
            message = parse_message_bytes(self.path, os.pread(fd, length, at + size))
        except CorruptMessageFile:
            return False
        return message.envelope.queue_id == queue_id


def _framed_like_a_message_file(data: bytes, start: int, length: int) -> bool:
    """The cheap check of a payload: a message file header first, its end marker last
    (the checksum is checked when the message is read)."""
    return (
        data[start : start + 6] in HEADERS
        and data[start + length - len(END) : start + length] == END
    )


def _find_all(data: bytes, magic: bytes) -> list[int]:
    found = []
    at = data.find(magic)
    while at >= 0:
        found.append(at)
        at = data.find(magic, at + 1)
    return found
