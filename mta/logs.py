"""Logging for every process of the relay: one record, one line, written at once and whole.

Formats (``[log] format``):

* ``text``: ``2026-11-28 12:00:00,123 mta[pid] mta.smtpd: message`` (the original format);
* ``syslog``: ``Nov 28 12:00:00 host mta/smtpd[pid]: QID: ...``, Postfix's lines as syslog
  writes them, so that ``pflogsumm --syslog-name=mta`` and fail2ban read them;
* ``json``: one object per line, with the fields a call site passes in ``extra=`` (queue_id,
  client, from, to, relay, delay, dsn, status, size, nrcpt, message_id, ...).  Fields come
  from the call sites, not from parsing the text: a parser would trust client text (an
  address may hold ``, status=``) and break whenever a line's wording changes.

Outputs (``[log] output``): ``stderr``; ``syslog`` (RFC 3164 datagrams to ``/dev/log``,
facility mail); ``journald`` (the native protocol on ``/run/systemd/journal/socket``, with
``SYSLOG_IDENTIFIER=mta/smtpd`` as Postfix's lines have, and the JSON fields as journal
fields), falling back to syslog and then stderr when the socket is absent.

Invariants: a record is one ``write(2)`` (or one datagram) made before the logging call
returns, so lines of the processes of one message appear in causal order (smtpd's
``client=`` before the queue manager's ``removed``), and no line is lost when a process
dies.  The process part of a line (``smtpd``, ``qmgr``, ``smtp``, ``cleanup``...) is the
record's ``service`` extra, else the logger's last name (``mta.delivery`` is ``smtp``).
A failed write is dropped: there is nowhere left to say so.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from typing import Any

__all__ = ["FIELDS", "flush_logs", "setup_logging"]

# The structured fields a call site may pass with extra= (JSON mode and journald).
FIELDS = (
    "queue_id",
    "client",
    "from",
    "to",
    "orig_to",
    "relay",
    "delay",
    "delays",
    "dsn",
    "status",
    "size",
    "nrcpt",
    "message_id",
    "sasl_method",
    "sasl_username",
    "tls",
)
_SERVICES = {"delivery": "smtp", "parser": "smtpd", "root": "master"}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SEVERITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}
MAIL_FACILITY = 2  # RFC 5424 §6.2.1: mail system
DEV_LOG = "/dev/log"
JOURNAL_SOCKET = "/run/systemd/journal/socket"


def service_of(record: logging.LogRecord) -> str:
    """``smtpd``, ``qmgr``, ``smtp``...: what Postfix would call the process that logged."""
    service = getattr(record, "service", None)
    if service:
        return str(service)
    name = record.name.rsplit(".", 1)[-1]
    return _SERVICES.get(name, name)


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    return {key: record.__dict__[key] for key in FIELDS if key in record.__dict__}


class TextFormatter(logging.Formatter):
    """``2026-11-28 12:00:00,123 mta[pid] logger: message``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s mta[%(process)d] %(name)s: %(message)s")


class SyslogFormatter(logging.Formatter):
    """``Mon DD HH:MM:SS host program/service[pid]: message`` (month names in English
    whatever the locale: log readers match them)."""

    def __init__(self, program: str, host: str) -> None:
        super().__init__()
        self.program, self.host = program, host

    def tag(self, record: logging.LogRecord) -> str:
        return f"{self.program}/{service_of(record)}[{record.process}]"

    def format(self, record: logging.LogRecord) -> str:
        return (
            f"{syslog_time(record.created)} {self.host} {self.tag(record)}: {text_of(self, record)}"
        )


class JsonFormatter(logging.Formatter):
    def __init__(self, program: str, host: str) -> None:
        super().__init__()
        self.program, self.host = program, host

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
            + f".{int(record.msecs):03d}{time.strftime('%z', time.localtime(record.created))}",
            "host": self.host,
            "program": self.program,
            "process": service_of(record),
            "pid": record.process,
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        entry.update(fields_of(record))
        entry["text"] = text_of(self, record)
        return json.dumps(entry, ensure_ascii=False, default=str)


_PLAIN = logging.Formatter()  # for tracebacks where no formatter of ours is in use


