"""Logging to stderr (journald friendly), as text or one JSON object per line."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

__all__ = ["setup_logging"]


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


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    logging._srcfile = None  # type: ignore[attr-defined]  # no caller lookup: we never log it
    logging.logThreads = False
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("MTA_LOG_LEVEL", level).upper())
