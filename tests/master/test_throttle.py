"""Unit tests of respawn throttling: children that die young come back later and later.

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
    throttle = Throttle(first_delay=0.5, max_delay=30.0, healthy_after=5.0)
    delays = []
    for _ in range(10):
        throttle.died("slot", lived=0.1)
        delays.append(throttle.delay("slot"))
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


def test_a_young_death_blocks_the_slot_for_its_delay() -> None:
    # (steps in binary fractions of a second, so that the sums are exact)
    clock = FakeClock()
    throttle = Throttle(first_delay=0.5, healthy_after=5.0, clock=clock.monotonic)
    throttle.died("slot", lived=0.0)
    assert not throttle.may_start("slot")
    clock.advance(0.4375)
    assert not throttle.may_start("slot")
    clock.advance(0.0625)
    assert throttle.may_start("slot")  # exactly the delay after the death
    throttle.died("slot", lived=0.0)  # second death: twice as long
    clock.advance(0.9375)
    assert not throttle.may_start("slot")
    clock.advance(0.0625)
    assert throttle.may_start("slot")


def test_the_delay_runs_from_the_death_not_from_the_question() -> None:
    clock = FakeClock()
    throttle = Throttle(first_delay=1.0, clock=clock.monotonic)
    throttle.died("slot", lived=0.0)
    for _ in range(7):  # asking often (every master round) does not push it back
        clock.advance(0.125)
        assert not throttle.may_start("slot")
    clock.advance(0.125)
    assert throttle.may_start("slot")


def test_a_child_that_lived_long_enough_resets_its_slot() -> None:
    throttle = Throttle(first_delay=0.5, healthy_after=5.0)
    for _ in range(4):
        throttle.died("slot", lived=1.0)
    assert throttle.delay("slot") == 4.0
    throttle.died("slot", lived=5.0)  # healthy: it may come back at once
    assert throttle.delay("slot") == 0.0
    assert throttle.may_start("slot")
    throttle.died("slot", lived=0.0)  # and dying young again starts from the beginning
    assert throttle.delay("slot") == 0.5


def test_slots_are_throttled_independently() -> None:
    throttle = Throttle(first_delay=10.0)
    throttle.died(("smtpd", 0), lived=0.0)
    throttle.died(("smtpd", 0), lived=0.0)
    assert not throttle.may_start(("smtpd", 0))
    assert throttle.may_start(("smtpd", 1))
    assert throttle.may_start(("qmgr", 0))
    assert throttle.delay(("smtpd", 0)) == 20.0
    assert throttle.delay(("smtpd", 1)) == 0.0
