"""Exit codes a child process and the master agree on.

A library below both: a worker that finds its configuration unusable exits with
:data:`EXIT_CONFIG`, and the master, seeing it at start, stops instead of restarting into
the same failure (gunicorn's named exit codes); once serving, it throttles the slot.
"""

from __future__ import annotations

__all__ = ["EXIT_CONFIG"]

EXIT_CONFIG = 78  # sysexits.h EX_CONFIG
