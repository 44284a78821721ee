"""``mta queue list|show|hold|release|delete|requeue|flush`` against a running relay.

The relay's next hop (a CaptureSink) is down, so what it accepts waits in ``deferred/``
(the default backoff of 300 s keeps it there until someone acts).  Every command runs as
the operator would run it, ``python -m mta queue ... --config FILE``, and is judged by its
exit status, its output and what it did to the spool and to delivery.
"""

from __future__ import annotations

import json
import os
import re
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.delivery.sink import CaptureSink
from tests.helpers import REPO, MtaProcess, to_toml, wait_until

pytestmark = pytest.mark.timeout(120)

Factory = Callable[..., MtaProcess]
SUBJECTS = ("first", "second", "third")
QUEUE_ID = re.compile(r"^[0-9A-F]{19}$")


def submit(relay: MtaProcess, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.test") as client:
        data = f"Subject: {subject}\r\nMessage-ID: <{subject}@sender.test>\r\n\r\nhi\r\n"
        client.sendmail("alice@sender.test", [f"{subject}@dest.test"], data.encode())


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "mta", "queue", *args, "--config", str(config)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=30)


@dataclass
class Queued:
    relay: MtaProcess
    sink: CaptureSink
    ids: dict[str, str]  # subject -> queue ID

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return cli(self.relay.config_path, *args)

    def ok(self, *args: str) -> str:
        done = self.cli(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def listing(self) -> dict[str, dict[str, Any]]:  # JSON
        return {e["id"]: e for e in json.loads(self.ok("list", "--json"))}

    def where(self, queue_id: str) -> list[str]:
        states = ("incoming", "active", "deferred", "hold", "corrupt")
        return [s for s in states if (self.relay.spool / s / queue_id).exists()]

    def delivered(self) -> list[str]:
        """Subjects the sink has received, in order."""
        found = []
        for captured in self.sink.messages:
            match = re.search(rb"\r\nSubject: (\w+)\r\n", captured.data)
            assert match
            found.append(match.group(1).decode())
        return found

    def empty(self) -> bool:
        return self.relay.queue_empty()


@pytest.fixture
def queued(mta_factory: Factory) -> Iterator[Queued]:
    """Three messages deferred because the next hop refuses connections."""
    with CaptureSink() as sink:
        sink.down()
        relay = mta_factory({"delivery": {"relayhost": f"127.0.0.1:{sink.port}"}})
        for subject in SUBJECTS:
            submit(relay, subject)
        files = wait_until(lambda: len(relay.files("deferred")) == 3 and relay.files("deferred"))
        wait_until(lambda: relay.log().count("status=deferred") == 3)
        names = [f.name for f in files]  # queue IDs sort by arrival
        yield Queued(relay, sink, dict(zip(SUBJECTS, names, strict=True)))


def test_list_text(queued: Queued) -> None:
    out = queued.ok("list")
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["ID", "STATE", "AGE", "SIZE"]
    for subject, queue_id in queued.ids.items():
        [line] = [line for line in lines if line.startswith(queue_id)]
        assert line.split()[1] == "deferred"
        assert line.endswith(f"<alice@sender.test> -> {subject}@dest.test")
    assert out.count("next try in ") == 3
    assert out.count("Connection refused") == 3


def test_list_json(queued: Queued) -> None:
    entries = queued.listing()
    assert set(entries) == set(queued.ids.values())
    now = time.time()
    for subject, queue_id in queued.ids.items():
        entry = entries[queue_id]
        assert entry["state"] == "deferred"
        assert entry["sender"] == "alice@sender.test"
        assert entry["recipients"] == [f"{subject}@dest.test"]
        assert isinstance(entry["size"], int) and entry["size"] > 0
        assert 0 <= entry["age"] < 60
        assert now + 200 < entry["next_try"] < now + 400  # 300 s, give or take the jitter
        assert "connect to 127.0.0.1[127.0.0.1]" in entry["last_error"]
        assert "Connection refused" in entry["last_error"]


def test_list_of_an_empty_queue(tmp_path: Path) -> None:
    config = tmp_path / "mta.toml"
    config.write_text(to_toml({"queue": {"path": str(tmp_path / "spool")}}))
    for state in ("incoming", "deferred"):
        (tmp_path / "spool" / state).mkdir(parents=True)
    done = cli(config, "list")
    assert (done.returncode, done.stdout) == (0, "queue is empty\n")
    done = cli(config, "list", "--json")
    assert (done.returncode, json.loads(done.stdout)) == (0, [])


def test_a_wrong_queue_path_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    config = tmp_path / "mta.toml"
    missing = tmp_path / "no-such-spool"
    config.write_text(to_toml({"queue": {"path": str(missing)}}))
    for args in (("list",), ("list", "--json"), ("flush",), ("hold", "--all"), ("show", "X")):
        done = cli(config, *args)
        assert done.returncode == 1, args
        assert f"{missing}: no queue here" in done.stderr, args
    assert not missing.exists()


def test_show(queued: Queued) -> None:
    queue_id = queued.ids["second"]
    out = queued.ok("show", queue_id)
    assert "state: deferred" in out
    assert f"queue_id: {queue_id}" in out
    assert "sender: alice@sender.test" in out
    assert "second@dest.test" in out
    assert "Subject: second\n" in out and "Message-ID: <second@sender.test>" in out
    assert "hi" not in out.split("Subject: second")[1]  # headers only, not the body
    shown = json.loads(queued.ok("show", queue_id, "--json"))
    assert shown["state"] == "deferred"
    assert shown["envelope"]["queue_id"] == queue_id
    assert shown["envelope"]["recipients"] == [{"address": "second@dest.test"}]
    assert "Subject: second\r\n" in shown["headers"]


def test_unknown_ids_and_bad_usage_fail_with_a_reason(queued: Queued) -> None:
    for action in ("show", "hold", "release", "delete", "requeue"):
        done = queued.cli(action, "0000000000000000000")
        assert done.returncode == 1, action
        assert "0000000000000000000: no such message in the queue" in done.stderr, action
    assert queued.cli("hold").returncode == 2  # neither an ID nor --all
    assert queued.cli("frobnicate").returncode == 2
    assert len(queued.relay.files("deferred")) == 3  # nothing was touched


def test_held_message_is_not_delivered_until_released(queued: Queued) -> None:
    held = queued.ids["second"]
    assert queued.ok("hold", held) == ""
    assert queued.where(held) == ["hold"]
    assert queued.listing()[held]["state"] == "hold"
    assert queued.cli("hold", held).returncode == 0  # holding twice is harmless

    queued.sink.up()
    queued.ok("flush")
    queued.sink.wait_for(2)
    wait_until(lambda: queued.relay.files("deferred") == [])
    assert sorted(queued.delivered()) == ["first", "third"]
    queued.ok("flush")  # a flush does not touch held mail
    # A message sent after the flush and delivered shows the queue manager has handled
    # the flush (wake-ups are read in the order they were sent) and acted since.
    submit(queued.relay, "probe")
    queued.sink.wait_for(3)
    assert queued.where(held) == ["hold"] and len(queued.sink.messages) == 3
    assert queued.delivered()[2] == "probe"

    assert queued.ok("release", held) == ""
    queued.sink.wait_for(4)
    assert queued.delivered()[3] == "second"
    wait_until(queued.empty)


def test_hold_and_release_all(queued: Queued) -> None:
    assert "3 messages" in queued.ok("hold", "--all")
    assert len(queued.relay.files("hold")) == 3 and queued.relay.files("deferred") == []
    queued.sink.up()
    queued.ok("release", "--all")
    queued.sink.wait_for(3)
    wait_until(queued.empty)
    assert sorted(queued.delivered()) == sorted(SUBJECTS)


def test_delete(queued: Queued) -> None:
    gone = queued.ids["first"]
    assert (queued.relay.spool / "state" / gone).exists()
    assert queued.ok("delete", gone) == ""
    assert queued.where(gone) == []
    assert not (queued.relay.spool / "state" / gone).exists()
    assert gone not in queued.listing()
    assert queued.cli("delete", gone).returncode == 1  # already gone

    queued.sink.up()
    queued.ok("flush")
    queued.sink.wait_for(2)
    wait_until(queued.empty)
    assert sorted(queued.delivered()) == ["second", "third"]


def test_requeue_tries_at_once_without_a_flush(queued: Queued) -> None:
    queued.sink.up()
    queue_id = queued.ids["third"]
    assert queued.ok("requeue", queue_id) == ""
    [got] = queued.sink.wait_for(1)
    assert got.rcpt_tos == ["third@dest.test"]
    wait_until(lambda: queued.where(queue_id) == [])
    assert len(queued.relay.files("deferred")) == 2  # the others still wait for their time

    assert queued.ok("hold", queued.ids["first"]) == ""
    assert queued.ok("requeue", queued.ids["first"]) == ""  # from hold/ as well
    queued.sink.wait_for(2)
    assert queued.delivered() == ["third", "first"]
    assert len(queued.relay.files("deferred")) == 1


def test_flush_retries_deferred_messages_now(queued: Queued) -> None:
    queued.sink.up()
    assert queued.ok("flush") == ""
    queued.sink.wait_for(3)
    wait_until(queued.empty)
    assert sorted(queued.delivered()) == sorted(SUBJECTS)
    assert queued.relay.log().count("status=sent") == 3


def test_flush_while_the_relay_is_stopped_makes_mail_due_at_the_next_start(
    queued: Queued,
) -> None:
    assert queued.relay.stop() == 0
    assert len(queued.relay.files("deferred")) == 3
    before = time.time()
    assert queued.ok("flush") == ""
    for path in queued.relay.files("deferred"):
        assert path.stat().st_mtime <= time.time()
        assert path.stat().st_mtime >= before - 1
    queued.sink.up()
    queued.relay.start()
    queued.sink.wait_for(3)
    wait_until(queued.empty)
