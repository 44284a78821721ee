"""Free space on the spool's file system, and whether it leaves room to accept mail.

This is Postfix's ``queue_minfree`` check (``smtpd_check_queue``), shared by the two
processes that act on it: smtpd refuses ``MAIL`` with ``452 4.3.1`` while there is no room
(so a client is told before it sends a whole message, not with ``451`` after it), and the
master's readiness probe fails meanwhile (so a load balancer sends clients elsewhere).

The rule.  Accepting a transaction that declared ``SIZE=n`` (RFC 1870; 0 when it did not)
needs ``max(queue.min_free + n, 1.5 x smtp.max_message_size)`` free octets:

* ``1.5 x smtp.max_message_size`` is Postfix's floor (since 2.1): the largest message we
  allow fits, with half as much again to spare.  It applies with or without ``SIZE``,
  because ``SIZE`` is the client's estimate and DATA is bounded by the limit, not by it.
* ``queue.min_free`` is what must stay free *after* the declared message is stored: room
  for what the queue manager writes after acceptance (state files, a deferred message
  copied out of its segment, bounces).  The default reserves one segment's worth
  (:data:`~mta.queue.segment.SEGMENT_MAX`), so the queue manager can still copy out every
  deferred message of a full segment when smtpd has taken all it may.

The check is not a reservation: sessions that passed ``MAIL`` together may still fill the
disk (Postfix has the same gap); they then get ``451`` at the end of DATA, and nothing that
got ``250`` is lost.

Cost.  ``os.statvfs`` took 3-5.5 µs here (ext4 in this VM, the machine loaded; tmpfs no
less), a cached answer 0.3 µs.  Per ``MAIL``, at 5,000 a second on one worker, that would
be 2-3 % of a core spent on a figure that changes slowly; so :class:`SpoolSpace` measures
at most once per ``max_age`` seconds (:data:`MAX_AGE` = 0.5: two calls a second, ~10 µs,
and a refusal starts, or ends, at most half a second after the disk fills or is freed,
inside the second the issue allows).  A ``statvfs`` that fails counts as no room (fail
closed): a spool we cannot even measure will not take a message either, and the error is
kept for the log and the probe.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from mta.config import Config

__all__ = ["MAX_AGE", "SpoolSpace"]

MAX_AGE = 0.5  # seconds a measurement is reused; the longest a refusal (or its end) lags
_SPARE = 1.5  # Postfix's smtpd_space_multf: free space ≥ 1.5 x message_size_limit


class SpoolSpace:
    """The spool file system's free octets (measured at most once per ``max_age``) and the
    room rule above.  Not thread-safe; each process (smtpd worker, master) has its own."""

    def __init__(
        self,
        path: str,
        min_free: int,
        max_message_size: int,
        *,
        max_age: float = MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
        statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
    ) -> None:
        self.path = path
        self.min_free = min_free
        self.floor = int(_SPARE * max_message_size)
        self.max_age = max_age
        self.error = ""  # why the last measurement failed ("" when it worked)
        self._clock = clock
        self._statvfs = statvfs
        self._free = 0
        self._measured_at: float | None = None

    @classmethod
    def for_config(
        cls,
        config: Config,
        *,
        max_age: float = MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
        statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
    ) -> SpoolSpace:
        """The spool of ``config``, with its ``queue.min_free`` and ``smtp.max_message_size``."""
        queue = config.queue
        return cls(
            queue.path,
            queue.min_free,
            config.smtp.max_message_size,
            max_age=max_age,
            clock=clock,
            statvfs=statvfs,
        )

    def free(self) -> int:
        """Octets an unprivileged writer may still use (``f_bavail``; root's reserved
        blocks do not count: the children may run as another user)."""
        now = self._clock()
        if self._measured_at is None or now - self._measured_at >= self.max_age:
            self._measured_at = now
            self._free = self._measure()
        return self._free

    def needed(self, declared_size: int = 0) -> int:
        """Free octets needed to accept a transaction that declared ``declared_size``."""
        return max(self.min_free + declared_size, self.floor)

    def has_room(self, declared_size: int = 0) -> bool:
        return self.free() >= max(self.min_free + declared_size, self.floor)  # needed(), inline

    def describe(self, declared_size: int = 0) -> str:
        """Why there is (no) room, for a log line or a probe's answer."""
        if self.error:
            return f"spool space unknown ({self.error})"
        return f"{self.free()} bytes free, {self.needed(declared_size)} needed"

    def _measure(self) -> int:
        try:
            st = self._statvfs(self.path)
        except OSError as exc:
            self.error = f"statvfs {self.path}: {exc.strerror or exc}"
            return 0
        self.error = ""
        return st.f_bavail * st.f_frsize
