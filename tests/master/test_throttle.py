"""Unit tests of respawn throttling: children that die before they are ready come back later
and later; a child that was ready comes back at once.

The throttle reads a fake clock: the delays are checked to the instant, without sleeping.
"""

from __future__ import annotations

import pytest

from mta.master.throttle import Throttle
from tests.master.fakes import FakeClock

pytestmark = pytest.mark.timeout(10)


def test_a_new_slot_may_start_at_once() -> None:
    throttle = Throttle()
    assert throttle.may_start(("smtpd", 0))
    assert throttle.delay(("smtpd", 0)) == 0.0


def test_delay_doubles_from_first_delay_up_to_the_maximum() -> None:
    throttle = Throttle(first_delay=0.5, max_delay=30.0)
    delays = []
    for _ in range(10):
        throttle.died("slot", ready=False)
        delays.append(throttle.delay("slot"))
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


def test_a_young_death_blocks_the_slot_for_its_delay() -> None:
    # (steps in binary fractions of a second, so that the sums are exact)
    clock = FakeClock()
    throttle = Throttle(first_delay=0.5, clock=clock.monotonic)
    throttle.died("slot", ready=False)
    assert not throttle.may_start("slot")
    clock.advance(0.4375)
    assert not throttle.may_start("slot")
    clock.advance(0.0625)
    assert throttle.may_start("slot")  # exactly the delay after the death
    throttle.died("slot", ready=False)  # second death: twice as long
    clock.advance(0.9375)
    assert not throttle.may_start("slot")
    clock.advance(0.0625)
    assert throttle.may_start("slot")


def test_the_delay_runs_from_the_death_not_from_the_question() -> None:
    clock = FakeClock()
    throttle = Throttle(first_delay=1.0, clock=clock.monotonic)
    throttle.died("slot", ready=False)
    for _ in range(7):  # asking often (every master round) does not push it back
        clock.advance(0.125)
        assert not throttle.may_start("slot")
    clock.advance(0.125)
    assert throttle.may_start("slot")


def test_a_child_that_was_ready_resets_its_slot() -> None:
    throttle = Throttle(first_delay=0.5)
    for _ in range(4):
        throttle.died("slot", ready=False)
    assert throttle.delay("slot") == 4.0
    throttle.died("slot", ready=True)  # it worked, then died: it may come back at once
    assert throttle.delay("slot") == 0.0
    assert throttle.may_start("slot")
    throttle.died("slot", ready=False)  # and failing at start again starts from the beginning
    assert throttle.delay("slot") == 0.5


def test_a_ready_child_resets_its_slot_while_it_runs() -> None:
    clock = FakeClock()
    throttle = Throttle(first_delay=0.5, clock=clock.monotonic)
    for _ in range(3):
        throttle.died("slot", ready=False)
    throttle.ready("slot")  # the next one came up and beat
    assert throttle.delay("slot") == 0.0
    assert throttle.may_start("slot")
    throttle.died("slot", ready=False)
    assert throttle.delay("slot") == 0.5


def test_a_child_killed_soon_after_it_was_ready_is_never_throttled() -> None:
    """Issue 10: kill -9 of children that had run for a second or two held their slots back
    for up to 30 s.  Dying after being ready is no start-up failure, however soon."""
    clock = FakeClock()
    throttle = Throttle(first_delay=0.5, clock=clock.monotonic)
    for _ in range(20):  # ready and killed every second: replaced at once every time
        clock.advance(1.0)
        throttle.died("slot", ready=True)
        assert throttle.may_start("slot")
        assert throttle.delay("slot") == 0.0


def test_slots_are_throttled_independently() -> None:
    throttle = Throttle(first_delay=10.0)
    throttle.died(("smtpd", 0), ready=False)
    throttle.died(("smtpd", 0), ready=False)
    assert not throttle.may_start(("smtpd", 0))
    assert throttle.may_start(("smtpd", 1))
    assert throttle.may_start(("qmgr", 0))
    assert throttle.delay(("smtpd", 0)) == 20.0
    assert throttle.delay(("smtpd", 1)) == 0.0
