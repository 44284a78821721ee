"""The envelope of a queued message, and the small delivery state kept beside it.

Both are msgspec Structs encoded as msgpack with encoders and decoders made once here.
Schema evolution: only add fields, always with defaults, so old queue files stay readable.
"""

from __future__ import annotations

import msgspec

__all__ = ["Envelope", "Recipient", "decode_envelope", "encode_envelope"]


class Recipient(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    address: str
    params: dict[str, str | None] = {}


class Envelope(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the SMTP transaction said about the message, fixed at acceptance."""

    queue_id: str
    sender: str  # "" for the null reverse-path <>
    recipients: list[Recipient]
    mail_params: dict[str, str | None] = {}
    client_address: str = ""
    client_helo: str = ""
    received_at: float = 0.0  # seconds since the epoch
    size: int = 0  # octets of message data as stored (trace header included)
    body_type: str = "7BIT"  # "7BIT" | "8BITMIME" (RFC 6152)
    smtputf8: bool = False  # RFC 6531
    is_bounce: bool = False  # a DSN we generated: never bounce it again
    hold: bool = False  # an access table said HOLD: the queue manager puts it in hold/


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)


def encode_envelope(envelope: Envelope) -> bytes:
    return _encoder.encode(envelope)


def decode_envelope(data: bytes) -> Envelope:
    """Raise msgspec.DecodeError (a ValueError) when ``data`` is not an envelope."""
    return _decoder.decode(data)
