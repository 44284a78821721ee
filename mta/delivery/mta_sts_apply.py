"""Applying a domain's MTA-STS policy to one MX delivery (RFC 8461 §4 and §5).

The delivery asks :class:`~mta.delivery.mta_sts_cache.StsPolicies` once per next hop, then
these functions decide, per MX host:

- ``enforce``: only MX hosts matching the policy's patterns are tried (the others are
  logged and skipped; when none matches the delivery is deferred with ``4.7.5``, §5.1),
  each with level ``verify`` and the MX host name as the only name the certificate may
  match (§4.2), whatever ``delivery.tls`` says;
- ``testing``: the delivery keeps its usual level; each matching host is first tried as
  ``enforce`` would, and every failure enforce would have caused (an MX host outside the
  patterns, no STARTTLS, a failed handshake or certificate) is logged as TLS-RPT would
  report it (``mta-sts: testing: DOMAIN: would fail: ...``), then the delivery goes on;
- ``none`` (or no policy): no effect.

Both count in ``mta_delivery_mta_sts_failures_total{mode,reason}``.  The TLS policies made
here say ``source="mta-sts"``, which the ``tls=`` log field shows.
"""

from __future__ import annotations

import logging

from mta import metrics
from mta.delivery.mta_sts import StsPolicy
from mta.delivery.results import DeliveryError
from mta.delivery.smtp_client import TlsHandshakeError, TlsNotOfferedError, TlsUntrustedError
from mta.delivery.tls_policy import TlsPolicy

__all__ = ["TLS_FAILURES", "allowed_hosts", "enforced_tls", "trial_tls", "would_fail"]

log = logging.getLogger("mta.delivery")

TLS_FAILURES = (TlsHandshakeError, TlsNotOfferedError, TlsUntrustedError)
SOURCE = "mta-sts"


def allowed_hosts(domain: str, policy: StsPolicy, hosts: list[str]) -> list[str]:
    """The MX hosts that may be tried; raises DeliveryError (4.7.5) under enforce when
    none matches."""
    matching = [host for host in hosts if policy.matches(host)]
    for host in hosts:
        if host in matching:
            continue
        why = f"MX host {host} does not match the policy's mx patterns"
        if policy.mode == "testing":
            would_fail(domain, why, "mx")
        else:
            log.warning("mta-sts: enforce: %s: %s; skipped", domain, why)
    if policy.mode == "testing":
        return hosts
    if not matching:
        metrics.MTA_STS_FAILURES.labels("enforce", "mx").inc()
        patterns = ", ".join(policy.mx)
        raise DeliveryError(
            False,
            "4.7.5",
            f"MTA-STS policy of {domain} allows none of its MX hosts "
            f"({', '.join(hosts)}; allowed: {patterns})",
        )
    return matching


def enforced_tls(host: str) -> TlsPolicy:
    """``verify``, the certificate matching the MX host name only (RFC 8461 §4.2)."""
    return TlsPolicy("verify", (host.lower().rstrip("."),), source=SOURCE)


def trial_tls(policy: StsPolicy | None, host: str) -> TlsPolicy | None:
    """Under ``testing``, the policy to try ``host`` with first (None: no trial)."""
    if policy is None or policy.mode != "testing" or not policy.matches(host):
        return None
    return enforced_tls(host)


def would_fail(domain: str, why: str, reason: str) -> None:
    """What enforce would have refused, logged as TLS-RPT (RFC 8460) would report it."""
    metrics.MTA_STS_FAILURES.labels("testing", reason).inc()
    log.warning("mta-sts: testing: %s: would fail: %s", domain, why)


def enforce_failed(policy: TlsPolicy, exc: DeliveryError) -> None:
    """Count a TLS failure of a connection that enforce decided."""
    if policy.source == SOURCE and isinstance(exc, TLS_FAILURES):
        metrics.MTA_STS_FAILURES.labels("enforce", "tls").inc()
