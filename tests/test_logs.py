"""Logging (mta/logs.py): each record is one whole write made before the call returns, in
the text, syslog and JSON formats; the syslog and journald outputs send one datagram per
record in their protocols; the [log] keys are checked."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from mta.config import LogConfig
from mta.logs import (
    JournalHandler,
    JsonFormatter,
    LineHandler,
    SyslogFormatter,
    SyslogHandler,
    TextFormatter,
    make_handler,
    setup_logging,
)
from mta.server.message_id import HEADER_LIMIT, MessageIdScanner


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    yield read_fd, write_fd
    os.close(read_fd)
    os.close(write_fd)


def logger_with(handler: logging.Handler, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def read_all(read_fd: int) -> str:
    try:
        return os.read(read_fd, 1 << 20).decode()
    except BlockingIOError:
        return ""


def test_each_record_is_written_whole_before_the_call_returns(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    handler = LineHandler(write_fd)
    handler.setFormatter(TextFormatter())
    logger = logger_with(handler, "mta.smtpd")
    for n in range(3):
        logger.info("line %d", n)
        # no thread, no buffer: the line is in the pipe now, whole
        assert read_all(read_fd).endswith(f"mta[{os.getpid()}] mta.smtpd: line {n}\n")


def test_a_record_is_in_the_pipe_at_once(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    handler = LineHandler(write_fd)
    handler.setFormatter(SyslogFormatter("mta", "host"))
    logger = logger_with(handler, "mta.qmgr")
    logger.info("ABC: removed")
    assert read_all(read_fd).endswith(f" host mta/qmgr[{os.getpid()}]: ABC: removed\n")
    logger.error("boom", exc_info=ValueError("x"))  # a traceback stays in the same write
    assert read_all(read_fd).count(f"mta/qmgr[{os.getpid()}]: boom") == 1


def test_syslog_lines_are_postfix_shaped() -> None:
    formatter = SyslogFormatter("relay", "mx1")
    record = logging.makeLogRecord(
        {"name": "mta.delivery", "msg": "Q1: to=<a@b>", "created": 0.0, "process": 42}
    )
    line = formatter.format(record)
    assert re.fullmatch(
        r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d mx1 relay/smtp\[42\]: Q1: to=<a@b>", line
    )
    record.service = "local"  # the record says which agent it was
    assert " relay/local[42]: " in formatter.format(record)
    record = logging.makeLogRecord({"name": "mta.smtpd", "msg": "x", "created": 0.0, "process": 1})
    assert " relay/smtpd[1]: x" in formatter.format(record)


def test_json_lines_carry_the_fields_a_call_site_passes() -> None:
    record = logging.makeLogRecord(
        {
            "name": "mta.delivery",
            "msg": "%s: to=<%s>, status=sent",
            "args": ("Q1", "a@b.test"),
            "levelname": "INFO",
            "process": 7,
            "created": 1.5,
            "msecs": 500.0,
            "queue_id": "Q1",
            "to": "a@b.test",
            "status": "sent",
            "delay": 0.25,
        }
    )
    entry = json.loads(JsonFormatter("mta", "mx1").format(record))
    assert entry["text"] == "Q1: to=<a@b.test>, status=sent"
    assert (entry["queue_id"], entry["to"], entry["status"], entry["delay"]) == (
        "Q1",
        "a@b.test",
        "sent",
        0.25,
    )
    assert (entry["host"], entry["program"], entry["process"], entry["pid"]) == (
        "mx1",
        "mta",
        "smtp",
        7,
    )
    assert entry["level"] == "info" and entry["time"].startswith("19")


def datagram_server(path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(5)
    return server


def test_syslog_output_sends_rfc3164_datagrams_with_facility_mail(tmp_path: Path) -> None:
    with datagram_server(tmp_path / "log") as server:
        handler = SyslogHandler("mta", str(tmp_path / "log"))
        logger = logger_with(handler, "mta.smtpd")
        logger.warning("warning: unknown[192.0.2.1]: SASL LOGIN authentication failed")
        data = server.recv(65536).decode()
        handler.close()
    # PRI = mail (2) * 8 + warning (4)
    assert re.fullmatch(
        rf"<20>[A-Z][a-z]{{2}} [ \d]\d \d\d:\d\d:\d\d mta/smtpd\[{os.getpid()}\]: "
        r"warning: unknown\[192\.0\.2\.1\]: SASL LOGIN authentication failed",
        data,
    )


def test_journald_output_speaks_the_native_protocol(tmp_path: Path) -> None:
    with datagram_server(tmp_path / "journal") as server:
        handler = JournalHandler("mta", str(tmp_path / "journal"))
        logger = logger_with(handler, "mta.qmgr")
        logger.info("Q1: removed", extra={"queue_id": "Q1"})
        logger.info("two\nlines")
        first, second = server.recv(65536), server.recv(65536)
        handler.close()
    fields = dict(line.split(b"=", 1) for line in first.rstrip(b"\n").split(b"\n"))
    assert fields[b"MESSAGE"] == b"Q1: removed"
    assert fields[b"SYSLOG_IDENTIFIER"] == b"mta/qmgr"
    assert fields[b"PRIORITY"] == b"6" and fields[b"SYSLOG_FACILITY"] == b"2"
    assert fields[b"MTA_QUEUE_ID"] == b"Q1"
    # a value with a newline: the name, a newline, its length (64-bit little endian), value
    assert b"MESSAGE\n" + (9).to_bytes(8, "little") + b"two\nlines\n" in second


def test_outputs_fall_back_when_their_socket_is_absent(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("mta.logs.JOURNAL_SOCKET", str(tmp_path / "none"))
    monkeypatch.setattr(JournalHandler.__init__, "__defaults__", (str(tmp_path / "none"),))
    monkeypatch.setattr(SyslogHandler.__init__, "__defaults__", (str(tmp_path / "log"),))
    with datagram_server(tmp_path / "log"):
        assert isinstance(make_handler("journald", "syslog", "mta"), SyslogHandler)
    assert isinstance(make_handler("syslog", "syslog", "mta"), LineHandler)  # no /dev/log


def test_setup_logging_installs_one_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging, "_srcfile", logging._srcfile)  # type: ignore[attr-defined]
    monkeypatch.setattr(logging, "logThreads", logging.logThreads)
    monkeypatch.delenv("MTA_LOG_LEVEL", raising=False)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    setup_logging("info", "syslog", "stderr", "relay")
    [handler] = root.handlers
    assert isinstance(handler.formatter, SyslogFormatter) and handler.formatter.program == "relay"
    setup_logging("debug", "json")  # again: replaced, with the new format and level
    [again] = root.handlers
    assert isinstance(again.formatter, JsonFormatter)
    assert root.level == logging.DEBUG


def test_log_config_keys() -> None:
    assert LogConfig(format="syslog", output="journald", syslog_name="postfix-out")
    for bad in ({"format": "xml"}, {"output": "file"}, {"syslog_name": "a/b"}):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(bad, LogConfig)


def test_message_id_is_read_from_the_header_only() -> None:
    scanner = MessageIdScanner()
    for piece in (b"Subject: x\r\nMessage-", b"ID:\r\n <abc@example.test>\r\n\r\n", b"body"):
        scanner.feed(piece)
    assert scanner.message_id() == "abc@example.test"
    late = MessageIdScanner()
    late.feed(b"Subject: x\r\n\r\nMessage-ID: <in-the-body@x>\r\n")
    assert late.message_id() == ""
    far = MessageIdScanner()
    far.feed(b"X-Long: " + b"y" * HEADER_LIMIT + b"\r\nMessage-ID: <too-far@x>\r\n\r\n")
    assert far.message_id() == ""
