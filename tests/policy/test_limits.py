"""The counting logic (counters.py, an injected clock) and the limiter's rules and replies
(limits.py) over the local store."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from mta.config import Config
from mta.policy.counters import ClientCounters
from mta.policy.limits import UNDECIDED, Limiter, LocalStore, Refusal, limiter_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


# ----- counters ------------------------------------------------------------------------


def test_open_connections_count_up_and_down_and_never_below_zero() -> None:
    counters = ClientCounters()
    assert counters.connect("192.0.2.1", 0) == (1, 1)
    assert counters.connect("192.0.2.1", 1) == (2, 2)
    assert counters.connect("192.0.2.2", 1) == (1, 1)
    counters.disconnect("192.0.2.1")
    assert counters.open("192.0.2.1") == 1
    counters.disconnect("192.0.2.1", 5)
    counters.disconnect("198.51.100.1")  # never seen: nothing happens
    assert counters.open("192.0.2.1") == 0
    assert counters.open_counts() == {"192.0.2.2": 1}


def test_a_rate_window_is_fixed_per_client_and_starts_again_after_a_minute() -> None:
    counters = ClientCounters()
    assert [counters.add("mail", "c", 1, t) for t in (0, 10, 59.9)] == [1, 2, 3]
    assert counters.add("rcpt", "c", 5, 30) == 5  # each kind counts on its own
    assert counters.add("mail", "c", 1, 60.0) == 1  # the window began at 0: a new one
    assert counters.add("rcpt", "c", 1, 61) == 1
    assert counters.add("mail", "other", 1, 61) == 1


def test_open_connections_survive_a_new_window() -> None:
    counters = ClientCounters()
    counters.connect("c", 0)
    assert counters.connect("c", 120) == (2, 1)  # the rate starts again, the count does not


def test_sweep_forgets_expired_clients_without_open_connections() -> None:
    counters = ClientCounters()
    counters.add("mail", "gone", 1, 0)
    counters.connect("held", 0)
    counters.add("mail", "recent", 1, 50)
    assert counters.sweep(60) == 1
    assert len(counters) == 2
    assert counters.open("held") == 1


def test_the_number_of_tracked_clients_is_capped_least_recently_seen_first() -> None:
    counters = ClientCounters(max_clients=3)
    for n in range(3):
        counters.add("mail", f"c{n}", 1, n)
    counters.add("mail", "c0", 1, 3)  # seen again: now the most recent
    counters.add("mail", "c3", 1, 4)
    assert len(counters) == 3
    assert counters.add("mail", "c1", 1, 5) == 1  # c1 was forgotten
    assert counters.add("mail", "c0", 1, 5) == 3


def test_held_connections_count_as_open_but_not_as_new() -> None:
    counters = ClientCounters()
    counters.add_open("c", 2, 0)
    assert counters.connect("c", 1) == (3, 1)


# ----- limiter -------------------------------------------------------------------------


def limiter(clock: Clock, **limits: int) -> Limiter:
    return Limiter(LocalStore(clock=clock), "mx.test", **limits)


def test_open_connections_over_the_limit_are_refused_with_postfix_reply() -> None:
    lim = limiter(Clock(), connections=2)

    async def scenario() -> list[Refusal | None]:
        verdicts = [await lim.connect("192.0.2.1") for _ in range(3)]
        lim.disconnect("192.0.2.1")
        verdicts.append(await lim.connect("192.0.2.1"))  # one closed: room again
        verdicts.append(await lim.connect("192.0.2.1"))  # the refused one did not count
        return verdicts

    verdicts = run(scenario())
    assert verdicts == [
        None,
        None,
        Refusal(
            "connections",
            3,
            b"421 4.7.0 mx.test Error: too many connections from 192.0.2.1\r\n",
        ),
        None,
        Refusal("connections", 3, verdicts[2].reply),  # type: ignore[index,union-attr]
    ]


def test_connection_rate() -> None:
    clock = Clock()
    lim = limiter(clock, connection_rate=3)

    async def scenario() -> list[str]:
        out = []
        for _ in range(5):
            verdict = await lim.connect("c")
            lim.disconnect("c")
            out.append(verdict.limit if verdict else "ok")
        clock.now += 60
        verdict = await lim.connect("c")
        out.append(verdict.limit if verdict else "ok")
        return out

    assert run(scenario()) == ["ok"] * 3 + ["connection_rate"] * 2 + ["ok"]


def test_message_recipient_and_auth_failure_rates() -> None:
    lim = limiter(Clock(), message_rate=1, recipient_rate=3, auth_failures=2)

    async def scenario() -> list[Refusal | None]:
        return [
            await lim.message("c"),
            await lim.message("c"),
            await lim.recipient("c", 3),
            await lim.recipient("c"),
            await lim.auth_failure("c"),
            await lim.auth_failure("c"),
            await lim.auth_failure("c"),
        ]

    verdicts = run(scenario())
    assert verdicts[0] is None
    assert verdicts[1] == Refusal("message_rate", 2, b"450 4.7.1 Error: too much mail from c\r\n")
    assert verdicts[2] is None
    assert verdicts[3] == Refusal(
        "recipient_rate", 4, b"450 4.7.1 Error: too many recipients from c\r\n"
    )
    assert verdicts[4:6] == [None, None]
    assert verdicts[6] == Refusal(
        "auth_failures",
        3,
        b"421 4.7.0 mx.test Error: too many authentication failures\r\n",
    )


class CountingStore(LocalStore):
    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    async def add(self, kind, client, amount):  # type: ignore[no-untyped-def]
        self.asked += 1
        return await super().add(kind, client, amount)

    async def connect(self, client):  # type: ignore[no-untyped-def]
        self.asked += 1
        return await super().connect(client)


def test_exempt_clients_and_limits_that_are_off_cost_no_question() -> None:
    store = CountingStore()
    lim = Limiter(
        store,
        "mx.test",
        connections=1,
        message_rate=1,
        exempt_networks=["192.0.2.0/24", "2001:db8::/32"],
    )

    async def scenario() -> list[Refusal | None]:
        return [
            await lim.connect("192.0.2.9"),
            await lim.connect("192.0.2.9"),
            await lim.connect("::ffff:192.0.2.9"),  # IPv4-mapped counts as IPv4
            await lim.message("2001:db8::1"),
            await lim.message("2001:db8::1"),
            await lim.recipient("198.51.100.1"),  # recipient_rate is off
            await lim.auth_failure("198.51.100.1"),  # so is auth_failures
        ]

    assert run(scenario()) == [None] * 7
    assert store.asked == 0
    assert lim.exempt("192.0.2.1") and not lim.exempt("198.51.100.1")
    assert not lim.exempt("not an address")


def test_a_cancelled_connection_check_uncounts_the_connection() -> None:
    class SlowStore(LocalStore):
        async def connect(self, client: str) -> tuple[int, int]:
            counts = await super().connect(client)
            await asyncio.sleep(10)
            return counts

    store = SlowStore()
    lim = Limiter(store, "mx.test", connections=5)

    async def scenario() -> None:
        task = asyncio.ensure_future(lim.connect("c"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())
    assert store.counters.open("c") == 0


def test_exempt_networks_default_to_the_relay_networks() -> None:
    def config(**limits: object) -> Config:
        settings = {"relay": {"networks": ["10.0.0.0/8"]}, "limits": limits}
        return msgspec.convert(settings, Config)

    assert limiter_for(config(), LocalStore()).exempt("10.1.2.3")
    assert not limiter_for(config(exempt_networks=[]), LocalStore()).exempt("10.1.2.3")
    custom = limiter_for(config(exempt_networks=["192.0.2.0/24"]), LocalStore())
    assert custom.exempt("192.0.2.1") and not custom.exempt("10.1.2.3")
    with pytest.raises(msgspec.ValidationError, match="exempt_networks"):
        config(exempt_networks=["nonsense"])


def test_the_now_methods_decide_from_the_store_or_say_undecided() -> None:
    class RemoteStore(LocalStore):
        """Knows a count without asking only up to its ceiling (as AnvilStore's view)."""

        def add_now(self, kind, client, amount, ceiling):  # type: ignore[no-untyped-def]
            if self.counters.add(kind, client, 0, self.clock()) + amount > ceiling:
                return None
            return self.counters.add(kind, client, amount, self.clock())

    lim = Limiter(RemoteStore(), "mx.test", message_rate=4, recipient_rate=1)
    assert [lim.message_now("c") for _ in range(3)] == [None, None, UNDECIDED]  # ceiling 2
    assert lim.recipient_now("c") is UNDECIDED  # ceiling 0: always asked
    local = Limiter(LocalStore(), "mx.test", message_rate=1, exempt_networks=["192.0.2.0/24"])
    assert local.message_now("c") is None
    assert local.message_now("c") == Refusal(
        "message_rate", 2, b"450 4.7.1 Error: too much mail from c\r\n"
    )
    assert local.message_now("192.0.2.1") is None
    assert local.recipient_now("c") is None  # off
