"""Signals to the master (DESIGN.md §1): TERM drains, HUP reloads without a gap in service."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from mta.queue.msgfile import read_message_file
from tests.delivery.sink import CaptureSink
from tests.helpers import MtaProcess, RawClient, wait_until
from tests.master import ClientLoop, children_by_kind, ehlo_size, gone, send_messages

pytestmark = pytest.mark.timeout(120)

Factory = Callable[..., MtaProcess]
_QUEUED = re.compile(rb"^250 2\.0\.0 Ok: queued as ([0-9A-F]{19})\r\n$")


def big_message(size: int) -> bytes:
    line = b"0123456789" * 7 + b"\r\n"
    return b"Subject: big\r\n\r\n" + line * (size // len(line))


def test_term_during_a_5mb_transfer_lets_it_finish(mta_factory: Factory) -> None:
    server = mta_factory({"smtp": {"workers": 2}, "master": {"graceful_timeout": 20}})
    tree = wait_until(lambda: _tree(server), timeout=10)
    data = big_message(5 * 1024 * 1024)
    client = RawClient(server.port, timeout=30)
    try:
        assert client.cmd(b"EHLO client.test").startswith(b"250")
        client.send(b"MAIL FROM:<big@client.test>\r\nRCPT TO:<r@example.org>\r\nDATA\r\n")
        assert [r[:3] for r in client.replies(3)] == [b"250", b"250", b"354"]
        halfway = threading.Event()
        sender = threading.Thread(target=_send_slowly, args=(client, data, halfway))
        sender.start()
        assert halfway.wait(30)
        server.signal(signal.SIGTERM)
        sender.join(60)
        assert not sender.is_alive()
        reply = client.reply()
    finally:
        client.close()

    match = _QUEUED.match(reply)
    assert match, reply
    assert server.proc is not None
    assert server.proc.wait(30) == 0
    assert all(gone(pid) for pid in tree), "a child outlived the master"
    log = server.log()
    assert "stopping: draining children" in log
    assert "did not stop in time" not in log
    # the message is complete in the queue (the queue manager stopped before it came)
    queue_id = match.group(1).decode()
    [path] = [p for s in ("incoming", "active", "deferred") for p in server.files(s)]
    assert path.name == queue_id
    stored = read_message_file(str(path))
    assert stored.envelope.sender == "big@client.test"
    assert stored.read_message().endswith(data)


def _tree(server: MtaProcess) -> list[int] | None:
    kinds = children_by_kind(server.pid)
    pids = [pid for pids in kinds.values() for pid in pids]
    return pids if len(kinds.get("smtpd", [])) == 2 and "qmgr" in kinds else None


def _send_slowly(client: RawClient, data: bytes, halfway: threading.Event) -> None:
    """About 2.5 s of DATA in 64 KiB chunks; ``halfway`` is set in the middle."""
    chunk = 64 * 1024
    for offset in range(0, len(data), chunk):
        client.send(data[offset : offset + chunk])
        if offset >= len(data) // 2:
            halfway.set()
        time.sleep(0.03)
    client.send(b".\r\n")


def test_hup_applies_a_new_size_without_a_gap(mta_factory: Factory, sink: CaptureSink) -> None:
    server = mta_factory(
        {"smtp": {"workers": 2}, "delivery": {"relayhost": f"127.0.0.1:{sink.port}"}}
    )
    before = wait_until(lambda: len(_pids(server)) == 6 and set(_pids(server)), timeout=10)
    assert ehlo_size(server.port) == 26_214_400
    with ClientLoop(server.port) as clients:
        clients.wait_for(10)
        server.write_config(_with_smtp(server.config, max_message_size=1_234_567))
        server.signal(signal.SIGHUP)
        wait_until(lambda: ehlo_size(server.port) == 1_234_567, timeout=15)
        # every child is replaced, one at a time; the queue manager stays single
        wait_until(lambda: not set(_pids(server)) & before and len(_pids(server)) == 6, 15)
        assert all(ehlo_size(server.port) == 1_234_567 for _ in range(5))
        clients.wait_for(10)
        outcomes = clients.stop()
    assert outcomes["refused"] == 0, outcomes
    assert outcomes["failed"] == 0, (outcomes, clients.errors)
    assert outcomes["421"] == 0, outcomes
    log = server.log()
    assert "reloading: replacing children one at a time (generation 1)" in log
    assert " died " not in log, log
    # everything accepted before, during and after the reload was delivered
    sink.wait_for(outcomes["ok"], timeout=30)


def _pids(server: MtaProcess) -> list[int]:
    return [pid for pids in children_by_kind(server.pid).values() for pid in pids]


def _with_smtp(config: dict[str, Any], **smtp: Any) -> dict[str, Any]:
    return {**config, "smtp": {**config["smtp"], **smtp}}


BROKEN = [
    ("[smtp]\nmax_message_size = -5\n", "smtp.max_message_size"),  # an invalid value
    ("[smtp]\nworkers = 2\nno_such_key = 1\n", "no_such_key"),  # an unknown key
    ('[smtp\nmax_message_size = "a lot"\n', "not valid TOML"),
]


def test_hup_with_a_broken_file_keeps_the_running_config(
    mta_factory: Factory, sink: CaptureSink
) -> None:
    # (delivered to a sink, so that the stop at the end has nothing in flight to wait for)
    server = mta_factory(
        {"smtp": {"workers": 2}, "delivery": {"relayhost": f"127.0.0.1:{sink.port}"}}
    )
    pids = wait_until(lambda: len(_pids(server)) == 6 and set(_pids(server)), timeout=10)
    with ClientLoop(server.port, threads=1) as clients:
        for n, (text, key) in enumerate(BROKEN, start=1):
            server.config_path.write_text(text)
            server.signal(signal.SIGHUP)
            log = wait_until(
                lambda n=n: (log := server.log()).count("reload failed") == n and log, timeout=10
            )
            clients.wait_for(3)
            [line] = [x for x in log.splitlines() if "reload failed" in x][n - 1 :]
            assert "keeping the running configuration" in line
            assert key in line
            assert str(server.config_path) in line
            assert ehlo_size(server.port) == 26_214_400
        outcomes = clients.stop()
    assert outcomes["ok"] and outcomes["ok"] == sum(outcomes.values()), clients.errors
    assert set(_pids(server)) == pids  # nothing was replaced
    assert "reloading" not in server.log()
    # and a good file afterwards is picked up
    server.write_config(_with_smtp(server.config, max_message_size=4321))
    server.signal(signal.SIGHUP)
    wait_until(lambda: ehlo_size(server.port) == 4321, timeout=15)
    send_messages(server.port, 1)
