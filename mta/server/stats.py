"""The smtpd's counters: plain integers on the hot path, published to Prometheus in bulk.

A prometheus-client increment in multiprocess mode costs microseconds (a label lookup, a
pid check, a write into an mmap'd file); a session sends about eight replies per message.
So the per-message path only bumps integers here, and :meth:`SmtpdStats.publish` adds the
differences to the real metrics once a second, from the worker's housekeeping task.
"""

from __future__ import annotations

from collections.abc import Iterable

from mta import metrics

__all__ = ["SmtpdStats"]

_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class SmtpdStats:
    def __init__(self) -> None:
        self.opened = 0
        self.received = 0
        self.received_bytes = 0
        self.tls_sessions = 0
        self.rejects: dict[str, int] = {}
        self._closed_replies = [0] * 6  # reply counts of sessions that ended
        self._published: dict[str, int] = {}
        self._published_replies = [0] * 6

    def session_closed(self, reply_counts: list[int]) -> None:
        for i, n in enumerate(reply_counts):
            self._closed_replies[i] += n

    def publish(self, live_reply_counts: Iterable[list[int]], commit_batches: int) -> None:
        """Add what changed since the last call; ``commit_batches`` is the committer's
        running count of flushes."""
        self._add(metrics.COMMIT_BATCHES, "commit_batches", commit_batches)
        self._add(metrics.CONNECTIONS_OPENED, "opened", self.opened)
        self._add(metrics.MESSAGES_RECEIVED, "received", self.received)
        self._add(metrics.BYTES_RECEIVED, "bytes", self.received_bytes)
        self._add(metrics.TLS_SESSIONS, "tls", self.tls_sessions)
        for reason, n in self.rejects.items():
            self._add(metrics.REJECTS.labels(reason), f"reject:{reason}", n)
        totals = list(self._closed_replies)
        live = 0
        for counts in live_reply_counts:
            live += 1
            for i, n in enumerate(counts):
                totals[i] += n
        for i, name in enumerate(_CLASSES, start=1):
            delta = totals[i] - self._published_replies[i]
            if delta > 0:
                metrics.REPLIES.labels(name).inc(delta)
                self._published_replies[i] = totals[i]
        metrics.CONNECTIONS_CURRENT.set(live)

    def _add(self, counter: object, key: str, value: int) -> None:
        delta = value - self._published.get(key, 0)
        if delta > 0:
            counter.inc(delta)  # type: ignore[attr-defined]
            self._published[key] = value
