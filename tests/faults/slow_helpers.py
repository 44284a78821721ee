"""Hostile and normal clients for the slowloris and flood tests (test_slowloris.py).

All of them are asyncio coroutines, so that hundreds run in the test process at once; each
one is bounded in time, so a server that never answers fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

__all__ = ["Trickled", "first_line", "greeting_times", "trickle"]

HOST = "127.0.0.1"


async def first_line(port: int, timeout: float = 10.0) -> tuple[bytes, asyncio.StreamWriter]:
    """Connect and read the server's first line (b"" if it closed without a word)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    except ConnectionResetError:
        line = b""
    return line, writer


@dataclass
class Trickled:
    greeting: bytes
    last_line: bytes  # what the server said last (its 421), b"" if nothing
    seconds: float  # from the first trickled byte to the server's close
    cut_off: bool  # the server closed the connection (not the client giving up)


async def trickle(port: int, every: float, give_up: float) -> Trickled:
    """A slowloris client: greeted, then one byte of a never-ending command line every
    ``every`` seconds, until the server closes or ``give_up`` seconds have passed."""
    reader, writer = await asyncio.open_connection(HOST, port)
    greeting = await asyncio.wait_for(reader.readline(), 10.0)
    started = time.monotonic()
    said = b""
    cut_off = False
    try:
        while time.monotonic() - started < give_up:
            writer.write(b"N")
            try:
                said = await asyncio.wait_for(reader.read(1024), every) or said
            except TimeoutError:
                continue  # nothing from the server yet: the next byte
            except ConnectionResetError:
                cut_off = True
                break
            if reader.at_eof():
                cut_off = True
                break
    finally:
        seconds = time.monotonic() - started
        writer.close()
    return Trickled(greeting, said, seconds, cut_off)


async def greeting_times(port: int, until: asyncio.Event, every: float = 0.25) -> list[float]:
    """A normal client connecting every ``every`` seconds until ``until``: the seconds from
    connect() to its 220 line, each time."""
    times = []
    while not until.is_set():
        began = time.monotonic()
        line, writer = await first_line(port, timeout=10.0)
        times.append(time.monotonic() - began)
        assert line.startswith(b"220 "), line
        writer.write(b"QUIT\r\n")
        writer.close()
        await asyncio.sleep(every)
    return times
