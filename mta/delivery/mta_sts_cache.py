"""Which MTA-STS policy is in force for a domain: the spool cache and the refresh rules.

:class:`StsPolicies` answers :meth:`~StsPolicies.policy_for` for a destination domain from
three sources (RFC 8461 §3 and §5):

1. the cache: ``<queue.path>/mta-sts/<domain>``, one msgspec JSON record per domain (the
   policy text as fetched, its id and when it was fetched), replaced atomically with
   :func:`mta.queue.durable.replace_file` so it survives restarts and crashes whole; the
   parsed policies of the last ``mta_sts.cache_size`` domains are also kept in memory (LRU);
2. the ``_mta-sts.<domain>`` TXT record, asked again after :data:`TXT_SECONDS`: only a
   hint that a policy exists and which id is current;
3. the HTTPS fetch, only when the TXT id differs from the cached policy's (or nothing is
   cached), at most one in flight per domain in this process.

Rules: a cached policy is used until ``fetched_at + max_age``; an expired one counts as
absent.  A missing or invalid TXT record with a cached, unexpired policy keeps that policy
(§5: the TXT record is a hint, an attacker can strip it).  A failed fetch or an invalid
policy keeps the cached one as well (§5.1), and is not retried for :data:`RETRY_SECONDS`
(so a dead policy host does not cost a timeout per message).  Every failure here means
"no new policy", never a delivery error; a cache file that cannot be read is logged and
treated as absent, one that cannot be written is logged and the policy is still used.
Several delivery processes share the directory; each re-reads a domain's file before it
fetches, so a policy another process has just fetched is not fetched again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from mta import metrics
from mta.config import Config
from mta.delivery.dns import Resolver
from mta.delivery.mta_sts import StsPolicy, StsPolicyError, parse_policy, parse_txt
from mta.delivery.mta_sts_fetch import MAX_BODY, StsFetchError, fetch_policy, https_context
from mta.delivery.results import DeliveryError
from mta.queue.durable import replace_file

__all__ = ["CachedPolicy", "StsCache", "StsPolicies"]

log = logging.getLogger("mta.delivery")

RETRY_SECONDS = 300.0  # after a failed fetch, the next try for the same domain and id
# The TXT answer (the id, or none) is remembered this long: even from the resolver's cache
# a lookup costs about as much as the MX lookup (~0.1 ms), paid by every MX delivery; a new
# policy id seen up to a minute late is harmless (the record is only a hint).
TXT_SECONDS = 60.0
# A domain that can be a file name: A-labels, no leading dot, no "..", no brackets.
_DOMAIN = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(?:\.(?!-)[a-z0-9-]{1,63}(?<!-))+")


class CachedPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One cache file: the policy text exactly as fetched, so it is parsed (and checked)
    again by whichever version reads it."""

    domain: str
    id: str
    fetched_at: float  # seconds since the epoch
    text: str


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(CachedPolicy).decode


@dataclass(frozen=True, slots=True)
class _Entry:
    id: str
    expires: float
    policy: StsPolicy


class StsCache:
    """Policies by domain: an LRU of parsed ones in front of one file per domain."""

    def __init__(self, directory: str, size: int, clock: Callable[[], float] = time.time):
        self.directory = directory
        self.size = size
        self.clock = clock
        self._memory: OrderedDict[str, _Entry | None] = OrderedDict()

    def get(self, domain: str) -> _Entry | None:
        """The unexpired policy of ``domain`` (memory first, then its file), or None."""
        if domain in self._memory:
            self._memory.move_to_end(domain)
            entry = self._memory[domain]
        else:
            entry = self.reload(domain)
        return entry if entry is not None and entry.expires > self.clock() else None

    def reload(self, domain: str) -> _Entry | None:
        """Read ``domain``'s file again (another process may have replaced it)."""
        entry = self._read(domain)
        self._remember(domain, entry)
        return entry

    def put(self, domain: str, policy_id: str, text: str, policy: StsPolicy) -> _Entry:
        now = self.clock()
        entry = _Entry(policy_id, now + policy.max_age, policy)
        self._remember(domain, entry)
        record = CachedPolicy(domain=domain, id=policy_id, fetched_at=now, text=text)
        path = self._path(domain)
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            replace_file(path, _encode(record), tmp, exclusive=False)
        except OSError as exc:
            log.warning("mta-sts: %s: cannot write the policy cache %s: %s", domain, path, exc)
        return entry

    def _path(self, domain: str) -> str:
        return os.path.join(self.directory, domain)

    def _read(self, domain: str) -> _Entry | None:
        path = self._path(domain)
        try:
            with open(path, "rb") as file:
                data = file.read(4 * MAX_BODY)  # the body, JSON-escaped, and a few fields
            record = _decode(data)
            if record.domain != domain:
                raise ValueError(f"the file is for {record.domain}")
            policy = parse_policy(record.text)
        except FileNotFoundError:
            return None
        except (OSError, msgspec.DecodeError, ValueError) as exc:  # StsPolicyError too
            log.warning("mta-sts: %s: ignoring the policy cache %s: %s", domain, path, exc)
            return None
        return _Entry(record.id, record.fetched_at + policy.max_age, policy)

    def _remember(self, domain: str, entry: _Entry | None) -> None:
        self._memory[domain] = entry
        self._memory.move_to_end(domain)
        while len(self._memory) > self.size:
            self._memory.popitem(last=False)


