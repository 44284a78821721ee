"""The queue manager daemon: tracks segments, schedules, hands out jobs, applies results
(DESIGN.md §1, §6).  It uses the storage library in ``mta/queue/``; nothing imports it but the
master, which starts it."""
