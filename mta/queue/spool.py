"""The spool directory layout, the only module that knows where message files live.

``tmp/`` (being written) → ``incoming/`` (accepted, durable) → ``active/`` (claimed by the
queue manager) → removed, or ``deferred/``; ``hold/`` (kept by an operator); ``corrupt/``
(unreadable, never deleted).  Moving between states is a ``rename(2)`` within one file
system, so a message is always in exactly one state, whatever crashes when.

:class:`MessageWriter` streams one message into ``tmp/``; making it durable and visible in
``incoming/`` is the group committer's job (commit.py), because the fsync is what costs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from mta.queue.envelope import Envelope
from mta.queue.msgfile import HEADER, MessageFile, read_message_file, trailer_for

__all__ = ["STATES", "MessageWriter", "Spool"]

STATES = ("tmp", "incoming", "active", "deferred", "hold", "corrupt")
_WRITE_BUFFER = 64 * 1024  # gather small chunks into few write(2) calls


class Spool:
    """A spool directory tree rooted at ``path``."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    def create(self) -> None:
        """Make the state directories; raise OSError if the spool is not writable."""
        for state in STATES:
            os.makedirs(os.path.join(self.path, state), mode=0o700, exist_ok=True)
        probe = os.path.join(self.path, "tmp", f".probe-{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.unlink(probe)

    def dir(self, state: str) -> str:
        return os.path.join(self.path, state)

    def file(self, state: str, queue_id: str) -> str:
        return os.path.join(self.path, state, queue_id)

    def new_message(self, queue_id: str) -> MessageWriter:
        return MessageWriter(self, queue_id)

    def move(self, queue_id: str, source: str, target: str) -> None:
        os.rename(self.file(source, queue_id), self.file(target, queue_id))

    def read(self, state: str, queue_id: str) -> MessageFile:
        return read_message_file(self.file(state, queue_id))

    def list(self, state: str) -> list[str]:
        """Names in one state directory, oldest queue ID first."""
        try:
            return sorted(os.listdir(self.dir(state)))
        except FileNotFoundError:
            return []

    def scan(self, state: str) -> Iterator[os.DirEntry[str]]:
        with os.scandir(self.dir(state)) as entries:
            yield from entries


class MessageWriter:
    """Builds one message file in ``tmp/<queue_id>``; nothing is visible before commit.

    Small messages never touch the disk on the event loop: the file is created only when
    more than :data:`_WRITE_BUFFER` octets are waiting (a large message is streamed from
    then on) or by :meth:`persist`, which the group committer calls from its thread.
    Creating a file is the most expensive step of accepting a message here (DESIGN.md §3),
    so it is done off the loop for the common case.
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

    def write(self, data: bytes) -> None:
        """Append message bytes; raises OSError (e.g. ENOSPC) for the caller to refuse."""
        self._pending.append(data)
        self._pending_size += len(data)
        self.length += len(data)
        if self._pending_size >= _WRITE_BUFFER:
            self._flush_buffer()

    def finish(self, envelope: Envelope) -> None:
        """Append the envelope and the end marker; :meth:`persist` writes what is left."""
        self._pending.append(trailer_for(envelope, self.length))

    def persist(self, sync: bool = False) -> None:
        """Write everything still buffered (creating the file if needed), optionally fsync,
        and close.  The file is then complete in ``tmp/``.  Calling it again does nothing."""
        if self._pending or not self.created:
            self._flush_buffer()
        if sync:
            os.fsync(self.fd)
        self.close()

    def discard(self) -> None:
        """Throw the message away (refused, or the client went away)."""
        self.close()
        self._pending.clear()
        if self.created:
            try:
                os.unlink(self.tmp_path)
            except FileNotFoundError:
                pass  # committed meanwhile, or removed by the queue manager's cleanup

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
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
