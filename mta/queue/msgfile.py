"""The message file format: one immutable file per accepted message, with a checksum.

Layout (all integers big-endian)::

    b"MTAQ" version:u8 b"\\n"          6-octet header; version 2 (1 is still read)
    message bytes                      exactly as received (trace header first)
    envelope                           msgpack (see envelope.py)
    envelope_length:u32 message_length:u64 checksum:u32 b"MTAEND\\n"   23-octet trailer

``checksum`` is the CRC-32 (``zlib.crc32``) of every octet before it: header, message,
envelope and the two lengths.  Version 1 (written before checksums existed) has the same
layout without the checksum field (a 19-octet trailer); it is still read, with the
structural checks only, because operators upgrade with a queue in place.

The message is streamed to disk while it arrives, so the envelope (whose size field is only
known at the end) follows it, and the checksum is computed as the octets go by
(:class:`Checksum`).  The trailer is written last: a file cut short anywhere lacks a valid
trailer or has lengths that do not add up to the file's size, so a partial file is always
detected (:class:`CorruptMessageFile`) and never delivered half.  Flipped bits anywhere
fail the checksum (:class:`ChecksumMismatch`, a CorruptMessageFile).

Verification, in one place:

* :func:`parse_message_bytes` (a segment record, a small file) checks everything at once;
* :func:`read_message_file` checks the structure and, by default, the checksum of a large
  file by streaming it in :data:`VERIFY_CHUNK` pieces, never holding it whole;
  ``verify=False`` reads only what the envelope needs (the checksum is then checked by
  :meth:`MessageFile.read_message`, or on demand by :meth:`MessageFile.verify`).

CRC-32 (``zlib.crc32``, standard library) rather than CRC32C: measured here (2 cores under
load), zlib takes ~1.9 µs for a 1.2 KB message and 0.8 ms per MiB; the ``crc32c`` package
(SSE 4.2) takes ~1.0 µs and 0.13 ms.  A small message's check costs about 1 % of what the
relay spends on it either way, and a 20 MB one ~15 ms before a transfer that takes far
longer, so the difference does not pay for a compiled dependency.  The check is a function
of this module only: switching means bumping the version.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Generator
from io import BufferedReader

import msgspec

from mta.queue.envelope import Envelope, decode_envelope, encode_envelope

__all__ = [
    "END",
    "HEADER",
    "HEADERS",
    "TRAILER_SIZE",
    "Checksum",
    "ChecksumMismatch",
    "CorruptMessageFile",
    "MessageFile",
    "parse_message_bytes",
    "read_message_file",
    "trailer_for",
]

VERSION = 2
HEADER = b"MTAQ" + bytes([VERSION]) + b"\n"
HEADER_V1 = b"MTAQ\x01\n"
HEADERS = (HEADER, HEADER_V1)  # every header a reader accepts
_LENGTHS = struct.Struct(">IQ")
_TRAILER = struct.Struct(">IQI7s")  # version 2
_TRAILER_V1 = struct.Struct(">IQ7s")
END = b"MTAEND\n"  # the last octets of every message file
TRAILER_SIZE = _TRAILER.size
MIN_SIZE = len(HEADER) + _TRAILER_V1.size  # the smallest file of any version
_UNCHECKED_TAIL = 4 + len(END)  # the checksum and END are not covered by the checksum
VERIFY_CHUNK = 1 << 20  # octets read at a time when a large file is verified


class CorruptMessageFile(ValueError):  # noqa: N818  (reads as a noun, like Postfix)
    """The file is not a complete message file (truncated, foreign or damaged)."""

    reason = "format"  # the label of mta_queue_corrupt_total


class ChecksumMismatch(CorruptMessageFile):
    """The file is complete but its octets are not those that were written."""

    reason = "checksum"


class Checksum:
    """The running CRC-32 of a message file being written (its header is counted)."""

    def __init__(self) -> None:
        self.value = zlib.crc32(HEADER)

    def update(self, data: bytes) -> None:
        self.value = zlib.crc32(data, self.value)


def trailer_for(envelope: Envelope, message_length: int, checksum: Checksum) -> bytes:
    """Envelope plus trailer: what ends a message file after its message bytes, whose
    running ``checksum`` (header and message) is completed here."""
    encoded = encode_envelope(envelope)
    lengths = _LENGTHS.pack(len(encoded), message_length)
    crc = zlib.crc32(lengths, zlib.crc32(encoded, checksum.value))
    return encoded + lengths + struct.pack(">I", crc) + END


class MessageFile:
    """A message file opened for reading; the message is read on demand.

    ``read_message`` returns the message bytes, checked against the file's checksum
    (ChecksumMismatch if they differ).  A reader that streams a large message in chunks
    instead must call :meth:`verify` first (or have opened the file with the default
    ``read_message_file(path, verify=True)``, which did).
    """

    def __init__(
        self,
        path: str,
        envelope: Envelope,
        message_length: int,
        message: bytes | None = None,
        *,
        expected_crc: int | None = None,
        size: int = 0,
    ) -> None:
        self.path = path
        self.envelope = envelope
        self.message_length = message_length
        self._message = message
        self._expected_crc = expected_crc  # None: verified already, or version 1
        self._size = size

    def read_message(self) -> bytes:
        """The message bytes (headers and body) as received; ChecksumMismatch if the file
        does not hold what was written."""
        if self._message is not None:
            return self._message
        with open(self.path, "rb") as f:
            f.seek(len(HEADER))
            message = f.read(self.message_length)
            if self._expected_crc is not None:
                rest = f.read(self._size - _UNCHECKED_TAIL - f.tell())
                crc = zlib.crc32(rest, zlib.crc32(message, zlib.crc32(HEADER)))
                self._check(crc)
        return message

    def verify(self) -> None:
        """Check the whole file against its checksum, reading it in chunks of
        :data:`VERIFY_CHUNK` octets; ChecksumMismatch if it differs."""
        if self._expected_crc is None:
            return
        with open(self.path, "rb") as f:
            self._check(streamed_crc(f, self._size - _UNCHECKED_TAIL))

    def read_headers(self, limit: int = 65536) -> bytes:
        """The header section (up to the first empty line), at most ``limit`` octets."""
        if self._message is not None:
            head = self._message[:limit]
        else:
            with open(self.path, "rb") as f:
                f.seek(len(HEADER))
                head = f.read(min(limit, self.message_length))
        end = head.find(b"\r\n\r\n")
        return head if end < 0 else head[: end + 2]

    def _check(self, crc: int) -> None:
        if crc != self._expected_crc:
            raise ChecksumMismatch(f"{self.path}: checksum mismatch (damaged message file)")
        self._expected_crc = None

    def iter_message(self, chunk_size: int) -> Generator[bytes, None, None]:
        """The message bytes in chunks of at most ``chunk_size`` octets, read from the file
        as they are asked for (so a large message is never held whole); the file is open
        until the generator is exhausted or closed.  Raises CorruptMessageFile if the file
        ends before ``message_length`` octets, and first checks the whole file against its
        checksum if that was not done yet (ChecksumMismatch)."""
        self.verify()
        if self._message is not None:
            for start in range(0, len(self._message), chunk_size):
                yield self._message[start : start + chunk_size]
            return
        left = self.message_length
        with open(self.path, "rb") as f:
            f.seek(len(HEADER))
            while left:
                chunk = f.read(min(chunk_size, left))
                if not chunk:
                    raise CorruptMessageFile(f"{self.path}: message file cut short")
                left -= len(chunk)
                yield chunk


def streamed_crc(f: BufferedReader, length: int) -> int:
    """The CRC-32 of the first ``length`` octets of binary file ``f``, read in chunks."""
    f.seek(0)
    crc = 0
    buffer = bytearray(min(VERIFY_CHUNK, max(length, 1)))
    view = memoryview(buffer)
    left = length
    while left > 0:
        n = f.readinto(view[: min(left, len(buffer))])
        if not n:
            break  # shorter than its trailer says: cannot match
        crc = zlib.crc32(view[:n], crc)
        left -= n
    return crc


READ_WHOLE = 256 * 1024  # files up to this size are read with one read(2), and kept


def read_message_file(path: str, verify: bool = True) -> MessageFile:
    """Open and check ``path``; raise CorruptMessageFile if it is not complete, or
    ChecksumMismatch if it was altered.

    A small file (most mail) is read whole and checked, so that delivering it costs one
    open and one read; a large one is read in parts: its checksum streamed in chunks
    (``verify``), its message bytes only on demand.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= READ_WHOLE:
            return parse_message_bytes(path, f.read())
        head = f.read(len(HEADER))
        if size < MIN_SIZE or head not in HEADERS:
            raise CorruptMessageFile(f"{path}: no message file header")
        trailer_size = _trailer_size(head)
        f.seek(size - trailer_size)
        env_len, msg_len, crc = _check_trailer(path, head, f.read(trailer_size), size)
        f.seek(len(HEADER) + msg_len)
        envelope = _decode(path, f.read(env_len))
        message = MessageFile(path, envelope, msg_len, expected_crc=crc, size=size)
        if verify and crc is not None:
            message._check(streamed_crc(f, size - _UNCHECKED_TAIL))
    return message


