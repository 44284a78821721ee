"""The spool's free space and the room rule (mta/queue/space.py), with a fake statvfs and
a fake clock; one test reads the real file system under tmp_path."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import msgspec
import pytest

from mta.config import Config, ConfigError, load_config
from mta.queue.space import MAX_AGE, SpoolSpace

pytestmark = pytest.mark.timeout(10)

BLOCK = 4096
MiB = 1 << 20


class Disk:
    """A file system whose free space the test sets; it counts the statvfs calls."""

    def __init__(self, avail: int, reserved: int = 0) -> None:
        self.avail = avail  # what an unprivileged writer may use
        self.reserved = reserved  # root's reserved blocks, on top
        self.calls = 0
        self.error: OSError | None = None

    def statvfs(self, path: str) -> os.statvfs_result:
        self.calls += 1
        if self.error is not None:
            raise self.error
        avail, free = self.avail // BLOCK, (self.avail + self.reserved) // BLOCK
        return os.statvfs_result((BLOCK, BLOCK, 1 << 30, free, avail, 0, 0, 0, 0, 255))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def space_on(disk: Disk, clock: Clock, min_free: int = 2 * MiB, max_size: int = MiB) -> SpoolSpace:
    return SpoolSpace("/spool", min_free, max_size, clock=clock, statvfs=disk.statvfs)


def test_free_is_what_an_unprivileged_writer_may_use() -> None:
    disk = Disk(avail=10 * MiB, reserved=50 * MiB)
    assert space_on(disk, Clock()).free() == 10 * MiB  # f_bavail, not f_bfree


def test_measured_at_most_once_per_max_age() -> None:
    disk, clock = Disk(avail=10 * MiB), Clock()
    space = space_on(disk, clock)
    for _ in range(1000):  # a pipelined burst of MAIL commands costs one statvfs
        assert space.free() == 10 * MiB
    assert disk.calls == 1
    disk.avail = 0
    clock.now += MAX_AGE * 0.99
    assert space.free() == 10 * MiB  # not measured again yet
    clock.now += MAX_AGE * 0.01
    assert space.free() == 0  # a full disk is seen within MAX_AGE
    assert disk.calls == 2
    assert MAX_AGE <= 1.0  # the issue: react within about a second


def test_needed_is_the_reserve_plus_the_declared_size_but_never_below_postfix_floor() -> None:
    space = space_on(Disk(0), Clock(), min_free=2 * MiB, max_size=MiB)
    floor = 3 * MiB // 2  # Postfix: 1.5 x message_size_limit
    assert space.needed() == 2 * MiB  # the reserve is above the floor
    assert space.needed(MiB) == 3 * MiB
    small_reserve = space_on(Disk(0), Clock(), min_free=0, max_size=MiB)
    assert small_reserve.needed() == floor
    assert small_reserve.needed(MiB // 2) == floor  # a small SIZE does not lower the floor
    assert small_reserve.needed(MiB) == floor  # min_free 0: only the floor counts


@pytest.mark.parametrize(
    ("avail", "declared", "room"),
    [
        (2 * MiB, 0, True),  # exactly what is needed
        (2 * MiB - BLOCK, 0, False),
        (3 * MiB, MiB, True),
        (3 * MiB - BLOCK, MiB, False),  # the declared message would eat into the reserve
        (0, 0, False),
    ],
)
def test_has_room(avail: int, declared: int, room: bool) -> None:
    assert space_on(Disk(avail), Clock()).has_room(declared) is room


def test_describe_says_what_is_free_and_what_is_needed() -> None:
    space = space_on(Disk(MiB), Clock())
    assert space.describe() == f"{MiB} bytes free, {2 * MiB} needed"
    assert space.describe(MiB) == f"{MiB} bytes free, {3 * MiB} needed"


def test_a_spool_that_cannot_be_measured_has_no_room_until_it_can() -> None:
    disk, clock = Disk(avail=10 * MiB), Clock()
    disk.error = FileNotFoundError(errno.ENOENT, "No such file or directory")
    space = space_on(disk, clock)
    assert not space.has_room()
    assert space.describe() == "spool space unknown (statvfs /spool: No such file or directory)"
    disk.error = None
    clock.now += MAX_AGE
    assert space.has_room()
    assert space.error == ""


def test_the_real_file_system(tmp_path: Path) -> None:
    space = SpoolSpace(str(tmp_path), 0, 1)
    st = os.statvfs(tmp_path)
    assert abs(space.free() - st.f_bavail * st.f_frsize) < 64 * MiB  # others write too
    assert space.has_room()
    assert not SpoolSpace(str(tmp_path), 1 << 62, 1).has_room()
    missing = SpoolSpace(str(tmp_path / "missing"), 0, 1)
    assert not missing.has_room()
    assert "No such file or directory" in missing.error


def test_from_the_configuration(tmp_path: Path) -> None:
    path = tmp_path / "mta.toml"
    path.write_text(
        '[queue]\npath = "/var/spool/mta"\nmin_free = 5000\n[smtp]\nmax_message_size = 1000\n'
    )
    space = SpoolSpace.for_config(load_config(str(path)))
    assert (space.path, space.min_free, space.needed()) == ("/var/spool/mta", 5000, 5000)
    assert space.needed(1) == 5001
    defaults = SpoolSpace.for_config(Config())
    assert defaults.min_free == 16 * MiB  # one segment
    assert defaults.needed() == 26_214_400 * 3 // 2  # the floor, at the default size limit


def test_a_negative_reserve_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "mta.toml"
    path.write_text("[queue]\nmin_free = -1\n")
    with pytest.raises(ConfigError, match=r"queue\.min_free"):
        load_config(str(path))
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"queue": {"min_free": "lots"}}, Config)
