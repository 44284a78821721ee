"""The queue manager's destination shaping (mta/qmgr/shaping.py), without waiting: time is
an argument."""

from __future__ import annotations

import msgspec
import pytest

from mta.config import Config
from mta.qmgr.shaping import FORGET_SECONDS, SWEEP_SECONDS, Grant, Shaper, destination_name

DEST = "smtp:example.test:25:mx"


def shaper(**delivery: object) -> Shaper:
    destinations = delivery.pop("destinations", {})
    config = msgspec.convert(
        {"delivery": delivery, "destinations": destinations}, Config, strict=False
    )
    return Shaper(config)


def ask(s: Shaper, n: int, now: float = 0.0, holder: str = "a", start: int = 1) -> list[Grant]:
    grants: list[Grant] = []
    for ticket in range(start, start + n):
        grants += s.request(holder, DEST, ticket, now)
    return grants


def test_destination_names_are_the_targets_of_next_hop_keys() -> None:
    assert destination_name("smtp:Example.TEST:25:mx") == "example.test"
    assert destination_name("smtp:relay.example:587") == "relay.example"
    assert destination_name("lmtp:10.0.0.5:24") == "10.0.0.5"
    assert destination_name("smtp:2001:db8::1:25") == "2001:db8::1"


def test_the_window_starts_at_the_initial_concurrency_and_the_rest_wait() -> None:
    s = shaper(initial_destination_concurrency=2, destination_concurrency=4)
    grants = ask(s, 5)
    assert [(g.ticket, g.verdict, g.passable) for g in grants] == [(1, "go", True), (2, "go", True)]
    # a release grants the first one waiting, in order
    assert s.release("a", DEST, 1, "none", "", 0, 1.0) == [Grant("a", 3, "go", passable=True)]


def test_slow_start_grows_one_per_window_of_successes_up_to_the_limit() -> None:
    s = shaper(initial_destination_concurrency=2, destination_concurrency=3)
    ask(s, 2)
    assert s.release("a", DEST, 1, "up", "", 0, 1.0) == []  # 1 success of a window of 2
    ask(s, 1, start=10)  # takes the free slot
    grants = s.release("a", DEST, 2, "up", "", 0, 1.0)  # 2 successes: window 3
    assert grants == []  # nobody waits
    assert len(ask(s, 3, start=20)) == 2  # 10, 20 and 21 busy: 3; 22 waits
    dest = s.destinations[DEST]
    assert dest.window == 3 and len(dest.busy) == 3 and len(dest.waiting) == 1
    s.release("a", DEST, 10, "up", "", 40, 2.0)  # many passed successes: still the limit
    assert dest.window == 3


def test_an_unreachable_attempt_shrinks_the_window_never_below_one() -> None:
    s = shaper(initial_destination_concurrency=2, dead_after=10)
    ask(s, 2)
    s.release("a", DEST, 1, "unreachable", "connect: refused", 0, 1.0)
    s.release("a", DEST, 2, "unreachable", "connect: refused", 0, 1.0)
    assert s.destinations[DEST].window == 1


def test_after_n_unreachable_the_destination_is_dead_and_requests_are_answered_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = shaper(initial_destination_concurrency=3, dead_after=3, dead_backoff=60)
    ask(s, 6)  # 3 go, 3 waiting
    s.release("a", DEST, 1, "unreachable", "connect to x: refused", 0, 1.0)
    s.release("a", DEST, 2, "unreachable", "connect to x: refused", 0, 1.0)
    grants = s.release("a", DEST, 3, "unreachable", "connect to x: refused", 0, 1.0)
    # those waiting are answered dead with the last reason
    assert {(g.ticket, g.verdict, g.reason) for g in grants} == {
        (t, "dead", "connect to x: refused") for t in (4, 5, 6)
    }
    assert s.dead == 1 and s.suspensions == 1
    assert "marked dead for 60s after 3 failed attempts" in caplog.text
    assert s.request("b", DEST, 7, 30.0) == [Grant("b", 7, "dead", "connect to x: refused")]


