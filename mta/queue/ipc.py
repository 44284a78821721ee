"""How the queue manager, the delivery agents, smtpd and the CLI find and talk to each other.

* Jobs and results travel over a Unix stream socket owned by the queue manager, framed as
  a 4-octet big-endian length plus a msgpack-encoded tagged Struct.
* Wake-ups ("a message was queued", "flush the deferred queue") are single datagrams to a
  Unix datagram socket of the queue manager; losing one only costs the fallback poll.

Both sockets live in Linux's abstract namespace under a name derived from the spool path,
so no socket file can go stale, the spool path may be long, and two relays with different
spools on one host never meet.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct

import msgspec

from mta.queue.results import RecipientResult

__all__ = [
    "FrameReader",
    "Job",
    "Result",
    "agent_address",
    "decode_frame",
    "encode_frame",
    "send_wakeup",
    "wake_address",
]

_LENGTH = struct.Struct(">I")
MAX_FRAME = 16 << 20


class Job(msgspec.Struct, tag="job", frozen=True, kw_only=True):
    """Deliver ``queue_id`` to ``recipients`` (None: all in the envelope).

    The message is ``active/<queue_id>``, or, when ``segment`` is set, the ``length``
    octets at ``offset`` in ``segments/<segment>`` (segment.py)."""

    queue_id: str
    recipients: list[str] | None = None
    segment: str = ""
    offset: int = 0
    length: int = 0


class Result(msgspec.Struct, tag="result", frozen=True, kw_only=True):
    """What one attempt did; ``problem`` is "corrupt" or "missing" when no attempt was made."""

    queue_id: str
    results: list[RecipientResult] = []
    problem: str = ""


Frame = Job | Result
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Frame)


def _name(spool_path: str, kind: str) -> str:
    digest = hashlib.sha1(os.path.abspath(spool_path).encode()).hexdigest()[:20]
    return f"\0mta-{kind}-{digest}"


def agent_address(spool_path: str) -> str:
    return _name(spool_path, "qmgr")


def wake_address(spool_path: str) -> str:
    return _name(spool_path, "wake")


def encode_frame(frame: Frame) -> bytes:
    body = _encoder.encode(frame)
    return _LENGTH.pack(len(body)) + body


def decode_frame(body: bytes) -> Frame:
    return _decoder.decode(body)


class FrameReader:
    """Splits what arrives on a stream into frames: every complete frame of a read at
    once (results and jobs come in bursts; one await per frame would cost more than the
    frame)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """The frames completed by ``data``; ValueError for a frame over MAX_FRAME."""
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        pos = 0
        end = len(buffer)
        with memoryview(buffer) as view:
            while end - pos >= _LENGTH.size:
                (length,) = _LENGTH.unpack_from(view, pos)
                if length > MAX_FRAME:
                    raise ValueError(f"frame of {length} octets is too large")
                start = pos + _LENGTH.size
                if end - start < length:
                    break
                frames.append(_decoder.decode(view[start : start + length]))
                pos = start + length
        del buffer[:pos]
        return frames


_wake_socket: socket.socket | None = None


def send_wakeup(spool_path: str, what: bytes = b"queued") -> bool:
    """Poke the queue manager; False if it is not listening (it will poll anyway)."""
    global _wake_socket
    if _wake_socket is None:
        _wake_socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    try:
        _wake_socket.sendto(what, wake_address(spool_path))
    except OSError:
        return False
    return True
