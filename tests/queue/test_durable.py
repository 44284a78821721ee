"""Durable writes (mta/queue/durable.py): all of the data, fsynced, renamed, directory synced."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mta.queue import durable
from mta.queue.durable import fsync_directory, replace_file, write_all


@pytest.fixture
def trickle(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``os.write`` writes at most 3 octets a call, as a write(2) may; the sizes it wrote."""
    real_write = os.write
    sizes: list[int] = []

    def write(fd: int, data: bytes | memoryview) -> int:
        written = real_write(fd, bytes(data[:3]))
        sizes.append(written)
        return written

    monkeypatch.setattr(durable.os, "write", write)
    return sizes


def test_write_all_loops_over_short_writes(tmp_path: Path, trickle: list[int]) -> None:
    data = b"0123456789" * 5
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    assert len(trickle) == 17 and sum(trickle) == len(data)


def test_replace_file_writes_everything_despite_short_writes(
    tmp_path: Path, trickle: list[int]
) -> None:
    data = bytes(range(256)) * 3
    replace_file(str(tmp_path / "final"), data, str(tmp_path / "tmp"))
    assert (tmp_path / "final").read_bytes() == data
    assert not (tmp_path / "tmp").exists()
    assert sum(trickle) == len(data)


def test_replace_file_syncs_the_file_then_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "new").mkdir()
    final = tmp_path / "new" / "final"
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(durable.os, "fsync", fsync)
    replace_file(str(final), b"data", str(tmp_path / "tmp"))
    assert synced == [str(tmp_path / "tmp"), str(tmp_path / "new")]
    assert final.read_bytes() == b"data"


def test_a_failed_write_leaves_neither_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(durable.os, "write", full)
    with pytest.raises(OSError, match="No space"):
        replace_file(str(tmp_path / "final"), b"data", str(tmp_path / "tmp"))
    assert list(tmp_path.iterdir()) == []


def test_replace_file_replaces_an_existing_file(tmp_path: Path) -> None:
    final = tmp_path / "final"
    final.write_bytes(b"old, and longer than the new")
    replace_file(str(final), b"new", str(tmp_path / "tmp"))
    assert final.read_bytes() == b"new"


def test_exclusive_refuses_a_leftover_temporary_file_and_keeps_it(tmp_path: Path) -> None:
    (tmp_path / "tmp").write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        replace_file(str(tmp_path / "final"), b"data", str(tmp_path / "tmp"))
    assert (tmp_path / "tmp").read_bytes() == b"someone else's"
    replace_file(str(tmp_path / "final"), b"data", str(tmp_path / "tmp"), exclusive=False)
    assert (tmp_path / "final").read_bytes() == b"data"
    assert not (tmp_path / "tmp").exists()


def test_fsync_directory_needs_a_directory(tmp_path: Path) -> None:
    fsync_directory(str(tmp_path))
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        fsync_directory(str(tmp_path / "f"))