def test_one_probe_after_the_backoff_and_its_success_releases_the_waiting_work() -> None:
    s = shaper(destination_concurrency=1, dead_after=1, dead_backoff=60)
    ask(s, 1)
    s.release("a", DEST, 1, "unreachable", "refused", 0, 0.0)
    assert [g.verdict for g in ask(s, 1, now=59.0, start=2)] == ["dead"]
    assert s.request("a", DEST, 3, 61.0) == [Grant("a", 3, "probe")]
    assert s.request("b", DEST, 4, 61.0) == []  # waits for the probe's outcome
    assert s.request("b", DEST, 5, 61.0) == []
    grants = s.release("a", DEST, 3, "up", "", 0, 62.0)
    assert grants == [Grant("b", 4, "go", passable=True)]  # a window of 1
    assert s.dead == 0


def test_a_failed_probe_doubles_the_backoff_up_to_the_maximum() -> None:
    s = shaper(dead_after=1, dead_backoff=60, dead_max_backoff=100)
    ask(s, 1)
    s.release("a", DEST, 1, "unreachable", "refused", 0, 0.0)
    assert s.request("a", DEST, 2, 60.0)[0].verdict == "probe"
    assert s.request("b", DEST, 3, 60.0) == []
    grants = s.release("a", DEST, 2, "unreachable", "refused again", 0, 61.0)
    assert grants == [Grant("b", 3, "dead", "refused again")]
    assert s.destinations[DEST].dead_until == 61.0 + 100  # 120 capped at 100
    assert s.request("a", DEST, 4, 160.0)[0].verdict == "dead"
    assert s.request("a", DEST, 5, 161.0)[0].verdict == "probe"
    assert s.suspensions == 1  # one suspension, probed twice


def test_a_flush_revives_every_dead_destination() -> None:
    s = shaper(dead_after=1, dead_backoff=600)
    ask(s, 1)
    s.release("a", DEST, 1, "unreachable", "refused", 0, 0.0)
    assert s.revive_all(1.0) == []
    assert s.dead == 0
    assert s.request("a", DEST, 2, 2.0) == [Grant("a", 2, "go", passable=True)]


def test_a_rate_spaces_grants_and_makes_slots_not_passable() -> None:
    s = shaper(destination_rate=60)  # one a second
    assert ask(s, 3) == [Grant("a", 1, "go")]
    assert s.next_due() == 1.0
    assert s.due(0.5) == []
    assert s.due(1.0) == [Grant("a", 2, "go")]
    assert s.due(1.5) == []
    assert s.due(2.2) == [Grant("a", 3, "go")]
    assert s.next_due() is None  # nobody waits


def test_per_destination_overrides_by_domain() -> None:
    s = shaper(
        destination_concurrency=10,
        initial_destination_concurrency=10,
        destinations={"Example.test": {"concurrency": 2, "rate": 0}, "slow.test": {"rate": 6}},
    )
    assert len(ask(s, 5)) == 2
    other = "smtp:other.test:25:mx"
    assert len([s.request("a", other, t, 0.0) for t in range(5)]) == 5
    slow = "smtp:slow.test:25:mx"
    assert s.request("a", slow, 1, 0.0) == [Grant("a", 1, "go")]
    assert s.request("a", slow, 2, 0.0) == []
    assert s.next_due() == 10.0


def test_a_holder_that_goes_away_frees_its_slots_for_the_others() -> None:
    s = shaper(initial_destination_concurrency=1)
    ask(s, 2, holder="a")
    assert s.request("b", DEST, 9, 0.0) == []
    assert s.drop("a", 1.0) == [Grant("b", 9, "go", passable=True)]
    assert s.release("a", DEST, 1, "up", "", 0, 1.0) == []  # unknown now: ignored


def test_a_dropped_probe_lets_the_next_request_probe() -> None:
    s = shaper(dead_after=1, dead_backoff=10)
    ask(s, 1)
    s.release("a", DEST, 1, "unreachable", "refused", 0, 0.0)
    assert s.request("a", DEST, 2, 11.0)[0].verdict == "probe"
    assert s.request("b", DEST, 3, 11.0) == []
    assert s.drop("a", 12.0) == [Grant("b", 3, "probe")]


def test_idle_destinations_are_forgotten() -> None:
    s = shaper()
    ask(s, 1)
    s.release("a", DEST, 1, "up", "", 0, 0.0)
    s.due(SWEEP_SECONDS)
    assert DEST in s.destinations
    s.due(FORGET_SECONDS + SWEEP_SECONDS)
    assert DEST not in s.destinations
