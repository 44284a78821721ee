"""Reading bounces back with Python's ``email`` package, typed for mypy."""

from __future__ import annotations

from email.message import EmailMessage, Message
from typing import cast


def subparts(message: Message) -> list[EmailMessage]:
    """The parts of a multipart message (or the blocks of a delivery-status part)."""
    payload = message.get_payload()
    assert isinstance(payload, list)
    assert all(isinstance(part, EmailMessage) for part in payload)
    return cast(list[EmailMessage], payload)


def decoded(part: Message) -> bytes:
    """A leaf part's content, transfer-decoded."""
    content = part.get_payload(decode=True)
    assert isinstance(content, bytes)
    return content
