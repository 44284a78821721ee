"""The message file format: one immutable file per accepted message.

Layout (all integers big-endian)::

    b"MTAQ" version:u8 b"\\n"          6-octet header; version 1
    message bytes                      exactly as received (trace header first)
    envelope                           msgpack (see envelope.py)
    envelope_length:u32 message_length:u64 b"MTAEND\\n"   19-octet trailer

The message is streamed to disk while it arrives, so the envelope (whose size field is only
known at the end) follows it.  The trailer is written last: a file cut short anywhere lacks a
valid trailer or has lengths that do not add up to the file's size, so a partial file is
always detected (:class:`CorruptMessageFile`) and never delivered half.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Generator

import msgspec

from mta.queue.envelope import Envelope, decode_envelope, encode_envelope

__all__ = [
    "END",
    "HEADER",
    "CorruptMessageFile",
    "MessageFile",
    "parse_message_bytes",
    "read_message_file",
    "trailer_for",
]

VERSION = 1
HEADER = b"MTAQ" + bytes([VERSION]) + b"\n"
_TRAILER = struct.Struct(">IQ7s")
END = b"MTAEND\n"  # the last octets of every message file
TRAILER_SIZE = _TRAILER.size


class CorruptMessageFile(ValueError):  # noqa: N818  (reads as a noun, like Postfix)
    """The file is not a complete message file (truncated, foreign or damaged)."""


def trailer_for(envelope: Envelope, message_length: int) -> bytes:
    """Envelope plus trailer: what ends a message file after its message bytes."""
    encoded = encode_envelope(envelope)
    return encoded + _TRAILER.pack(len(encoded), message_length, END)


class MessageFile:
    """A verified message file opened for reading; the message is read on demand."""

    def __init__(
        self, path: str, envelope: Envelope, message_length: int, message: bytes | None = None
    ) -> None:
        self.path = path
        self.envelope = envelope
        self.message_length = message_length
        self._message = message

    def read_message(self) -> bytes:
        """The message bytes (headers and body) as received."""
        if self._message is not None:
            return self._message
        with open(self.path, "rb") as f:
            f.seek(len(HEADER))
            return f.read(self.message_length)

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

    def iter_message(self, chunk_size: int) -> Generator[bytes, None, None]:
        """The message bytes in chunks of at most ``chunk_size`` octets, read from the file
        as they are asked for (so a large message is never held whole); the file is open
        until the generator is exhausted or closed.  Raises CorruptMessageFile if the file
        ends before ``message_length`` octets."""
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


READ_WHOLE = 256 * 1024  # files up to this size are read with one read(2), and kept


def read_message_file(path: str) -> MessageFile:
    """Open and verify ``path``; raise CorruptMessageFile if it is not complete.

    A small file (most mail) is read whole, so that delivering it costs one open and one
    read; a large one is read in parts, and its message bytes only on demand.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= READ_WHOLE:
            return parse_message_bytes(path, f.read())
        head = f.read(len(HEADER))
        if size < len(HEADER) + TRAILER_SIZE or head != HEADER:
            raise CorruptMessageFile(f"{path}: no message file header")
        f.seek(size - TRAILER_SIZE)
        env_len, msg_len = _check_trailer(path, f.read(TRAILER_SIZE), size)
        f.seek(len(HEADER) + msg_len)
        envelope = _decode(path, f.read(env_len))
    return MessageFile(path, envelope, msg_len)


def parse_message_bytes(path: str, whole: bytes) -> MessageFile:
    """Verify a whole message file held in memory (a small file, or a segment record);
    ``path`` only names it in errors."""
    size = len(whole)
    if size < len(HEADER) + TRAILER_SIZE or not whole.startswith(HEADER):
        raise CorruptMessageFile(f"{path}: no message file header")
    env_len, msg_len = _check_trailer(path, whole[size - TRAILER_SIZE :], size)
    env_start = len(HEADER) + msg_len
    envelope = _decode(path, whole[env_start : env_start + env_len])
    return MessageFile(path, envelope, msg_len, whole[len(HEADER) : env_start])


def _check_trailer(path: str, trailer: bytes, size: int) -> tuple[int, int]:
    env_len, msg_len, end = _TRAILER.unpack(trailer)
    if end != END or len(HEADER) + msg_len + env_len + TRAILER_SIZE != size:
        raise CorruptMessageFile(f"{path}: incomplete message file (no valid trailer)")
    return env_len, msg_len


def _decode(path: str, encoded: bytes) -> Envelope:
    try:
        return decode_envelope(encoded)
    except msgspec.DecodeError as exc:
        raise CorruptMessageFile(f"{path}: bad envelope: {exc}") from None
