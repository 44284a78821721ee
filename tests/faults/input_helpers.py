"""Helpers of the hostile-input fault tests (issue 10, item 7): a relay in front of a
capture sink, and a raw client that speaks exact bytes to it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.delivery.sink import CaptureSink
from tests.helpers import MtaProcess, RawClient, wait_until

__all__ = ["HELO", "relay_to", "send_raw_transaction", "settled"]

HELO = b"client.test"
Factory = Callable[..., MtaProcess]


def relay_to(mta_factory: Factory, sink: CaptureSink, **smtp: Any) -> MtaProcess:
    """A relay (one smtpd worker) whose every message goes to ``sink``."""
    overrides: dict[str, Any] = {"delivery": {"relayhost": f"127.0.0.1:{sink.port}"}}
    if smtp:
        overrides["smtp"] = smtp
    return mta_factory(overrides)


def send_raw_transaction(client: RawClient, sender: bytes, body: bytes) -> bytes:
    """MAIL, RCPT, DATA and ``body`` (which must end with the real CRLF.CRLF); the reply
    to the data."""
    assert client.cmd(b"MAIL FROM:<" + sender + b">").startswith(b"250 ")
    assert client.cmd(b"RCPT TO:<rcpt@example.org>").startswith(b"250 ")
    assert client.cmd(b"DATA").startswith(b"354 ")
    client.send(body)
    return client.reply()


def settled(server: MtaProcess, sink: CaptureSink, n: int) -> None:
    """Wait until the sink has ``n`` messages and the relay's queue is empty: from then on
    nothing more can reach the sink."""
    sink.wait_for(n, timeout=20)
    wait_until(server.queue_empty, timeout=20)