class StsPolicies:
    """The MTA-STS policy in force for each destination domain (see the module docstring)."""

    def __init__(
        self, config: Config, resolver: Resolver, clock: Callable[[], float] = time.time
    ) -> None:
        settings = config.mta_sts
        directory = os.path.join(os.path.abspath(config.queue.path), "mta-sts")
        self.cache = StsCache(directory, settings.cache_size, clock)
        self.resolver = resolver
        self.timeout = settings.fetch_timeout
        self.clock = clock
        self._context = https_context(config.delivery.tls_ca_file)
        self._inflight: dict[str, asyncio.Future[_Entry | None]] = {}
        self._failed: OrderedDict[tuple[str, str], float] = OrderedDict()  # → retry time
        self._txt: OrderedDict[str, tuple[float, str | None]] = OrderedDict()  # → until, id

    async def policy_for(self, domain: str) -> StsPolicy | None:
        """The policy of ``domain`` (lower case, no final dot), or None when it has none."""
        if not _DOMAIN.fullmatch(domain) or len(domain) > 253:
            return None  # an address literal, or nothing a policy host could be named for
        cached = self.cache.get(domain)
        policy_id = await self._txt_id(domain)
        if policy_id is not None and (cached is None or cached.id != policy_id):
            fresh = await self._refresh(domain, policy_id)
            cached = fresh or cached  # a failed refresh keeps the cached policy (§5.1)
        return cached.policy if cached is not None else None

    async def _txt_id(self, domain: str) -> str | None:
        now = self.clock()
        known = self._txt.get(domain)
        if known is not None and known[0] > now:
            return known[1]
        try:
            records = await self.resolver.txt(f"_mta-sts.{domain}")
        except DeliveryError as exc:  # temporary: as if there were no record (a hint)
            log.info("mta-sts: %s: TXT lookup failed: %s", domain, exc.reply)
            return None
        policy_id = parse_txt(records)
        self._txt[domain] = (now + TXT_SECONDS, policy_id)
        self._txt.move_to_end(domain)
        if len(self._txt) > self.cache.size:
            self._txt.popitem(last=False)
        return policy_id

    async def _refresh(self, domain: str, policy_id: str) -> _Entry | None:
        """The policy of id ``policy_id``, fetched by one task per domain at a time."""
        future = self._inflight.get(domain)
        if future is None:
            future = asyncio.ensure_future(self._fetch(domain, policy_id))
            self._inflight[domain] = future
            future.add_done_callback(lambda _: self._inflight.pop(domain, None))
        # shielded: one delivery cancelled must not cancel the fetch the others wait for
        return await asyncio.shield(future)

    async def _fetch(self, domain: str, policy_id: str) -> _Entry | None:
        stored = self.cache.reload(domain)  # fetched by another process meanwhile?
        if stored is not None and stored.id == policy_id and stored.expires > self.clock():
            return stored
        if self._failed.get((domain, policy_id), 0.0) > self.clock():
            return None
        try:
            text = await fetch_policy(domain, self.resolver, self._context, self.timeout)
            policy = parse_policy(text)
        except (StsFetchError, StsPolicyError) as exc:
            kind = exc.kind if isinstance(exc, StsFetchError) else "invalid"
            metrics.MTA_STS_FETCHES.labels(kind).inc()
            log.warning("mta-sts: %s: policy id %s not fetched: %s", domain, policy_id, exc)
            self._remember_failure(domain, policy_id)
            return None
        metrics.MTA_STS_FETCHES.labels("ok").inc()
        log.info(
            "mta-sts: %s: policy id %s fetched: mode=%s, max_age=%d, mx=%s",
            domain,
            policy_id,
            policy.mode,
            policy.max_age,
            ",".join(policy.mx) or "none",
        )
        return self.cache.put(domain, policy_id, text, policy)

    def _remember_failure(self, domain: str, policy_id: str) -> None:
        self._failed[(domain, policy_id)] = self.clock() + RETRY_SECONDS
        while len(self._failed) > self.cache.size:
            self._failed.popitem(last=False)
