"""How the queue manager, the delivery agents, smtpd and the CLI find and talk to each other.

* Jobs and results travel over a Unix stream socket owned by the queue manager, framed as
  a 4-octet big-endian length plus a msgpack-encoded tagged Struct.
* Slot leases (destination shaping, mta/qmgr/shaping.py) travel on the same stream: an
  agent asks for a slot for a destination (:class:`SlotRequest`), the queue manager answers
  (:class:`SlotGrant`), the agent gives it back with what came of it (:class:`SlotRelease`).
* Wake-ups ("a message was queued", "flush the deferred queue") are single datagrams to a
  Unix datagram socket of the queue manager, each one msgpack-encoded tagged Struct
  (:data:`WakeUp`); losing one only costs the fallback poll, and one that cannot be decoded
  is ignored by the receiver.  A :class:`Waker` is the sending end, owned by its user
  (smtpd's group committer, the queue CLI).

Both sockets live in Linux's abstract namespace under a name derived from the spool path,
so no socket file can go stale, the spool path may be long, and two relays with different
spools on one host never meet.
"""

from __future__ import annotations

import hashlib
import os
import socket
from typing import Literal

import msgspec

from mta import framing
from mta.queue.results import RecipientResult

__all__ = [
    "FlushDeferred",
    "FrameReader",
    "Job",
    "Problem",
    "Queued",
    "Rescan",
    "Result",
    "SegmentAppended",
    "SlotGrant",
    "SlotOutcome",
    "SlotRelease",
    "SlotRequest",
    "SlotVerdict",
    "WakeUp",
    "Waker",
    "agent_address",
    "decode_frame",
    "decode_wakeup",
    "encode_frame",
    "encode_wakeup",
    "wake_address",
]

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


Problem = Literal["", "corrupt", "missing", "internal"]
"""Why a delivery agent made no attempt (then ``Result.results`` is empty):

* ``""`` — none: the attempt was made, ``results`` holds one entry per recipient tried;
* ``"corrupt"`` — the message cannot be read as a message file: it goes to ``corrupt/``;
* ``"missing"`` — the message file (or its segment) is not there: nothing is recorded;
* ``"internal"`` — the agent failed (a bug, a local error): tried again after
  ``delivery.min_backoff``.
"""


class Result(msgspec.Struct, tag="result", frozen=True, kw_only=True):
    """What one attempt at ``queue_id`` did (see :data:`Problem` when none was made)."""

    queue_id: str
    results: list[RecipientResult] = []
    problem: Problem = ""


SlotVerdict = Literal["go", "dead", "probe"]
"""The queue manager's answer to a slot request:

* ``"go"`` — connect; the slot is the agent's until it releases it (or disconnects);
* ``"dead"`` — the destination is suspended: defer without connecting (``reason`` says why);
* ``"probe"`` — the destination was dead: this one attempt finds out whether it is back.
"""

SlotOutcome = Literal["up", "unreachable", "none"]
"""What a transaction under a slot found out about its destination:

* ``"up"`` — a server took or refused the message (any SMTP reply after the greeting);
* ``"unreachable"`` — every server tried failed to connect, greeted 4xx, failed TLS or
  dropped the connection;
* ``"none"`` — nothing was learnt (no server to try, a local error, an unused slot).
"""


class SlotRequest(msgspec.Struct, tag="slot?", frozen=True):
    """Agent → queue manager: a slot for ``destination`` (a next hop's key), please;
    ``ticket`` is the agent's own number for the answer."""

    destination: str
    ticket: int


class SlotGrant(msgspec.Struct, tag="slot", frozen=True):
    """Queue manager → agent: the answer to request ``ticket``.  ``passable``: the
    destination has no rate, so the agent may pass a "go" slot on to its next transaction
    for the same destination without asking again (reporting the outcomes at release)."""

    ticket: int
    verdict: SlotVerdict
    reason: str = ""
    passable: bool = False


class SlotRelease(msgspec.Struct, tag="slot-", frozen=True):
    """Agent → queue manager: slot ``ticket`` is free; ``outcome`` (and ``reason``, the
    last error when unreachable) is its last transaction's; ``passed`` earlier ones under
    the same slot, not reported yet, had the outcome "up".  With ``kept`` the slot stays
    the agent's (it passed it on): this only reports the ``passed`` ones."""

    destination: str
    ticket: int
    outcome: SlotOutcome
    reason: str = ""
    passed: int = 0
    kept: bool = False


Frame = Job | Result | SlotRequest | SlotGrant | SlotRelease
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Frame)


def _name(spool_path: str, kind: str) -> str:
    digest = hashlib.sha1(os.path.abspath(spool_path).encode()).hexdigest()[:20]
    return f"\0mta-{kind}-{digest}"


def agent_address(spool_path: str) -> str:
    return _name(spool_path, "qmgr")


def wake_address(spool_path: str) -> str:
    return _name(spool_path, "wake")


def encode_frame(message: Frame) -> bytes:
    return framing.frame(_encoder.encode(message))


def decode_frame(body: bytes) -> Frame:
    return _decoder.decode(body)


class FrameReader(framing.FrameReader[Frame]):
    """Splits what arrives on a stream into jobs and results (mta/framing.py)."""

    def __init__(self) -> None:
        super().__init__(_decoder, MAX_FRAME)


class SegmentAppended(msgspec.Struct, tag="segment", frozen=True, array_like=True):
    """Messages were appended to segment ``name`` (a new one, perhaps) and its first
    ``committed`` octets are durable: the queue manager reads no further (segment.py).
    Sent after every group commit and again every ``ANNOUNCE_SECONDS`` while the writer
    lives (commit.py), so a lost datagram or a restarted queue manager costs a second,
    never a message.  (A sender without the field announces nothing: 0.)"""

    name: str
    committed: int = 0


class Queued(msgspec.Struct, tag="queued", frozen=True, array_like=True):
    """A message file was put into ``incoming/``."""


class FlushDeferred(msgspec.Struct, tag="flush", frozen=True, array_like=True):
    """``mta queue flush``: every deferred message is due now."""


class Rescan(msgspec.Struct, tag="rescan", frozen=True, array_like=True):
    """An operator moved messages between states: look at ``incoming/`` and ``deferred/``."""


WakeUp = SegmentAppended | Queued | FlushDeferred | Rescan
_wake_decoder = msgspec.msgpack.Decoder(WakeUp)


def encode_wakeup(message: WakeUp) -> bytes:
    return _encoder.encode(message)


def decode_wakeup(datagram: bytes) -> WakeUp | None:
    """The wake-up in ``datagram``, or None if it is not one."""
    try:
        return _wake_decoder.decode(datagram)
    except msgspec.DecodeError:
        return None


class Waker:
    """Pokes the queue manager of one spool; one socket, made when first needed."""

    def __init__(self, spool_path: str) -> None:
        self.address = wake_address(spool_path)
        self._sock: socket.socket | None = None

    def send(self, message: WakeUp) -> bool:
        """False if the queue manager is not listening (it polls anyway)."""
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        try:
            self._sock.sendto(encode_wakeup(message), self.address)
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
