"""Delivery errors: a destination that could not be reached or refused as a whole, classified
once at the boundary as permanent or transient and turned into one result per recipient."""

from __future__ import annotations

from mta.queue.results import RecipientResult

__all__ = ["DeliveryError"]


class DeliveryError(Exception):
    """A destination could not be reached or refused as a whole."""

    def __init__(self, permanent: bool, dsn: str, reply: str, relay: str = "none") -> None:
        super().__init__(reply)
        self.permanent = permanent
        self.dsn = dsn
        self.reply = reply
        self.relay = relay

    def result_for(self, address: str) -> RecipientResult:
        return RecipientResult(
            address=address,
            status="failed" if self.permanent else "deferred",
            dsn=self.dsn,
            reply=self.reply,
            relay=self.relay,
        )
