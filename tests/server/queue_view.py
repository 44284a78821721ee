"""What the server tests share: finding accepted messages in the spool as they move, and
reading replies.  Delivery in these tests goes to a relay that refuses every connection
(the ``dead_relay`` fixture), so accepted messages stay queued for the tests to read."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from mta.queue.envelope import Envelope
from mta.queue.spool import Spool
from tests.helpers import MtaProcess, RawClient

QUEUED_STATES = ("incoming", "active", "deferred")  # the way an accepted message moves
_QUEUED = re.compile(rb"^250 2\.0\.0 Ok: queued as ([0-9A-F]{19})\r\n$")


def queue_id_of(reply: bytes) -> str:
    match = _QUEUED.match(reply)
    assert match, f"not a queued reply: {reply!r}"
    return match.group(1).decode()


def queued(server: MtaProcess) -> set[str]:
    """Queue IDs of every accepted message (listed along the way they move)."""
    # in the order they move (a segment message may be copied into active/), so that a
    # message moving meanwhile is seen in its next place
    names = {ref.queue_id for ref in Spool(str(server.spool)).segment_messages()}
    for state in QUEUED_STATES:
        names.update(p.name for p in server.files(state))
    return names


def stored(server: MtaProcess, queue_id: str) -> tuple[Envelope, bytes]:
    """Envelope and message of ``queue_id``, wherever the queue manager has moved it."""
    spool = Spool(str(server.spool))
    for _ in range(100):
        try:
            found = spool.find(queue_id)
            if found is not None:  # a large message is read lazily: it may move meanwhile
                message_file = found[1]
                return message_file.envelope, message_file.read_message()
        except FileNotFoundError:  # moved between looking and reading
            continue
    raise AssertionError(f"{queue_id} is not in the queue: {sorted(queued(server))}")


def read_all_replies(client: RawClient) -> list[bytes]:
    """Every reply until the server closes the connection."""
    out = []
    while True:
        try:
            out.append(client.reply())
        except ConnectionError:
            return out


def running_relay(
    tmp_path_factory: pytest.TempPathFactory, dead_relay: str, overrides: dict[str, Any]
) -> Iterator[MtaProcess]:
    """A relay shared by a module's tests (for module-scoped fixtures), delivering to the
    dead relay so that what it accepts stays queued; stopped, or killed, at the end."""
    config = {"delivery": {"relayhost": dead_relay}, **overrides}
    proc = MtaProcess(tmp_path_factory.mktemp("mta"), config).start()
    try:
        yield proc
    finally:
        try:
            proc.stop(timeout=30)
        except Exception:  # noqa: BLE001  -- teardown must kill whatever is left
            proc.kill_tree()
