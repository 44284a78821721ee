"""Log lines are gathered and written by a thread: none is lost, duplicated or reordered,
warnings go out at once, and a forked child writes only its own lines."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

import pytest

from mta.logs import FLUSH_SECONDS, GatheringHandler, TextFormatter


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
    while len(got) < 500 and time.monotonic() < deadline:
        time.sleep(FLUSH_SECONDS)
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


def test_a_forked_child_writes_its_own_lines_only(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    logger, handler = logger_for(write_fd, "test.fork")
    logger.info("parent before fork")  # gathered, not yet written
    pid = os.fork()
    if pid == 0:  # the child: log, write out, leave without running the parent's cleanup
        code = 1
        try:
            logger.info("from the child")
            time.sleep(FLUSH_SECONDS * 4)  # its own writer thread runs too
            logger.info("child, last")
            handler.flush()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    handler.flush()
    got = messages(drain(read_fd))
    assert sorted(got) == sorted(["parent before fork", "from the child", "child, last"])
    assert got.index("from the child") < got.index("child, last")
