"""Every Prometheus metric of mta, defined in this one module.

Names follow ``mta_<subsystem>_<thing>_<unit>``; counters end in ``_total`` (the client adds
it).  In a process tree the master sets ``PROMETHEUS_MULTIPROC_DIR`` before any child
imports this module, so each process writes its own mmap'd files and the master's
``/metrics`` endpoint aggregates them (prometheus-client multiprocess mode).  Gauges say how
they aggregate across processes: ``livesum`` for things that are summed over live processes,
``mostrecent`` for values one process owns (queue depth is measured by the queue manager).

Label values are bounded: reply classes (2xx..5xx), reject reasons from a fixed list,
delivery results, and destination domains only for the top-N configured (others "other").
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from mta import __version__

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)

# Info metrics do not exist in multiprocess mode; a gauge fixed at 1 carries the labels.
BUILD_INFO = Gauge("mta_build_info", "Version of mta", ["version"], multiprocess_mode="max")
PARSER_BACKEND = Gauge(
    "mta_parser_backend_info",
    "Parser backend in use by smtpd workers (1 for the active backend)",
    ["backend"],
    multiprocess_mode="max",
)

# smtpd
CONNECTIONS_OPENED = Counter("mta_smtpd_connections_opened", "SMTP connections accepted")
CONNECTIONS_CURRENT = Gauge(
    "mta_smtpd_connections_current",
    "SMTP connections open now, per worker",
    multiprocess_mode="livesum",
)
MESSAGES_RECEIVED = Counter("mta_smtpd_messages_received", "Messages accepted with 250")
BYTES_RECEIVED = Counter("mta_smtpd_received_bytes", "Octets of accepted messages")
REPLIES = Counter("mta_smtpd_replies", "SMTP replies sent, by code class", ["code_class"])
# Reasons of the access policy (mta/policy/decide.py, mta/server/connect_access.py):
# access_client, access_helo, access_sender, access_recipient, relay_denied, dnsbl,
# unknown_recipient, pregreet.
REJECTS = Counter("mta_smtpd_rejects", "Refused commands and messages, by reason", ["reason"])
TLS_SESSIONS = Counter("mta_smtpd_tls_sessions", "TLS sessions established by smtpd")
AUTH_SUCCESSES = Counter(
    "mta_smtpd_auth_successes", "SMTP AUTH exchanges that succeeded, by mechanism", ["mechanism"]
)
AUTH_FAILURES = Counter(
    "mta_smtpd_auth_failures", "SMTP AUTH exchanges that failed (535), by mechanism", ["mechanism"]
)
COMMIT_BATCHES = Counter("mta_queue_commit_batches", "Group commits (disk flushes) done")
COMMIT_SECONDS = Histogram(
    "mta_queue_commit_seconds",
    "Time one group commit took to make its batch durable (write and flush)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

# queue
QUEUE_DEPTH = Gauge(
    "mta_queue_messages",
    "Messages in the queue, by state directory",
    ["state"],
    multiprocess_mode="mostrecent",
)
QUEUE_FREE_BYTES = Gauge(
    "mta_queue_free_bytes",
    "Free octets on the spool's file system (measured by the master when scraped)",
    multiprocess_mode="mostrecent",
)
QUEUE_CORRUPT = Counter(
    "mta_queue_corrupt",
    "Unreadable queue data moved or copied to corrupt/, by reason: checksum (altered "
    "octets), format (not a whole message file), record (a damaged segment span), cut (a "
    "record cut short by a dead writer), name (not a queue file name)",
    ["reason"],
)
QUEUE_OLDEST_AGE = Gauge(
    "mta_queue_oldest_message_age_seconds",
    "Age of the oldest message in the queue",
    multiprocess_mode="mostrecent",
)

# delivery
DELIVERY_ATTEMPTS = Counter(
    "mta_delivery_attempts", "Delivery attempts per recipient, by result", ["result"]
)
DELIVERY_BY_DOMAIN = Counter(
    "mta_delivery_domain_attempts",
    "Delivery attempts per recipient by destination domain (top-N, others as 'other')",
    ["domain", "result"],
)
DELIVERY_LATENCY = Histogram(
    "mta_delivery_latency_seconds",
    "Time from reception to successful delivery, per recipient",
    buckets=_LATENCY_BUCKETS,
)
MESSAGES_DELIVERED = Counter(
    "mta_delivery_messages_completed", "Messages whose every recipient is done"
)
BOUNCES = Counter("mta_delivery_bounces", "Delivery status notifications generated")
DSN_NOTICES = Counter(
    "mta_delivery_dsn_notices", "Success and delay notifications generated (RFC 3461)", ["action"]
)
# outcome: verified, unverified, plaintext (level none, or may and not offered), failed (the
# handshake; under may retried in plaintext, counted again as level none), not_offered,
# untrusted (verify), dane (TLSA matched), dane_failed (no TLSA record matched), other (refused
# or lost before TLS was decided)
DELIVERY_TLS = Counter(
    "mta_delivery_tls_connections",
    "Outbound connections by TLS level and outcome",
    ["level", "outcome"],
)
# 8-bit messages converted to quoted-printable for a next hop without 8BITMIME (RFC 6152)
DELIVERY_8BIT_CONVERTED = Counter(
    "mta_delivery_8bit_converted", "8-bit messages converted to 7-bit for a next hop"
)
# MTA-STS policy fetches by result: ok, invalid (the policy did not parse), http (status,
# media type, size), network, timeout, tls (the policy host's certificate)
MTA_STS_FETCHES = Counter(
    "mta_delivery_mta_sts_fetches", "MTA-STS policy fetches by result", ["result"]
)
# what a policy refused (enforce) or would have refused (testing): mx (no MX host matches),
# tls (STARTTLS missing, handshake or certificate failed)
MTA_STS_FAILURES = Counter(
    "mta_delivery_mta_sts_failures",
    "Deliveries an MTA-STS policy refused or would have refused",
    ["mode", "reason"],
)
# AUTH to a smarthost (connections with credentials); outcome: authenticated, refused (535...),
# no_tls (AUTH offered without TLS: no password sent), no_mechanism, not_offered (sent anyway)
DELIVERY_AUTH = Counter(
    "mta_delivery_auth", "Outbound connections with credentials by AUTH outcome", ["outcome"]
)
# destination shaping (the queue manager's, mta/qmgr/shaping.py): no label per destination
DESTINATIONS_DEAD = Gauge(
    "mta_delivery_destinations_dead",
    "Destinations suspended after repeated unreachable attempts",
    multiprocess_mode="mostrecent",
)
DESTINATION_SUSPENSIONS = Counter(
    "mta_delivery_destination_suspensions", "Times a destination was marked dead"
)
DNS_LOOKUPS = Counter("mta_dns_lookups", "DNS queries made for delivery", ["rtype"])
DNS_FAILURES = Counter("mta_dns_failures", "DNS queries that failed", ["rtype", "kind"])

# master
CHILD_RESTARTS = Counter("mta_master_child_restarts", "Children replaced", ["kind"])
# smtpd stress mode (added last, beside the other parts' additions)
SMTPD_STRESS = Gauge(
    "mta_smtpd_stress",
    "1 while smtpd is in stress mode (node connections near smtp.max_connections)",
    multiprocess_mode="livemax",
)
# per-client limits (mta/policy/limits.py, anvil)
LIMIT_REJECTS = Counter(
    "mta_smtpd_limit_rejects", "Connections and commands refused by a per-client limit", ["limit"]
)
SMTPD_LIMITS_FALLBACK = Gauge(
    "mta_smtpd_limits_fallback",
    "1 while an smtpd worker cannot reach anvil and applies per-client limits alone",
    multiprocess_mode="livemax",
)

BUILD_INFO.labels(__version__).set(1)
