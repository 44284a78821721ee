"""Durable writes: the one place that knows how data survives a crash (DESIGN.md §3).

A file is durable once its data is on stable storage *and* the directory entry naming it
is: so a whole file is written to a temporary name, fsynced, renamed over its final name
(atomic: a reader sees the old file or the new one, never a mix) and then the directory
that holds it is fsynced.  ``write(2)`` may write less than it was given (a signal, a
full pipe, some file systems near full), so every write here loops until all is written.

The spool's message copies, the per-message state, bounces the queue manager makes and
local Maildir deliveries all go through :func:`replace_file`; the group committer and the
segment writer use :func:`write_all`, :func:`fdatasync` and :func:`fsync_directory` for
their batched flushes.  Every failure is an ``OSError`` for the caller to report; a failed
:func:`replace_file` leaves no temporary file behind.

Fault seam: every flush of a segment or of the incoming directory goes through
:func:`fdatasync` and :func:`fsync`, looked up on this module at each call, so an
in-process test can replace them (``monkeypatch.setattr(durable, "fdatasync", slow)``)
to delay or fail a flush.  End-to-end tests use ``strace -e inject=fdatasync:...`` on a
real process tree instead; nothing here reads the environment.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

__all__ = ["fdatasync", "fsync", "fsync_directory", "replace_file", "write_all"]


def write_all(fd: int, data: bytes) -> None:
    """Write every octet of ``data`` to ``fd``, however many calls that takes."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fdatasync(fd: int) -> None:
    """``fdatasync(2)`` (the fault seam for tests: see the module docstring)."""
    os.fdatasync(fd)


def fsync(fd: int) -> None:
    """``fsync(2)`` (the fault seam for tests: see the module docstring)."""
    os.fsync(fd)


def fsync_directory(path: str) -> None:
    """Make the entries of directory ``path`` (a rename, a new file) durable."""
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsync(dir_fd)
    finally:
        os.close(dir_fd)


def replace_file(
    path: str, data: bytes | Iterable[bytes], tmp_path: str, *, exclusive: bool = True
) -> None:
    """Make ``path`` hold ``data`` durably: write ``tmp_path`` (beside it, or in a
    directory on the same file system), fsync, rename it to ``path``, fsync the directory.

    ``data`` is one buffer, or chunks (a large message copied from its file, never held
    whole).  Whatever stops the write — a failed write or fsync, or an error raised by the
    chunks' source — removes ``tmp_path`` and is raised.  ``exclusive``: ``tmp_path`` must
    not exist yet (``O_EXCL``), as for a name only this writer can have made; otherwise a
    leftover is truncated.
    """
    chunks = (data,) if isinstance(data, bytes) else data
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(tmp_path, flags, 0o600)
    try:
        for chunk in chunks:
            write_all(fd, chunk)
        fsync(fd)
    except BaseException:  # not only OSError: the chunks' reader may fail too; re-raised
        os.close(fd)
        os.unlink(tmp_path)
        raise
    os.close(fd)
    os.rename(tmp_path, path)
    fsync_directory(os.path.dirname(path))
