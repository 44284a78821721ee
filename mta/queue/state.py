"""Per-message delivery state, kept beside the immutable message file once it was tried.

``state/<queue_id>`` records which recipients are done (sent, or failed and reported to the
sender) and how many attempts were made; it is replaced atomically (durable.py: write a
temporary file, fsync, rename, fsync the directory) so a crash leaves the old or the new
state, never a mix.
Losing the newest state is safe: recipients it marked done are tried again (a duplicate,
never a loss).
"""

from __future__ import annotations

import os

import msgspec

from mta.queue.durable import replace_file

__all__ = ["MessageState", "RecipientState", "StateStore"]


class RecipientState(msgspec.Struct, kw_only=True, omit_defaults=True):
    address: str
    status: str = "pending"  # pending | sent | failed (failed = reported in a bounce)
    dsn: str = ""
    reply: str = ""
    relay: str = ""


class MessageState(msgspec.Struct, kw_only=True, omit_defaults=True):
    queue_id: str
    recipients: list[RecipientState]
    attempts: int = 0
    first_attempt: float = 0.0
    last_attempt: float = 0.0
    next_try: float = 0.0
    last_error: str = ""
    delay_warned: bool = False  # the one "delayed" DSN was sent (delay_warning_time)

    def pending(self) -> list[str]:
        return [r.address for r in self.recipients if r.status == "pending"]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(MessageState)


class StateStore:
    """The ``state/`` directory of a spool."""

    def __init__(self, spool_path: str, create: bool = True) -> None:
        self.dir = os.path.join(spool_path, "state")
        if create:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)

    def path(self, queue_id: str) -> str:
        return os.path.join(self.dir, queue_id)

    def load(self, queue_id: str) -> MessageState | None:
        """The saved state, or None if the message was never tried (or it is unreadable)."""
        try:
            with open(self.path(queue_id), "rb") as f:
                return _decoder.decode(f.read())
        except (FileNotFoundError, msgspec.DecodeError):
            return None

    def save(self, state: MessageState) -> None:
        path = self.path(state.queue_id)
        # one queue manager writes states: a ".tmp" left by a crash is its own, reused
        replace_file(path, _encoder.encode(state), path + ".tmp", exclusive=False)

    def remove(self, queue_id: str) -> None:
        try:
            os.unlink(self.path(queue_id))
        except FileNotFoundError:
            pass
