"""Fixtures of the server tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from mta import parser_backend
from mta.protocol.session import ParserBackend
from tests.server.fake_io import ClockLoop


@pytest.fixture(scope="module")
def dead_relay() -> Iterator[str]:
    """A relayhost that refuses every connection (bound, never listening).

    Delivery of what we accept is then deferred, so the message files stay in the queue
    (``incoming/`` → ``active/`` → ``deferred/``) for the tests to read.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def parser() -> ParserBackend:
    """The backend this process would serve with (MTA_NO_EXTENSIONS=1: the Python twin)."""
    return parser_backend.select()


@pytest.fixture
def loop() -> Iterator[ClockLoop]:
    """An event loop whose clock the test moves (tests/server/fake_io.py); a callback that
    raised fails the test."""
    loop = ClockLoop()
    yield loop
    loop.close()
    assert loop.errors == [], "a callback failed"
