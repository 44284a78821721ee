"""Chooses the parser backend once: the compiled ``_parser_c`` or the pure ``_parser_py``.

It lives outside ``mta/protocol`` because it reads the environment; the sans-I/O package
imports no ``os``.

Like uvicorn's ``auto.py``: ``auto`` prefers the compiled module and falls back to Python;
``c`` insists on it (an ImportError is the caller's to report); ``python`` forces the twin.
The environment variable ``MTA_NO_EXTENSIONS=1`` forces Python whatever was asked, and
``MTA_PARSER`` gives the choice when the caller does not.  The choice is logged once.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

__all__ = ["BACKENDS", "backend", "backend_name", "select"]

log = logging.getLogger("mta.parser")

BACKENDS = {"c": "mta.protocol._parser_c", "python": "mta.protocol._parser_py"}
_selected: ModuleType | None = None


def select(choice: str | None = None) -> ModuleType:
    """Pick the backend for this process and return its module."""
    global _selected
    choice = choice or os.environ.get("MTA_PARSER", "auto")
    if choice not in ("auto", "c", "python"):
        raise ValueError(f"parser backend must be auto, c or python, not {choice!r}")
    if os.environ.get("MTA_NO_EXTENSIONS") == "1":
        choice = "python"
    if choice == "auto":
        try:
            module = importlib.import_module(BACKENDS["c"])
        except ImportError:
            module = importlib.import_module(BACKENDS["python"])
    else:
        module = importlib.import_module(BACKENDS[choice])
    _selected = module
    log.info("parser backend: %s", backend_name())
    return module


def backend() -> ModuleType:
    """The selected backend module (selects with the defaults on first use)."""
    return _selected if _selected is not None else select()


def backend_name() -> str:
    """``"c"`` or ``"python"``: what :func:`backend` is."""
    module = backend()
    return "c" if module.__name__ == BACKENDS["c"] else "python"