def parse_message_bytes(path: str, whole: bytes) -> MessageFile:
    """Check a whole message file held in memory (a small file, or a segment record);
    ``path`` only names it in errors."""
    size = len(whole)
    head = whole[: len(HEADER)]
    if size < MIN_SIZE or head not in HEADERS:
        raise CorruptMessageFile(f"{path}: no message file header")
    trailer_size = _trailer_size(head)
    env_len, msg_len, crc = _check_trailer(path, head, whole[size - trailer_size :], size)
    if crc is not None and zlib.crc32(memoryview(whole)[: size - _UNCHECKED_TAIL]) != crc:
        raise ChecksumMismatch(f"{path}: checksum mismatch (damaged message)")
    env_start = len(HEADER) + msg_len
    envelope = _decode(path, whole[env_start : env_start + env_len])
    return MessageFile(path, envelope, msg_len, whole[len(HEADER) : env_start])


def _trailer_size(head: bytes) -> int:
    return _TRAILER_V1.size if head == HEADER_V1 else _TRAILER.size


def _check_trailer(
    path: str, head: bytes, trailer: bytes, size: int
) -> tuple[int, int, int | None]:
    """(envelope length, message length, checksum or None for version 1)."""
    crc: int | None = None
    if head == HEADER_V1:
        env_len, msg_len, end = _TRAILER_V1.unpack(trailer)
    else:
        env_len, msg_len, crc, end = _TRAILER.unpack(trailer)
    if end != END or len(HEADER) + msg_len + env_len + len(trailer) != size:
        raise CorruptMessageFile(f"{path}: incomplete message file (no valid trailer)")
    return env_len, msg_len, crc


def _decode(path: str, encoded: bytes) -> Envelope:
    try:
        return decode_envelope(encoded)
    except msgspec.DecodeError as exc:
        raise CorruptMessageFile(f"{path}: bad envelope: {exc}") from None
