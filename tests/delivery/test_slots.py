"""The delivery agent's slot client (mta/delivery/slots.py) against a fake queue manager
connection, and the address order of mta/delivery/dns.py."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest

from mta.delivery import slots as slots_module
from mta.delivery.dns import order_addresses
from mta.delivery.slots import Lease, SlotClient
from mta.queue.ipc import Frame, FrameReader, SlotGrant, SlotRelease, SlotRequest

DEST = "smtp:example.test:25:mx"


class FakeWriter:
    """What the client writes, decoded."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self._reader = FrameReader()

    def write(self, data: bytes) -> None:
        self.frames += self._reader.feed(data)

    def is_closing(self) -> bool:
        return False

    def take(self) -> list[Frame]:
        frames, self.frames = self.frames, []
        return frames


def synchronously(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run the coroutine test on a fresh event loop (no asyncio plugin here)."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


async def turn() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def client() -> tuple[SlotClient, FakeWriter]:
    slots = SlotClient(local_limit=2)
    writer = FakeWriter()
    slots.attach(cast(Any, writer))
    return slots, writer


async def hold(
    slots: SlotClient, outcomes: list[str], got: list[Lease], gate: asyncio.Event
) -> None:
    async with slots.slot(DEST) as lease:
        got.append(lease)
        await gate.wait()
        if lease.verdict != "dead":
            if outcomes.pop(0) == "up":
                lease.up()
            else:
                lease.unreachable("refused")


@synchronously
async def test_one_request_per_destination_and_a_slot_passed_on_reports_its_successes() -> None:
    slots, writer = client()
    got: list[Lease] = []
    gate = asyncio.Event()
    tasks = [asyncio.create_task(hold(slots, ["up"] * 3, got, gate)) for _ in range(3)]
    await turn()
    assert writer.take() == [SlotRequest(DEST, 1)]  # one for three transactions
    slots.granted(SlotGrant(1, "go", passable=True))
    await turn()
    assert writer.take() == [SlotRequest(DEST, 2)]  # for the next one waiting
    gate.set()
    await asyncio.gather(*tasks)
    frames = writer.take()
    # the slot served all three; the two passes were reported, then it went back
    assert sum(f.passed for f in frames if isinstance(f, SlotRelease)) == 2
    assert frames[-1] == SlotRelease(DEST, 1, "up", "", 2)  # the passes ride on the release
    assert len(got) == 3 and {lease.ticket for lease in got} == {1}
    slots.granted(SlotGrant(2, "go", passable=True))  # nobody waits any more: back at once
    await turn()
    assert writer.take() == [SlotRelease(DEST, 2, "none", "", 0)]


@synchronously
async def test_successes_of_a_slot_still_held_are_reported_soon() -> None:
    """The queue manager's slow start needs them: a slot may be held a long time."""
    slots, writer = client()
    got: list[Lease] = []
    first, second = asyncio.Event(), asyncio.Event()
    first.set()
    tasks = [asyncio.create_task(hold(slots, ["up"], got, gate)) for gate in (first, second)]
    await turn()
    slots.granted(SlotGrant(1, "go", passable=True))
    await turn()
    assert len(got) == 2  # passed on
    assert writer.take() == [SlotRequest(DEST, 1), SlotRequest(DEST, 2)]  # no report yet
    await asyncio.sleep(slots_module.REPORT_SECONDS * 2)
    assert writer.take() == [SlotRelease(DEST, 1, "none", "", 1, kept=True)]
    second.set()
    await asyncio.gather(*tasks)
    assert writer.take() == [SlotRelease(DEST, 1, "up", "", 0)]


@synchronously
async def test_a_rated_slot_is_not_passed_on() -> None:
    slots, writer = client()
    got: list[Lease] = []
    gate = asyncio.Event()
    gate.set()
    tasks = [asyncio.create_task(hold(slots, ["up"] * 2, got, gate)) for _ in range(2)]
    await turn()
    slots.granted(SlotGrant(1, "go", passable=False))
    await turn()
    frames = writer.take()
    assert SlotRelease(DEST, 1, "up", "", 0) in frames and SlotRequest(DEST, 2) in frames
    slots.granted(SlotGrant(2, "go"))
    await asyncio.gather(*tasks)
    assert [lease.ticket for lease in got] == [1, 2]


@synchronously
async def test_a_dead_verdict_answers_everyone_waiting_without_slots() -> None:
    slots, writer = client()
    got: list[Lease] = []
    gate = asyncio.Event()
    gate.set()
    tasks = [asyncio.create_task(hold(slots, [], got, gate)) for _ in range(5)]
    await turn()
    slots.granted(SlotGrant(1, "dead", "connect to x: refused"))
    await asyncio.gather(*tasks)
    assert [(lease.verdict, lease.reason) for lease in got] == [
        ("dead", "connect to x: refused")
    ] * 5
    assert writer.take() == [SlotRequest(DEST, 1)]  # no release for a dead answer


@synchronously
async def test_an_unreachable_outcome_is_never_passed_on() -> None:
    slots, writer = client()
    got: list[Lease] = []
    gate = asyncio.Event()
    gate.set()
    tasks = [asyncio.create_task(hold(slots, ["unreachable"], got, gate)) for _ in range(2)]
    await turn()
    slots.granted(SlotGrant(1, "go", passable=True))
    await turn()
    assert SlotRelease(DEST, 1, "unreachable", "refused", 0) in writer.take()
    tasks[1].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@synchronously
async def test_without_a_queue_manager_a_local_limit_stands_in() -> None:
    slots = SlotClient(local_limit=2)  # never attached
    got: list[Lease] = []
    gate = asyncio.Event()
    tasks = [asyncio.create_task(hold(slots, ["up"] * 3, got, gate)) for _ in range(3)]
    await turn()
    assert len(got) == 2 and all(lease.local for lease in got)
    gate.set()
    await asyncio.gather(*tasks)
    assert len(got) == 3


@synchronously
async def test_waiting_transactions_move_to_the_local_limit_when_the_connection_is_lost() -> None:
    slots, _writer = client()
    got: list[Lease] = []
    gate = asyncio.Event()
    gate.set()
    tasks = [asyncio.create_task(hold(slots, ["up"], got, gate)) for _ in range(1)]
    await turn()
    slots.detach()
    await asyncio.gather(*tasks)
    assert got[0].local


def test_a_slot_goes_back_after_max_passes_so_other_agents_get_their_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(slots_module, "MAX_PASSES", 1)

    async def scenario() -> None:
        slots, writer = client()
        got: list[Lease] = []
        gate = asyncio.Event()
        gate.set()
        tasks = [asyncio.create_task(hold(slots, ["up"] * 3, got, gate)) for _ in range(3)]
        await turn()
        slots.granted(SlotGrant(1, "go", passable=True))
        await turn()
        frames = writer.take()
        releases = [f for f in frames if isinstance(f, SlotRelease)]
        assert releases == [SlotRelease(DEST, 1, "up", "", 1)]  # served two, went back
        assert len(got) == 2
        slots.granted(SlotGrant(2, "go", passable=True))
        await asyncio.gather(*tasks)
        assert [lease.ticket for lease in got] == [1, 1, 2]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("preference", "expected"),
    [
        ("ipv6", ["::1", "127.0.0.1", "::2", "127.0.0.2", "::3"]),
        ("ipv4", ["127.0.0.1", "::1", "127.0.0.2", "::2", "::3"]),
    ],
)
def test_address_families_are_interleaved_the_preferred_first(
    preference: Any, expected: list[str]
) -> None:
    v4, v6 = ["127.0.0.1", "127.0.0.2"], ["::1", "::2", "::3"]
    assert order_addresses(v4, v6, preference) == expected


def test_any_preference_puts_both_families_in_the_first_two() -> None:
    for _ in range(20):
        first_two = order_addresses(["127.0.0.1", "127.0.0.2"], ["::1"], "any")[:2]
        assert sorted(first_two) == ["127.0.0.1", "::1"]
