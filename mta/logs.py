"""Logging to stderr (journald friendly), as text or one JSON object per line.

Every message logs a few lines, and every process of the relay writes to the same stderr.
Written one by one, each line is a ``write(2)`` on the event loop that can wait on the file
(when stderr is a file on the spool's file system, it competes with the queue's flushes for
the journal).  So lines are gathered and a thread of each process writes them out in one
``write`` at most :data:`FLUSH_SECONDS` later, like Postfix's postlogd does for its
processes.  Warnings and errors are written at once, with what was waiting before them, and
a child writes what is left before it exits.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time

__all__ = ["flush_logs", "setup_logging"]

FLUSH_SECONDS = 0.05


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``2026-11-28 12:00:00,123 mta[pid] logger: message``, with the date part formatted
    once per second instead of once per line (every message logs several lines)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s mta[%(process)d] %(name)s: %(message)s")
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int(record.msecs):03d}"


class GatheringHandler(logging.Handler):
    """Formats on the caller's thread, writes from a thread of its own (see above)."""

    def __init__(self, fd: int = 2) -> None:
        super().__init__()
        self.fd = fd
        self._lines: list[str] = []
        self._wake = threading.Condition()
        self._start_writer()
        os.register_at_fork(after_in_child=self._after_fork)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:  # noqa: BLE001  -- logging's contract: never raise to the caller
            self.handleError(record)
            return
        with self._wake:
            self._lines.append(line)
        if record.levelno >= logging.WARNING:
            self.flush()

    def flush(self) -> None:
        """Write everything gathered so far, now, on the caller's thread."""
        with self._wake:
            lines, self._lines = self._lines, []
        self._write(lines)

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        data = "".join(lines).encode("utf-8", "backslashreplace")
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:
            pass  # stderr is gone: nowhere left to say so

    def _run(self) -> None:
        while True:
            with self._wake:
                self._wake.wait(FLUSH_SECONDS)
                lines, self._lines = self._lines, []
            self._write(lines)

    def _start_writer(self) -> None:
        threading.Thread(target=self._run, name="log-writer", daemon=True).start()

    def _after_fork(self) -> None:
        # the writer thread stays behind in the parent; what the parent had gathered is
        # the parent's to write
        self._lines = []
        self._wake = threading.Condition()
        self._start_writer()


def _gathering_handler() -> GatheringHandler | None:
    """The process's handler, kept where logging keeps handlers: on the root logger."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, GatheringHandler):
            return handler
    return None


def flush_logs() -> None:
    """Write out the lines still gathered (before a process exits)."""
    handler = _gathering_handler()
    if handler is not None:
        handler.flush()


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Log to stderr through one :class:`GatheringHandler` per process; calling it again
    changes the format and level, and keeps the handler (and its writer thread)."""
    logging._srcfile = None  # type: ignore[attr-defined]  # no caller lookup: we never log it
    logging.logThreads = False
    handler = _gathering_handler()
    if handler is None:
        handler = GatheringHandler()
        atexit.register(handler.flush)  # children leave by os._exit and flush themselves
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("MTA_LOG_LEVEL", level).upper())
