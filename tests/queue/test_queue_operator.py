"""The queue CLI with postsuper's habits, and ``mailq`` in Postfix's format.

Three messages wait in ``deferred/`` because the next hop refuses connections (the
``queued`` fixture of test_queue_cli.py); the commands run as an operator runs them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, to_toml
from tests.queue.test_queue_cli import Queued, queued

pytestmark = pytest.mark.timeout(120)
__all__ = ["queued"]  # the fixture, used by name


def run(queued: Queued, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "mta", "--config", str(queued.relay.config_path), *args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, env=env, timeout=30)


def test_several_ids_and_ids_from_stdin_each_change_logged_with_the_user(queued: Queued) -> None:
    first, second, third = queued.ids.values()
    done = run(queued, "queue", "hold", first, second)
    assert done.returncode == 0, done.stderr
    assert sorted(queued.where(first) + queued.where(second)) == ["hold", "hold"]
    assert queued.where(third) == ["deferred"]
    assert re.search(rf"mta\.postsuper: {first}: placed on hold by \w+", done.stderr)
    assert re.search(rf"mta\.postsuper: {second}: placed on hold by \w+", done.stderr)

    # IDs as mailq prints them (with ! for held), one per line, on stdin
    done = run(queued, "queue", "release", "-", stdin=f"{first}!\n{second}!\n")
    assert done.returncode == 0, done.stderr
    assert not (queued.relay.spool / "hold" / first).exists()  # released: due now
    assert not (queued.relay.spool / "hold" / second).exists()
    assert done.stderr.count("released from hold by") == 2

    # one that fails among several: the others are done, the status says it
    done = run(queued, "queue", "hold", third, "0000000000000000000")
    assert done.returncode == 1
    assert "0000000000000000000: no such message in the queue" in done.stderr
    assert queued.where(third) == ["hold"]


def test_selection_by_state_sender_recipient_domain_and_age(queued: Queued) -> None:
    def listed(*selection: str) -> list[str]:
        done = run(queued, "queue", "list", *selection)
        assert done.returncode == 0, done.stderr
        return re.findall(r"^([0-9A-F]{19}) ", done.stdout, re.M)

    everything = sorted(queued.ids.values())
    assert sorted(listed("--recipient-domain", "dest.test", "--state", "deferred")) == everything
    assert listed("--recipient-domain", "other.test") == []
    assert listed("--sender", "<>") == []
    assert listed("--older-than", "1h") == []
    assert sorted(listed("--younger-than", "1h", "--sender", "Alice@Sender.test")) == everything

    done = run(queued, "queue", "hold", "--sender", "alice@sender.test", "--older-than", "2h")
    assert (done.returncode, done.stdout) == (0, "hold: 0 messages considered, 0 failed\n")
    done = run(queued, "queue", "hold", "--younger-than", "2h", "--recipient-domain", "dest.test")
    assert done.returncode == 0 and "3 messages considered, 0 failed" in done.stdout
    assert sorted(listed("--state", "hold")) == everything
    assert run(queued, "queue", "list", "--older-than", "2x").returncode == 2  # bad duration

    shown = run(queued, "queue", "show", queued.ids["second"], "--body").stdout
    assert "Subject: second\n" in shown and shown.endswith("\nhi\n")  # the body too


def test_mailq_prints_postfix_format_and_a_failed_change_under_all_exits_1(queued: Queued) -> None:
    first, second, third = queued.ids.values()
    assert run(queued, "queue", "hold", third).returncode == 0
    assert queued.relay.stop() == 0
    os.rename(queued.relay.spool / "deferred" / first, queued.relay.spool / "active" / first)
    for command in (["mailq"], ["sendmail", "-bp"]):
        done = run(queued, *command)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0] == "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"
        when = r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d"
        for queue_id, mark in ((first, r"\*"), (second, " "), (third, "!")):
            entry = rf"^{queue_id}{mark} +\d+ {when}  alice@sender.test$"
            assert re.search(entry, done.stdout, re.M), (queue_id, done.stdout)
        assert done.stdout.count("(connect to 127.0.0.1[127.0.0.1]") == 3
        assert re.search(r"^ {30,}\(connect to .*Connection refused\)$", done.stdout, re.M)
        for subject in ("first", "second", "third"):
            assert re.search(rf"^ {{30,}}{subject}@dest\.test$", done.stdout, re.M)
        assert lines[-1] == "-- 1 Kbytes in 3 Requests."

    # a change under --all that fails for one message exits non-zero
    done = run(queued, "queue", "delete", "--all", "--state", "active")
    assert done.returncode == 1
    assert f"{first}: being delivered now" in done.stderr
    assert "1 messages considered, 1 failed" in done.stdout
    assert queued.where(first) == ["active"]


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    config = tmp_path / "mta.toml"
    config.write_text(to_toml({"queue": {"path": str(tmp_path / "spool")}}))
    for state in ("incoming", "deferred"):
        (tmp_path / "spool" / state).mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for command in (["queue", "list", "--json"], ["queue", "list"], ["mailq"]):
        reader, writer = os.pipe()
        os.close(reader)  # like `| head -1` that has already exited
        args = [sys.executable, "-m", "mta", "--config", str(config), *command]
        try:
            done = subprocess.run(args, stdout=writer, stderr=subprocess.PIPE, env=env, timeout=30)
        finally:
            os.close(writer)
        assert b"Traceback" not in done.stderr and b"BrokenPipe" not in done.stderr, done.stderr
        assert done.returncode == 141, command  # 128 + SIGPIPE, as a shell reports it
