"""What smtpd workers and the anvil process say to each other, and where anvil listens.

A stream over a Unix socket in Linux's abstract namespace, named after the spool path as
the queue manager's sockets are (mta/queue/ipc.py: no socket file to go stale, no limit on
the spool path's length, two relays on one host never meet); anvil answers only peers of
its own user or root (SO_PEERCRED).  Each frame is a 4-octet big-endian length and a
msgpack array of tagged Structs: a worker sends every request made in one turn of its
event loop in one frame, and anvil answers every request of a frame in one frame.  Requests
that want an answer carry an ``id`` (unique per connection); answers come in request order
but are matched by ``id``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import msgspec

from mta import framing
from mta.policy.counters import Kind

__all__ = [
    "Add",
    "Connect",
    "Counts",
    "Disconnect",
    "FrameReader",
    "Hold",
    "Request",
    "address",
    "encode",
]

T = TypeVar("T")
MAX_FRAME = 4 << 20


class Connect(msgspec.Struct, tag="c", frozen=True, array_like=True):
    """A new connection from ``client``: answered with its open count and rate."""

    id: int
    client: str


class Disconnect(msgspec.Struct, tag="d", frozen=True, array_like=True):
    """``count`` connections from ``client`` that this worker counted closed (no answer)."""

    client: str
    count: int = 1


class Add(msgspec.Struct, tag="a", frozen=True, array_like=True):
    """``amount`` events of ``kind`` from ``client``: answered with the window's count."""

    id: int
    kind: Kind
    client: str
    amount: int = 1


class Hold(msgspec.Struct, tag="h", frozen=True, array_like=True):
    """``count`` more connections open from each client, already counted by this worker:
    its first request after it (re)connects, so that a restarted anvil counts what was open
    before it started.  Answered (``Counts(id, 0, 0)``) when ``id`` is not 0."""

    id: int
    clients: dict[str, int]


class Counts(msgspec.Struct, tag="n", frozen=True, array_like=True):
    """The answer to request ``id``: open connections (Connect; else 0) and the count in
    the rate window."""

    id: int
    open: int
    rate: int


Request = Connect | Disconnect | Add | Hold

_encoder = msgspec.msgpack.Encoder()


def encode(messages: Sequence[msgspec.Struct]) -> bytes:
    return framing.frame(_encoder.encode(messages))


def address(spool_path: str) -> str:
    """The abstract socket name of the anvil serving the relay of ``spool_path``."""
    digest = hashlib.sha1(os.path.abspath(spool_path).encode()).hexdigest()[:20]
    return f"\0mta-anvil-{digest}"


class FrameReader(Generic[T]):
    """Splits a stream into frames (mta/framing.py), each a list of ``kind`` (a Struct type
    or a union of them); gives the messages of all of them in order."""

    def __init__(self, kind: Any) -> None:
        decoder: msgspec.msgpack.Decoder[list[T]] = msgspec.msgpack.Decoder(list[kind])
        self._frames: framing.FrameReader[list[T]] = framing.FrameReader(decoder, MAX_FRAME)

    def feed(self, data: bytes) -> list[T]:
        """Every message completed by ``data``; ValueError for a frame over MAX_FRAME or
        one that does not decode (the peer is broken: drop the connection)."""
        return [message for batch in self._frames.feed(data) for message in batch]
