"""The queue manager daemon: tracks segments, schedules, hands out jobs, applies results
(DESIGN.md §1, §6).  It uses the storage library in ``mta/queue/``; nothing imports it but the
master, which starts it.

One module per job: ``manager`` (lifecycle and the scheduling round that wires the rest),
``segments`` (following smtpd's segments), ``schedule`` (active window, pending jobs,
deferred heap, claiming), ``agents`` (the delivery agents' channel), ``apply`` (applying a
result), ``outcome`` (recording an attempt, retry timing, bounces), ``dsn`` (the bounce
message), ``remover`` (deleting what is done, in a thread), ``wakeups`` (what each wake-up
asks for), ``housekeeping`` (``tmp/`` leftovers, ``corrupt/``, queue depth metrics).
"""