def text_of(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """The message, with a traceback on the lines after it (still one record, one write)."""
    text = record.getMessage()
    if record.exc_info:
        text += "\n" + formatter.formatException(record.exc_info)
    return text


_stamp: tuple[int, str] = (-1, "")  # (second, its stamp): several lines share a second


def syslog_time(created: float) -> str:
    global _stamp
    second = int(created)
    if _stamp[0] != second:
        t = time.localtime(second)
        text = (
            f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        )
        _stamp = (second, text)
    return _stamp[1]


class LineHandler(logging.Handler):
    """One ``os.write`` per record, on the caller's thread, before the call returns."""

    def __init__(self, fd: int = 2) -> None:
        super().__init__()
        self.fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
        except Exception:  # noqa: BLE001  -- logging's contract: never raise to the caller
            self.handleError(record)
            return
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:
            pass  # stderr is gone: nowhere left to say so


class DatagramHandler(logging.Handler):
    """One datagram per record to a local socket (``/dev/log`` or journald's)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.connect(path)  # OSError when absent: the caller picks another output

    def payload(self, record: logging.LogRecord) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()
        super().close()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = self.payload(record)
        except Exception:  # noqa: BLE001  -- logging's contract: never raise to the caller
            self.handleError(record)
            return
        try:
            self.sock.send(data)
        except OSError:
            pass  # the log daemon is gone or the datagram too large: nowhere to say so


class SyslogHandler(DatagramHandler):
    """RFC 3164 as the local syslog daemon takes it: ``<PRI>Mon DD HH:MM:SS tag: text``
    (the daemon adds the host name)."""

    def __init__(self, program: str, path: str = DEV_LOG) -> None:
        super().__init__(path)
        self.lines = SyslogFormatter(program, "")

    def payload(self, record: logging.LogRecord) -> bytes:
        pri = MAIL_FACILITY * 8 + _SEVERITY.get(record.levelname, 6)
        stamp = syslog_time(record.created)
        text = text_of(self.lines, record)
        return f"<{pri}>{stamp} {self.lines.tag(record)}: {text}".encode("utf-8", "replace")


class JournalHandler(DatagramHandler):
    """systemd's native protocol: ``KEY=value`` lines, a value with a newline in the
    length-prefixed binary form (systemd.journal-fields(7), "Native Journal Protocol")."""

    def __init__(self, program: str, path: str = JOURNAL_SOCKET) -> None:
        super().__init__(path)
        self.program = program

    def payload(self, record: logging.LogRecord) -> bytes:
        fields = {
            "MESSAGE": text_of(_PLAIN, record),
            "PRIORITY": str(_SEVERITY.get(record.levelname, 6)),
            "SYSLOG_FACILITY": str(MAIL_FACILITY),
            "SYSLOG_IDENTIFIER": f"{self.program}/{service_of(record)}",
            "SYSLOG_PID": str(record.process),
        }
        for key, value in fields_of(record).items():
            fields["MTA_" + key.upper()] = str(value)
        return b"".join(journal_field(key, value) for key, value in fields.items())


def journal_field(key: str, value: str) -> bytes:
    data = value.encode("utf-8", "replace")
    if b"\n" not in data:
        return key.encode() + b"=" + data + b"\n"
    return key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"


def make_handler(output: str, fmt: str, program: str) -> logging.Handler:
    """The handler for ``output``; journald falls back to syslog, syslog to stderr."""
    host = socket.gethostname().split(".")[0] or "localhost"
    if output == "journald":
        try:
            return JournalHandler(program)
        except OSError:
            output = "syslog"
    if output == "syslog":
        try:
            return SyslogHandler(program)
        except OSError:
            print(f"log.output: cannot use {DEV_LOG}; logging to stderr", file=sys.stderr)
    handler = LineHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(program, host))
    elif fmt == "syslog":
        handler.setFormatter(SyslogFormatter(program, host))
    else:
        handler.setFormatter(TextFormatter())
    return handler


def flush_logs() -> None:
    """Nothing is held back (every record is written when logged); kept for callers that
    make sure of it before a process exits."""
    for handler in logging.getLogger().handlers:
        handler.flush()


def setup_logging(
    level: str = "info", fmt: str = "text", output: str = "stderr", program: str = "mta"
) -> None:
    """Install the process's one handler on the root logger (children inherit it by fork);
    calling it again replaces it."""
    logging._srcfile = None  # type: ignore[attr-defined]  # no caller lookup: we never log it
    logging.logThreads = False
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    root.handlers[:] = [make_handler(output, fmt, program)]
    root.setLevel(os.environ.get("MTA_LOG_LEVEL", level).upper())
