"""Crash safety of the receive path: ``kill -9`` of the whole process tree, then restart.

The promise under test (DESIGN.md §2.4, §3): a ``250`` after DATA means the message is
complete in the queue; a message whose DATA was cut short is never visible there; and a
server restarted on the same spool after a crash works, whatever was left in ``tmp/``.

Deliveries go to a relay that refuses connections, so the queue manager defers what we
accept and the messages stay in the spool (a segment or ``incoming/`` → ``active/`` →
``deferred/``).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from mta.queue.msgfile import CorruptMessageFile, read_message_file
from mta.queue.spool import Spool
from tests.helpers import MtaProcess, RawClient, child_pids, wait_until
from tests.server.queue_view import QUEUED_STATES, queue_id_of, queued, stored

pytestmark = pytest.mark.timeout(90)

Factory = Callable[..., MtaProcess]


@pytest.fixture
def mta(mta_factory: Factory) -> Iterator[MtaProcess]:
    with socket.socket() as dead:  # bound, never listening: every delivery is refused
        dead.bind(("127.0.0.1", 0))
        yield mta_factory({"delivery": {"relayhost": f"127.0.0.1:{dead.getsockname()[1]}"}})


def visible(server: MtaProcess) -> set[str]:
    """Every message the queue manager acts on: in segments and in every state but ``tmp/``."""
    states = ("hold", "corrupt")
    return queued(server) | {p.name for state in states for p in server.files(state)}


def open_session(server: MtaProcess) -> RawClient:
    client = RawClient(server.port)
    assert client.cmd(b"EHLO client.test").startswith(b"250")
    return client


def start_transaction(client: RawClient, n: int = 0) -> None:
    client.send(b"MAIL FROM:<s%d@client.test>\r\nRCPT TO:<r%d@example.org>\r\nDATA\r\n" % (n, n))
    assert [r[:3] for r in client.replies(3)] == [b"250", b"250", b"354"]


def message(n: int, size: int = 3000) -> bytes:
    """A message as the client means it (the wire form is :func:`stuffed`)."""
    line = b"message %d " % n + b"x" * 60 + b"\r\n"
    return b"Subject: crash %d\r\n\r\n" % n + line * (size // len(line)) + b"..dot\r\n"


def stuffed(data: bytes) -> bytes:
    return data.replace(b"\r\n.", b"\r\n..")


def assert_complete(server: MtaProcess, queue_id: str, n: int, sent: bytes) -> None:
    """The queued file of ``queue_id`` is complete and holds exactly ``sent`` (unstuffed)."""
    envelope, data = stored(server, queue_id)
    assert envelope.queue_id == queue_id
    assert envelope.sender == f"s{n}@client.test"
    assert [r.address for r in envelope.recipients] == [f"r{n}@example.org"]
    assert envelope.size == len(data)
    trace, _, rest = data.partition(b"\r\nSubject: crash ")
    assert trace.startswith(b"Received: from client.test ([127.0.0.1])\r\n\tby mx.test ")
    assert trace.count(b"\r\n") == 2  # from / by / for: one folded trace field
    assert stuffed(b"Subject: crash " + rest) == sent


def assert_accepts_mail(server: MtaProcess) -> str:
    client = open_session(server)
    start_transaction(client, 99)
    body = stuffed(message(99))
    queue_id = queue_id_of(client.cmd(body + b"."))
    assert client.cmd(b"QUIT").startswith(b"221")
    client.close()
    assert_complete(server, queue_id, 99, body)
    return queue_id


def test_kill9_right_after_250_keeps_every_acknowledged_message(mta: MtaProcess) -> None:
    client = open_session(mta)
    sent = {}
    for n in range(5):
        start_transaction(client, n)
        body = stuffed(message(n))
        sent[queue_id_of(client.cmd(body + b"."))] = (n, body)
    mta.kill_tree()  # immediately after the last 250 reached us
    client.close()
    assert visible(mta) == set(sent)
    for queue_id, (n, body) in sent.items():
        assert_complete(mta, queue_id, n, body)


@pytest.mark.timeout(120)
def test_kill9_under_load_then_restart(mta: MtaProcess) -> None:
    acked: dict[str, tuple[int, bytes]] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def sender(worker: int) -> None:
        client = open_session(mta)
        n = worker * 100_000
        try:
            while not stop.is_set():
                start_transaction(client, n)
                body = stuffed(message(n, size=500 + (n % 7) * 3000))
                queue_id = queue_id_of(client.cmd(body + b"."))
                with lock:
                    acked[queue_id] = (n, body)
                n += 1
        except (OSError, AssertionError):
            pass  # the server died under us: that is the point
        finally:
            client.close()

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(acked) > 30, timeout=60)  # under load, not a fixed moment
    with lock:  # what was acknowledged before the crash, and nothing after it
        mta.kill_tree()
        acknowledged = dict(acked)
    stop.set()
    for thread in threads:
        thread.join(15)
    assert len(acknowledged) > 20, "the load never got going"
    for queue_id, (n, body) in acknowledged.items():
        assert_complete(mta, queue_id, n, body)
    for state in QUEUED_STATES:  # acknowledged or not, nothing visible is partial
        for path in mta.files(state):
            read_message_file(str(path))
    spool = Spool(str(mta.spool))
    for ref in spool.segment_messages():
        spool.read_segment_message(ref)
    assert mta.files("hold") == mta.files("corrupt") == []

    mta.start()  # the same spool, after a crash
    assert_accepts_mail(mta)
    for queue_id, (n, body) in acknowledged.items():  # recovery lost nothing
        assert_complete(mta, queue_id, n, body)
    assert mta.files("corrupt") == []


def test_kill9_mid_data_leaves_nothing_visible_and_restart_works(mta: MtaProcess) -> None:
    client = open_session(mta)
    start_transaction(client, 1)
    body = stuffed(message(1, size=4_000_000))
    client.send(body[: len(body) // 2])
    # DATA is streamed to the spool, so most of those 2 MB are on disk well before the end
    wait_until(lambda: sum(p.stat().st_size for p in mta.files("tmp")) > 1_500_000, timeout=5)
    children = child_pids(mta.pid)
    mta.kill_tree()
    client.close()
    assert visible(mta) == set()
    leftovers = mta.files("tmp")
    assert len(leftovers) == 1  # never completed
    with pytest.raises(CorruptMessageFile):
        read_message_file(str(leftovers[0]))

    # The killed children are orphans now; a zombie still "exists" for kill(pid, 0), which
    # is how recovery tells a dead writer's tmp/ file from a live one.  A crashed machine
    # has no zombies: wait for init to reap them before we start again.
    wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in children))
    mta.start()
    queue_id = assert_accepts_mail(mta)
    wait_until(lambda: leftovers[0] not in mta.files("tmp"), timeout=10)  # recovery cleans
    assert visible(mta) == {queue_id}
