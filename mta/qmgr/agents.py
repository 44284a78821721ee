"""The channel to the delivery agents: a Unix stream socket the queue manager listens on.

Each connected agent is an :class:`Agent` with the jobs it holds.  Jobs go out from the
scheduler's pending queue to the least busy agents, at most :data:`AGENT_WINDOW` in flight
per agent, with one write per agent per round (``dispatch``); results come back in bulk
(``FrameReader``) and are applied in order, one at a time per agent.  A result for a job
the agent does not hold is ignored.

When an agent goes away, every job it held is given back to the scheduler, first in line:
a message is never lost with its agent, at worst delivered twice.  Framing is ipc.py's.

Slot requests and releases (destination shaping) are answered by the :class:`Shaper`
(shaping.py); the grants that one turn of the event loop produces go out in one write per
agent, and a timer wakes the shaper when a rate-limited grant comes due.  An agent that goes
away frees its slots.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mta import metrics
from mta.qmgr.schedule import Scheduler
from mta.qmgr.shaping import Grant, Shaper
from mta.queue.ipc import (
    FrameReader,
    Job,
    Result,
    SlotGrant,
    SlotRelease,
    SlotRequest,
    agent_address,
    encode_frame,
)

__all__ = ["AGENT_WINDOW", "Agent", "AgentChannel"]

log = logging.getLogger("mta.qmgr")

AGENT_WINDOW = 500  # jobs in flight per delivery agent

ApplyResult = Callable[[Result, Job], Awaitable[None]]


@dataclass(eq=False)
class Agent:
    writer: asyncio.StreamWriter
    jobs: dict[str, Job] = field(default_factory=dict)


class AgentChannel:
    def __init__(
        self,
        spool_path: str,
        scheduler: Scheduler,
        apply: ApplyResult,
        wake: Callable[[], None],
        shaper: Shaper,
    ) -> None:
        self.spool_path = spool_path
        self.shaper = shaper
        self._grants: dict[Agent, list[bytes]] = {}  # encoded, to go out this turn
        self._timer: asyncio.TimerHandle | None = None  # for the shaper's next_due()
        self._timer_due: float | None = None
        self._suspensions = 0  # the shaper's count last published
        self.scheduler = scheduler
        self.apply = apply  # awaited for each result, in order
        self.wake = wake  # start a scheduling round soon
        self.agents: list[Agent] = []
        self._server: asyncio.AbstractServer | None = None

    async def listen(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(agent_address(self.spool_path))
        sock.listen(64)
        sock.setblocking(False)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=16 << 20)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    def busy(self) -> bool:
        """Some agent holds a job."""
        return any(agent.jobs for agent in self.agents)

    def dispatch(self) -> None:
        """Hand pending jobs to the least busy agents: one write per agent per round."""
        # An agent whose connection is closing (its process stopped on a reload, while this
        # one was applying a result of it) gets nothing: writing to it would raise, and its
        # jobs go back to the scheduler when _serve notices (found by a HUP under load).
        live = [a for a in self.agents if not a.writer.is_closing()]
        if self.scheduler.stopping or not live:
            return
        pending = self.scheduler.pending
        frames: dict[Agent, list[bytes]] = {}
        while pending:
            agent = min(live, key=lambda a: len(a.jobs))
            if len(agent.jobs) >= AGENT_WINDOW:
                break
            job = pending.popleft()
            agent.jobs[job.queue_id] = job
            frames.setdefault(agent, []).append(encode_frame(job))
        for agent, batch in frames.items():
            agent.writer.write(b"".join(batch))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        agent = Agent(writer)
        self.agents.append(agent)
        self.wake()
        frames = FrameReader()
        try:
            while data := await reader.read(1 << 16):
                for frame in frames.feed(data):
                    if isinstance(frame, Result):
                        job = agent.jobs.pop(frame.queue_id, None)
                        if job is not None:
                            await self.apply(frame, job)
                    elif isinstance(frame, SlotRequest | SlotRelease):
                        self._slot(agent, frame)
        except (OSError, ValueError) as exc:
            log.warning("delivery agent connection failed: %s", exc)
        finally:
            self.agents.remove(agent)
            writer.close()
            self.scheduler.give_back(list(agent.jobs.values()))  # the agent died
            agent.jobs.clear()
            self._answer(self.shaper.drop(agent, time.monotonic()))
            self.wake()

    # ----- slots ---------------------------------------------------------------------

    def _slot(self, agent: Agent, frame: SlotRequest | SlotRelease) -> None:
        now = time.monotonic()
        if isinstance(frame, SlotRequest):
            grants = self.shaper.request(agent, frame.destination, frame.ticket, now)
        else:
            grants = self.shaper.release(
                agent,
                frame.destination,
                frame.ticket,
                frame.outcome,
                frame.reason,
                frame.passed,
                now,
                frame.kept,
            )
        self._answer(grants)

    def tick(self) -> None:
        """Grants that came due by the clock; called by the timer and each round."""
        self._answer(self.shaper.due(time.monotonic()))

    def revive_all(self) -> None:
        """A flush: every suspended destination may be tried again."""
        self._answer(self.shaper.revive_all(time.monotonic()))

    def _answer(self, grants: list[Grant]) -> None:
        """Queue the grants for their agents (sent at the end of this loop turn), re-arm
        the rate timer and publish the dead-destination metrics."""
        if grants and not self._grants:
            asyncio.get_running_loop().call_soon(self._send_grants)
        for grant in grants:
            frame = SlotGrant(grant.ticket, grant.verdict, grant.reason, grant.passable)
            self._grants.setdefault(grant.holder, []).append(encode_frame(frame))  # type: ignore[arg-type]
        due = self.shaper.next_due()
        if self._timer is not None and self._timer_due != due:
            self._timer.cancel()
            self._timer = None
        if due is not None and self._timer is None:
            delay = max(0.0, due - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)
            self._timer_due = due
        self._publish()

    def _on_timer(self) -> None:
        self._timer = None
        self.tick()

    def _send_grants(self) -> None:
        grants, self._grants = self._grants, {}
        for agent, frames in grants.items():
            if not agent.writer.is_closing():
                agent.writer.write(b"".join(frames))

    def _publish(self) -> None:
        metrics.DESTINATIONS_DEAD.set(self.shaper.dead)
        new = self.shaper.suspensions - self._suspensions
        if new:
            metrics.DESTINATION_SUSPENSIONS.inc(new)
            self._suspensions = self.shaper.suspensions
