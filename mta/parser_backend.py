"""Chooses the parser backend: the compiled ``_parser_c`` or the pure ``_parser_py``.

It lives outside ``mta/protocol`` because it reads the environment; the sans-I/O package
imports no ``os``.  It keeps no choice of its own either: the caller (the smtpd worker)
selects once at start and hands the module to every session it makes.

Like uvicorn's ``auto.py``: ``auto`` prefers the compiled module and falls back to Python;
``c`` insists on it (an ImportError is the caller's to report); ``python`` forces the twin.
The environment variable ``MTA_NO_EXTENSIONS=1`` forces Python whatever was asked, and
``MTA_PARSER`` gives the choice when the caller does not.  The choice is logged, and a
fallback of ``auto`` (an install without a C compiler) is logged as a warning.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import cast

from mta.protocol.session import ParserBackend

__all__ = ["BACKENDS", "backend_name", "select"]

log = logging.getLogger("mta.parser")

BACKENDS = {"c": "mta.protocol._parser_c", "python": "mta.protocol._parser_py"}


def select(choice: str | None = None) -> ParserBackend:
    """Pick the backend (``auto``, ``c`` or ``python``) and return its module."""
    choice = choice or os.environ.get("MTA_PARSER", "auto")
    if choice not in ("auto", "c", "python"):
        raise ValueError(f"parser backend must be auto, c or python, not {choice!r}")
    if os.environ.get("MTA_NO_EXTENSIONS") == "1":
        choice = "python"
    if choice == "auto":
        try:
            module = importlib.import_module(BACKENDS["c"])
        except ImportError as exc:
            # Installed where no C compiler was (setup.py skipped the extension): it works,
            # but the operator should know why it is slower than it could be.
            log.warning("compiled parser not available (%s): using the pure-Python twin", exc)
            module = importlib.import_module(BACKENDS["python"])
    else:
        module = importlib.import_module(BACKENDS[choice])
    parser = cast(ParserBackend, module)
    log.info("parser backend: %s", backend_name(parser))
    return parser


def backend_name(parser: ParserBackend) -> str:
    """``"c"`` or ``"python"``: which backend ``parser`` is."""
    return "c" if parser.__name__ == BACKENDS["c"] else "python"
