"""Crash safety of the delivery side: ``kill -9`` of the whole process tree while it delivers.

The promise under test (DESIGN.md §3, §6): every message that got a ``250`` is delivered in
the end, after a restart on the same spool; a message may arrive twice only if the next hop
had already taken it before the crash (its result was not yet recorded), never otherwise.

Each message carries a unique counter in its Subject and Message-ID, so the sink's capture
can be counted per message.
"""

from __future__ import annotations

import os
import re
import smtplib
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable

import pytest

from tests.delivery.sink import Captured, CaptureSink
from tests.helpers import REPO, MtaProcess, wait_until

pytestmark = pytest.mark.timeout(180)

Factory = Callable[..., MtaProcess]
TOTAL = 1000
THREADS = 4
SUBJECT = re.compile(rb"\r\nSubject: crash-test (\d+)\r\n")
STATES = ("incoming", "active", "deferred", "hold", "corrupt")


def message(n: int) -> bytes:
    head = b"From: <load@client.test>\r\nTo: <sink@dest.test>\r\nSubject: crash-test %d\r\n" % n
    body = (b"line of the body of message %d\r\n" % n) * 20
    return head + b"Message-ID: <crash-%d@client.test>\r\n\r\n" % n + body


def send_all(
    server: MtaProcess, numbers: range, acknowledged: set[int] | None = None
) -> list[BaseException]:
    """Send one message per number over THREADS connections; the errors met, if any.

    The numbers of the messages that got their ``250`` are added to ``acknowledged``.
    """
    errors: list[BaseException] = []
    acknowledged = set() if acknowledged is None else acknowledged

    def worker(part: range) -> None:
        try:
            with smtplib.SMTP(
                "127.0.0.1", server.port, local_hostname="load.test", timeout=60
            ) as c:
                for n in part:
                    c.sendmail("load@client.test", [f"r{n}@dest.test"], message(n))
                    acknowledged.add(n)
        except (OSError, smtplib.SMTPException) as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(numbers[i::THREADS],)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def number(captured: Captured) -> int:
    match = SUBJECT.search(captured.data)
    assert match, captured.data[:300]
    n = int(match.group(1))
    assert captured.rcpt_tos == [f"r{n}@dest.test"]
    assert captured.data.endswith(message(n))  # whole, never half a message
    return n


def queued(server: MtaProcess) -> int:
    in_segments = len(server.segment_messages())
    return in_segments + sum(len(server.files(state)) for state in STATES)


def flush(server: MtaProcess) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "mta", "queue", "flush", "--config", str(server.config_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 0, done.stderr


def after_the_kill(sink: CaptureSink) -> list[Captured]:
    """What the sink holds once every connection of the killed relay is closed: whatever
    the relay sent before it died has been handled by then."""
    sink.wait_idle(timeout=30)
    return sink.messages


def after_the_queue_emptied(sink: CaptureSink) -> list[Captured]:
    """What the sink holds once the relay's queue is empty: nothing more to wait for, since
    a message leaves the queue only after the sink's reply, and the sink records a
    message before it replies."""
    return sink.messages


def test_kill9_while_delivering_loses_nothing(mta_factory: Factory, sink: CaptureSink) -> None:
    # 1. Queue 1000 messages while the next hop is down: every one is acknowledged.
    sink.down()
    relay = mta_factory(
        {
            "delivery": {"relayhost": f"127.0.0.1:{sink.port}", "min_backoff": 60},
            "smtp": {"workers": 2},
        }
    )
    assert send_all(relay, range(TOTAL)) == []
    wait_until(lambda: len(relay.files("deferred")) == TOTAL, timeout=60)

    # 2. The next hop comes back and the queue is flushed; kill -9 everything mid-way.
    sink.up()
    flush(relay)
    sink.wait_for(TOTAL // 20, timeout=60)
    relay.kill_tree()
    before = Counter(number(c) for c in after_the_kill(sink))
    assert 0 < len(before) < TOTAL, "the kill came too late to test anything"
    assert queued(relay) > 0

    # 3. Restart on the same spool: whatever was left is delivered.
    relay.start()
    flush(relay)  # the deferred ones would otherwise wait for their backoff
    wait_until(lambda: queued(relay) == 0, timeout=90)
    got = Counter(number(c) for c in after_the_queue_emptied(sink))
    assert sorted(got) == list(range(TOTAL)), f"lost: {sorted(set(range(TOTAL)) - set(got))}"
    twice = {n for n, count in got.items() if count > 1}
    assert twice <= set(before), f"duplicated though not delivered before the kill: {twice}"
    assert all(count <= 2 for count in got.values())
    assert relay.files("corrupt") == []


def test_kill9_while_receiving_and_delivering_keeps_every_acknowledged_message(
    mta_factory: Factory, sink: CaptureSink
) -> None:
    relay = mta_factory({"delivery": {"relayhost": f"127.0.0.1:{sink.port}", "min_backoff": 60}})
    acknowledged: set[int] = set()
    sender = threading.Thread(target=send_all, args=(relay, range(TOTAL), acknowledged))
    sender.start()
    try:
        sink.wait_for(TOTAL // 4, timeout=60)
        relay.kill_tree()  # clients are cut off mid-transaction, deliveries mid-flight
    finally:
        sender.join(60)
    before = Counter(number(c) for c in after_the_kill(sink))
    assert 0 < len(before) < TOTAL, "the kill came too late to test anything"

    relay.start()
    flush(relay)
    wait_until(lambda: queued(relay) == 0, timeout=90)
    got = Counter(number(c) for c in after_the_queue_emptied(sink))
    lost = acknowledged - set(got)
    assert not lost, f"acknowledged with 250 but never delivered: {sorted(lost)}"
    twice = {n for n, count in got.items() if count > 1}
    assert twice <= set(before), f"duplicated though not delivered before the kill: {twice}"
    assert relay.files("corrupt") == []
    assert [p for p in relay.files("tmp")] == []  # what the crash left half-written is gone
