"""Fixtures of the server tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def dead_relay() -> Iterator[str]:
    """A relayhost that refuses every connection (bound, never listening).

    Delivery of what we accept is then deferred, so the message files stay in the queue
    (``incoming/`` → ``active/`` → ``deferred/``) for the tests to read.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"
