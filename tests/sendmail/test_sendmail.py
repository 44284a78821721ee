"""``sendmail`` and ``mailq`` as cron, PHP and mutt run them, against a real relay.

The relay (``mta serve``) forwards to a CaptureSink; ``sendmail`` runs as a separate
process with the message on stdin, found the relay from the configuration and is judged
by its exit status (sysexits.h) and by what the sink received.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.delivery.sink import CaptureSink
from tests.helpers import REPO, MtaProcess, free_port, to_toml, wait_until

pytestmark = pytest.mark.timeout(120)

Factory = Callable[..., MtaProcess]

MESSAGE = (
    b"To: Bob <bob@dest.test>\n"
    b"Cc: carol@dest.test\n"
    b"Bcc: secret@dest.test,\n"
    b"  other-secret@dest.test\n"
    b"Subject: cron output\n"
    b"\n"
    b"line one\n"
    b".\n"
    b"after a lone dot\n"
)


def run(
    args: list[str], stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    command = [sys.executable, "-m", "mta", *args]
    return subprocess.run(command, input=stdin, capture_output=True, env=full_env, timeout=60)


def sendmail(
    relay: MtaProcess, *flags: str, stdin: bytes = MESSAGE
) -> subprocess.CompletedProcess[bytes]:
    return run(["sendmail", "-C", str(relay.config_path), *flags], stdin)


def relay_to(mta_factory: Factory, sink: CaptureSink) -> MtaProcess:
    return mta_factory({"delivery": {"relayhost": f"127.0.0.1:{sink.port}"}})


def test_t_i_takes_recipients_from_the_headers_and_removes_bcc(
    mta_factory: Factory, sink: CaptureSink
) -> None:
    relay = relay_to(mta_factory, sink)
    done = sendmail(relay, "-t", "-i")
    assert done.returncode == 0, done.stderr
    [got] = sink.wait_for(1)
    assert sorted(got.rcpt_tos) == sorted(
        ["bob@dest.test", "carol@dest.test", "secret@dest.test", "other-secret@dest.test"]
    )
    assert b"Bcc" not in got.data and b"secret" not in got.data
    assert b"\r\nafter a lone dot\r\n" in got.data  # -i: the lone dot did not end it
    assert b"\r\nMessage-ID: <" in got.data and b"\r\nDate: " in got.data
    assert got.mail_from.endswith("@mx.test")  # user@hostname, as myorigin makes it


def test_without_i_a_lone_dot_ends_the_message_and_the_f_and_fullname_flags_set_the_sender(
    mta_factory: Factory, sink: CaptureSink
) -> None:
    relay = relay_to(mta_factory, sink)
    body = b"Subject: no from\n\nfirst\n.\nnever sent\n"
    done = sendmail(
        relay,
        "-f",
        "robot@app.test",
        "-FThe Robot",
        "-oem",
        "-odi",
        "--",
        "bob@dest.test",
        stdin=body,
    )
    assert done.returncode == 0, done.stderr
    [got] = sink.wait_for(1)
    assert got.mail_from == "robot@app.test" and got.rcpt_tos == ["bob@dest.test"]
    assert b'\r\nFrom: "The Robot" <robot@app.test>\r\n' in got.data
    assert b"first" in got.data and b"never sent" not in got.data


def test_bs_speaks_smtp_on_stdin(mta_factory: Factory, sink: CaptureSink) -> None:
    relay = relay_to(mta_factory, sink)
    dialogue = (
        b"EHLO app.test\r\nMAIL FROM:<app@app.test>\r\nRCPT TO:<bob@dest.test>\r\nDATA\r\n"
        b"Subject: via -bs\r\n\r\nhello\n.\r\nQUIT\r\n"  # one bare LF: made CRLF
    )
    done = sendmail(relay, "-bs", stdin=dialogue)
    assert done.returncode == 0, done.stderr
    replies = [line[:3] for line in done.stdout.split(b"\r\n") if line[3:4] == b" "]
    assert replies == [b"220", b"250", b"250", b"250", b"354", b"250", b"221"], done.stdout
    [got] = sink.wait_for(1)
    assert got.mail_from == "app@app.test" and b"Subject: via -bs" in got.data


def test_relay_down_queues_directly_and_delivers_after_start(
    mta_factory: Factory, sink: CaptureSink
) -> None:
    relay = relay_to(mta_factory, sink)
    assert relay.stop() == 0
    done = sendmail(relay, "-t", "-i", "-v")
    assert done.returncode == 0, done.stderr
    assert b"queued directly" in done.stderr
    [queued] = relay.files("incoming")
    mailq = run(["mailq", "-C", str(relay.config_path)])
    assert queued.name.encode() in mailq.stdout and b"-- 1 Kbytes in 1 Request." in mailq.stdout
    relay.start()
    [got] = sink.wait_for(1)
    assert len(got.rcpt_tos) == 4 and b"Bcc" not in got.data
    assert b"Received: by mx.test (mta, from userid" in got.data
    wait_until(relay.queue_empty)


def test_usage_and_configuration_errors_have_sysexits_codes(tmp_path: Path) -> None:
    assert run(["sendmail", "-Z"]).returncode == 64  # EX_USAGE
    assert run(["sendmail", "-f"]).returncode == 64
    missing = tmp_path / "missing.toml"
    done = run(["sendmail", "-C", str(missing), "bob@dest.test"], b"hi\n")
    assert done.returncode == 78 and str(missing).encode() in done.stderr  # EX_CONFIG
    done = run(["mailq"], env={"MTA_CONFIG": str(missing)})
    assert done.returncode == 78
    config = tmp_path / "mta.toml"
    config.write_text(to_toml({"queue": {"path": str(tmp_path / "spool")}}))
    done = run(["sendmail", "-C", str(config), "-t"], b"Subject: nobody\n\nhi\n")
    assert done.returncode == 64 and b"no recipient" in done.stderr
    assert run(["sendmail", "-C", str(config), "-q"]).returncode == 69  # no queue there


def test_bs_and_q_while_the_relay_is_down(tmp_path: Path) -> None:
    config = tmp_path / "mta.toml"
    spool = tmp_path / "spool"
    listen = f"127.0.0.1:{free_port()}"
    config.write_text(to_toml({"smtp": {"listen": [listen]}, "queue": {"path": str(spool)}}))
    done = run(["sendmail", "-C", str(config), "-bs"], b"EHLO x\r\nQUIT\r\n")
    assert done.returncode == 75 and done.stdout.startswith(b"421 4.3.0 ")  # EX_TEMPFAIL
    for state in ("incoming", "deferred"):
        (spool / state).mkdir(parents=True)
    assert run(["sendmail", "-C", str(config), "-q"]).returncode == 0


def test_mailq_of_an_empty_queue(tmp_path: Path) -> None:
    config = tmp_path / "mta.toml"
    config.write_text(to_toml({"queue": {"path": str(tmp_path / "spool")}}))
    for state in ("incoming", "deferred"):
        (tmp_path / "spool" / state).mkdir(parents=True)
    for args in (["mailq"], ["sendmail", "-bp"]):
        done = run(args, env={"MTA_CONFIG": str(config)})
        assert (done.returncode, done.stdout) == (0, b"Mail queue is empty\n"), args
