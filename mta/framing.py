"""Length-prefixed msgpack frames over a byte stream: how the daemons talk on their UNIX
sockets (queue manager and delivery agents, mta/queue/ipc.py; smtpd workers and anvil,
mta/policy/anvil_wire.py).

A frame is a 4-octet big-endian length and that many octets of msgpack.  The reader hands
back every frame completed by a read at once (messages come in bursts; one await per frame
would cost more than the frame), and refuses a frame over its ``max_frame`` or one that does
not decode: the peer is broken and the caller drops the connection (ValueError).
"""

from __future__ import annotations

import struct
from typing import Any, Generic, TypeVar

import msgspec

__all__ = ["FrameReader", "frame"]

T = TypeVar("T")
_LENGTH = struct.Struct(">I")


def frame(body: bytes) -> bytes:
    """``body`` (msgpack) with its length in front."""
    return _LENGTH.pack(len(body)) + body


class FrameReader(Generic[T]):
    """Splits a stream into frames and decodes each with ``decoder``."""

    def __init__(self, decoder: msgspec.msgpack.Decoder[Any], max_frame: int) -> None:
        self._decoder = decoder
        self._max_frame = max_frame
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[T]:
        """The frames completed by ``data``, decoded; ValueError for a frame over
        ``max_frame`` or one that does not decode."""
        buffer = self._buffer
        buffer += data
        decoded: list[T] = []
        pos, end = 0, len(buffer)
        with memoryview(buffer) as view:
            while end - pos >= _LENGTH.size:
                (length,) = _LENGTH.unpack_from(view, pos)
                if length > self._max_frame:
                    raise ValueError(f"frame of {length} octets is too large")
                start = pos + _LENGTH.size
                if end - start < length:
                    break
                try:
                    decoded.append(self._decoder.decode(view[start : start + length]))
                except msgspec.DecodeError as exc:
                    raise ValueError(f"undecodable frame: {exc}") from None
                pos = start + length
        del buffer[:pos]
        return decoded
