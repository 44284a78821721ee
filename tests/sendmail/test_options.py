"""sendmail's command line as callers write it, and the message it prepares (no processes)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from mta.config import Config, ConfigError, SmtpConfig, load_config
from mta.queue_select import parse_duration
from mta.sendmail.local import local_relay_address
from mta.sendmail.options import UsageError, parse_options
from mta.sendmail.submit import MessageTooLargeError, prepare
from tests.helpers import to_toml


@pytest.mark.parametrize(
    "argv",
    [
        # cron (Debian's): -FCronDaemon -i -B8BITMIME -oem
        ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
        # PHP's mail(): sendmail_path = "sendmail -t -i"
        ["-t", "-i", "-f", "app@x.test", "root"],
        # git send-email: -i then recipients; mutt: -oem -oi --
        ["-oem", "-oi", "--", "root"],
        ["-odi", "-oQ", "/var/spool", "-Am", "-G", "-U", "-h", "5", "-L", "x", "-q1h", "root"],
    ],
)
def test_the_flags_callers_use_are_taken(argv: list[str]) -> None:
    opts = parse_options(argv)
    assert opts.recipients == ["root"]
    assert opts.mode == "deliver"


def test_values_glued_or_apart_and_what_each_flag_sets() -> None:
    opts = parse_options(["-ti", "-f<me@x.test>", "-F", "Full Name", "-N", "success,delay"])
    assert (opts.extract, opts.dots, opts.sender) == (True, False, "me@x.test")
    assert opts.fullname == "Full Name" and opts.notify == "SUCCESS,DELAY"
    assert parse_options(["-f", "<>"]).sender == ""
    assert parse_options(["-oi", "a", "--", "-b"]).recipients == ["a", "-b"]
    assert parse_options(["-bs"]).mode == "smtp"
    assert parse_options(["-bp"]).mode == "mailq"
    assert parse_options(["-q"]).mode == "flush"
    assert parse_options(["-oem", "-odi", "-n"]).ignored == ["-oem", "-odi", "-n"]
    for bad in (["-Z"], ["-f"], ["-bz"], ["-B", "BINARYMIME"], ["-tk"]):
        with pytest.raises(UsageError):
            parse_options(bad)


def test_prepare_extracts_removes_bcc_adds_headers_and_stops_at_a_dot() -> None:
    config = Config(hostname="mx.test")
    text = (
        b"From someone Mon Nov 30 01:00:00 2026\n"  # an mbox separator
        b"To: a@x.test\nBcc: b@x.test,\n  c@x.test\nSubject: s\n\nbody\n.\nlost\n"
    )
    opts = parse_options(["-t", "-f", "me@x.test", "-F", "Me", "d@x.test"])
    message = prepare(config, opts, io.BytesIO(text))
    assert message.recipients == ["d@x.test", "a@x.test", "b@x.test", "c@x.test"]
    assert b"Bcc" not in message.data and b"c@x.test" not in message.data
    assert message.data.startswith(b'From: "Me" <me@x.test>\r\nDate: ')  # no mbox line
    assert b"\r\nMessage-ID: <" in message.data and b"@mx.test>\r\n" in message.data
    assert message.data.endswith(b"\r\nSubject: s\r\n\r\nbody\r\n")
    assert message.body == "7BIT"
    eight = prepare(config, parse_options(["r@x.test"]), io.BytesIO("Subject: é\n\nx\n".encode()))
    assert eight.body == "8BITMIME"


def test_a_message_larger_than_the_limit_is_refused() -> None:
    config = Config()
    big = io.BytesIO(b"Subject: big\n\n" + b"x" * 998 + b"\n")
    limit = config.smtp.max_message_size
    huge = io.BytesIO(b"Subject: big\n\n" + (b"x" * 998 + b"\n") * (limit // 1000 + 2))
    prepare(config, parse_options(["-i", "r@x.test"]), big)
    with pytest.raises(MessageTooLargeError):
        prepare(config, parse_options(["-i", "r@x.test"]), huge)


def test_durations() -> None:
    assert [parse_duration(t) for t in ("90s", "15m", "2h", "3d", "1w", "300")] == [
        90,
        900,
        7200,
        259200,
        604800,
        300,
    ]


def test_where_local_submission_connects(tmp_path: Path) -> None:
    config = Config(smtp=SmtpConfig(listen=("0.0.0.0:25",)))
    assert local_relay_address(config) == ("127.0.0.1", 25)
    path = tmp_path / "mta.toml"
    behind_haproxy = {
        "smtp": {"proxy_networks": ["127.0.0.1/32"]},
        "listeners": {
            "edge": {"listen": ["127.0.0.1:2526"], "proxy_protocol": True},
            "local": {"listen": ["127.0.0.1:2525"]},
        },
    }
    path.write_text(to_toml(behind_haproxy))
    assert local_relay_address(load_config(str(path))) == ("127.0.0.1", 2525)  # not PROXY
    path.write_text(to_toml({"sendmail": {"submit_address": "127.0.0.2:10025"}}))
    assert local_relay_address(load_config(str(path))) == ("127.0.0.2", 10025)
    path.write_text(to_toml({"sendmail": {"submit_address": "nowhere"}}))
    with pytest.raises(ConfigError, match=r"sendmail\.submit_address: "):
        load_config(str(path))
