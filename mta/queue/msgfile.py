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

import msgspec

from mta.queue.envelope import Envelope, decode_envelope, encode_envelope

__all__ = [
    "HEADER",
    "CorruptMessageFile",
    "MessageFile",
    "read_message_file",
    "trailer_for",
]

VERSION = 1
HEADER = b"MTAQ" + bytes([VERSION]) + b"\n"
_TRAILER = struct.Struct(">IQ7s")
_END = b"MTAEND\n"
TRAILER_SIZE = _TRAILER.size


class CorruptMessageFile(ValueError):  # noqa: N818  (reads as a noun, like Postfix)
    """The file is not a complete message file (truncated, foreign or damaged)."""


def trailer_for(envelope: Envelope, message_length: int) -> bytes:
    """Envelope plus trailer: what ends a message file after its message bytes."""
    encoded = encode_envelope(envelope)
    return encoded + _TRAILER.pack(len(encoded), message_length, _END)


class MessageFile:
    """A verified message file opened for reading; the message is read on demand."""

    def __init__(self, path: str, envelope: Envelope, message_length: int) -> None:
        self.path = path
        self.envelope = envelope
        self.message_length = message_length

    def read_message(self) -> bytes:
        """The message bytes (headers and body) as received."""
        with open(self.path, "rb") as f:
            f.seek(len(HEADER))
            return f.read(self.message_length)

    def read_headers(self, limit: int = 65536) -> bytes:
        """The header section (up to the first empty line), at most ``limit`` octets."""
        with open(self.path, "rb") as f:
            f.seek(len(HEADER))
            head = f.read(min(limit, self.message_length))
        end = head.find(b"\r\n\r\n")
        return head if end < 0 else head[: end + 2]


def read_message_file(path: str) -> MessageFile:
    """Open and verify ``path``; raise CorruptMessageFile if it is not complete."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < len(HEADER) + TRAILER_SIZE or f.read(len(HEADER)) != HEADER:
            raise CorruptMessageFile(f"{path}: no message file header")
        f.seek(size - TRAILER_SIZE)
        env_len, msg_len, end = _TRAILER.unpack(f.read(TRAILER_SIZE))
        if end != _END or len(HEADER) + msg_len + env_len + TRAILER_SIZE != size:
            raise CorruptMessageFile(f"{path}: incomplete message file (no valid trailer)")
        f.seek(len(HEADER) + msg_len)
        try:
            envelope = decode_envelope(f.read(env_len))
        except msgspec.DecodeError as exc:
            raise CorruptMessageFile(f"{path}: bad envelope: {exc}") from None
    return MessageFile(path, envelope, msg_len)
