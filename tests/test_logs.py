"""Log lines are gathered and written by a thread: none is lost, duplicated or reordered,
warnings go out at once, and a forked child writes only its own lines."""

from __future__ import annotations

import fcntl
import logging
import os
import select
import sys
import termios
import time
from collections.abc import Iterator

import pytest

from mta.logs import (
    FLUSH_SECONDS,
    GatheringHandler,
    JsonFormatter,
    TextFormatter,
    flush_logs,
    setup_logging,
)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    yield read_fd, write_fd
    os.close(read_fd)
    os.close(write_fd)


def logger_for(write_fd: int, name: str) -> tuple[logging.Logger, GatheringHandler]:
    handler = GatheringHandler(write_fd)
    handler.setFormatter(TextFormatter())
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, handler


def drain(read_fd: int) -> list[str]:
    data = b""
    while True:
        try:
            chunk = os.read(read_fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return data.decode().splitlines()


def messages(lines: list[str]) -> list[str]:
    return [line.split(": ", 1)[1] for line in lines]


def test_gathered_lines_are_written_soon_whole_and_in_order(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    logger, _ = logger_for(write_fd, "test.gather")
    for n in range(500):
        logger.info("line %d", n)
    deadline = time.monotonic() + 2
    got: list[str] = []
    while len(got) < 500 and (left := deadline - time.monotonic()) > 0:
        select.select([read_fd], [], [], left)  # until the writer thread has written
        got += drain(read_fd)
    assert messages(got) == [f"line {n}" for n in range(500)]
    assert all(f"mta[{os.getpid()}] test.gather: " in line for line in got)


def test_a_warning_is_written_at_once_with_what_waited_before_it(
    pipe: tuple[int, int],
) -> None:
    read_fd, write_fd = pipe
    logger, _ = logger_for(write_fd, "test.warn")
    logger.info("before")
    logger.warning("trouble")
    assert messages(drain(read_fd)) == ["before", "trouble"]  # no waiting for the thread


def test_flush_writes_everything_now(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    logger, handler = logger_for(write_fd, "test.flush")
    logger.info("one")
    logger.info("two")
    handler.flush()
    assert messages(drain(read_fd)) == ["one", "two"]


def unread(read_fd: int) -> int:
    """Octets waiting in the pipe (FIONREAD), without reading them."""
    return int.from_bytes(fcntl.ioctl(read_fd, termios.FIONREAD, bytes(4)), sys.byteorder)


def wait_written(read_fd: int, more_than: int, timeout: float = 2.0) -> bool:
    """Until more than ``more_than`` octets wait in the pipe."""
    deadline = time.monotonic() + timeout
    while unread(read_fd) <= more_than:
        if time.monotonic() > deadline:
            return False
        time.sleep(FLUSH_SECONDS / 10)
    return True


def test_a_forked_child_writes_its_own_lines_only(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    logger, handler = logger_for(write_fd, "test.fork")
    logger.info("parent before fork")  # gathered, not yet written
    record = logger.makeRecord(logger.name, logging.INFO, "", 0, "parent before fork", (), None)
    parents = len(handler.format(record)) + 1  # what the parent's writer thread will write
    pid = os.fork()
    if pid == 0:  # the child: log, write out, leave without running the parent's cleanup
        code = 1
        try:
            logger.info("from the child")
            # more than the parent's line: the child's own writer thread has written too
            written = wait_written(read_fd, more_than=parents)
            logger.info("child, last")
            handler.flush()
            code = 0 if written else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    handler.flush()
    got = messages(drain(read_fd))
    assert sorted(got) == sorted(["parent before fork", "from the child", "child, last"])
    assert got.index("from the child") < got.index("child, last")


def test_setup_logging_keeps_one_handler_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging, "_srcfile", logging._srcfile)  # type: ignore[attr-defined]
    monkeypatch.setattr(logging, "logThreads", logging.logThreads)
    monkeypatch.delenv("MTA_LOG_LEVEL", raising=False)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    setup_logging("info", "text")
    [handler] = root.handlers
    assert isinstance(handler, GatheringHandler)
    setup_logging("debug", "json")  # again: the same handler, with the new format and level
    assert root.handlers == [handler]
    assert isinstance(handler.formatter, JsonFormatter)
    assert root.level == logging.DEBUG
    flush_logs()  # finds it there
