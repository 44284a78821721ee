"""The master lifts the open-file limit so that smtp.max_connections sessions fit."""

from __future__ import annotations

import resource
from collections.abc import Callable
from pathlib import Path

from tests.helpers import MtaProcess, child_pids


def _soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open files limit")


def test_sessions_are_not_capped_by_a_low_soft_limit(
    mta_factory: Callable[..., MtaProcess],
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard > 1024, "this test needs a hard limit above 1024"
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # inherited by `mta serve`
    try:
        server = mta_factory({"smtp": {"max_connections": 4000}})
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    expected = min(hard, 4000 + 256)
    assert _soft_nofile(server.pid) == expected
    for child in child_pids(server.pid):
        assert _soft_nofile(child) == expected  # the workers inherit it
