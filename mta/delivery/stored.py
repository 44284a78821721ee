"""How a delivery process holds the message it delivers: in memory, or left in its file.

Most mail is small, and small messages are already in memory when a job arrives (a segment
record, or a message file read with one ``read(2)``): they are delivered as ``bytes``, in
one write, as fast as before.  A message longer than :data:`STREAM_THRESHOLD` stays in its
message file and is read in chunks of :data:`CHUNK_SIZE` while it is sent (SMTP and LMTP:
``smtp_client``) or copied (Maildir: ``maildir``), so that a delivery process's memory does
not grow with message size.  Per large message in flight it holds one chunk as read, its
dot-stuffed copy and what the transport buffers (at most its high-water mark plus a chunk):
about three times ``CHUNK_SIZE``, over TLS too (its buffers are bounded the same way), where
it used to hold the whole message three or four times over (the bytes read, the stuffed
copy, the transport's buffer).  With the agent's ``LARGE_JOBS`` (16) in flight that is
about 7 MiB per delivery process, against 1.2 GiB and more for 16 messages of 25 MiB.

Chunk size, measured here (a 20 MB message sent five times to a discarding peer in another
process, CPU time of the sending process, medians of four interleaved runs on a loaded
two-core machine): the whole message in one write 4.4 ms of CPU per MB; chunks of 64 KiB
3.0, 128 KiB 2.6, 256 KiB 2.5, 1 MiB 2.4.  Chunks cost less than one big write (they stay
in the CPU caches) and past 128 KiB a larger chunk saves little, so 128 KiB it is.

Failures: a read that fails after delivery began (an I/O error, or a file shorter than its
trailer says, which :mod:`mta.queue.msgfile` reports as ``CorruptMessageFile``) is raised
as :class:`MessageReadError`: it is the message's trouble, not the next hop's, so no other
server is tried; the recipients are deferred (an I/O error) or the message is reported
corrupt (a file cut short) and moved aside by the queue manager.
"""

from __future__ import annotations

from collections.abc import Generator

from mta.protocol.client_events import StoredMessage
from mta.queue.msgfile import CorruptMessageFile, MessageFile

__all__ = [
    "CHUNK_SIZE",
    "STREAM_THRESHOLD",
    "MessageReadError",
    "PrefixedMessage",
    "message_to_send",
    "read_chunks",
]

STREAM_THRESHOLD = 1 << 20  # octets: larger messages are sent from their file
CHUNK_SIZE = 128 * 1024  # octets read, dot-stuffed and written at a time


class MessageReadError(Exception):
    """Reading a stored message failed midway through its delivery."""

    def __init__(self, cause: OSError | ValueError) -> None:
        super().__init__(f"reading the message failed: {cause}")
        self.corrupt = isinstance(cause, CorruptMessageFile)


class PrefixedMessage:
    """A stored message sent with header fields before it (a DKIM signature): read from
    its file in chunks like the message itself."""

    def __init__(self, prefix: bytes, message: StoredMessage) -> None:
        self.prefix = prefix
        self.message = message

    @property
    def message_length(self) -> int:
        return len(self.prefix) + self.message.message_length

    def iter_message(self, chunk_size: int) -> Generator[bytes, None, None]:
        yield self.prefix
        yield from self.message.iter_message(chunk_size)


def message_to_send(message_file: MessageFile) -> bytes | StoredMessage:
    """The message of ``message_file`` as a transaction carries it: its bytes when it is
    small, else the file itself, to be read in chunks."""
    if message_file.message_length > STREAM_THRESHOLD:
        return message_file
    return message_file.read_message()


def read_chunks(message: StoredMessage) -> Generator[bytes, None, None]:
    """``message`` in chunks of at most :data:`CHUNK_SIZE`; read errors are raised as
    :class:`MessageReadError`.  Close the generator when done with it (the file is open
    until then)."""
    chunks = message.iter_message(CHUNK_SIZE)
    try:
        while True:
            try:
                chunk = next(chunks)
            except StopIteration:
                return
            except (OSError, ValueError) as exc:
                raise MessageReadError(exc) from exc
            yield chunk
    finally:
        chunks.close()
