"""Last-used dates of access keys for the list strategy.

The credential report already holds them (``access_key_N_last_used_date``), for every
key, in one download that AWS reuses for 4 hours. The report has no key ids, so each
report slot is matched to a key by its creation time (``access_key_N_last_rotated`` is
the key's CreateDate, to the second). Only keys the report cannot match (created after
the report, or the report is not available) cost one GetAccessKeyLastUsed each, and
those answers are kept for a few hours (CACHE_SECONDS): a user read again within that
time costs no second call per key. With ``last_used: api`` every key is read that way.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from exporter.aws.errors import client_error_code
from exporter.inventory import AccessKey

if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient

# How long a GetAccessKeyLastUsed answer is reused (with jitter, so that keys fetched
# in the same pass are not all fetched again in the same later pass). The report is
# as old as this at worst too.
CACHE_SECONDS = 4 * 3600.0
CACHE_JITTER = 0.25
# Report and key creation times are both whole seconds; allow for rounding.
MATCH_TOLERANCE = 1.0


@dataclass(frozen=True, slots=True)
class _Cached:
    last_used: float | None
    expires: float


class LastUsedCache:
    """GetAccessKeyLastUsed answers by key id, kept across reads of one account."""

    def __init__(self, ttl: float = CACHE_SECONDS) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._data: dict[str, _Cached] = {}

    def get(self, key_id: str, now: float) -> _Cached | None:
        with self._lock:
            hit = self._data.get(key_id)
        return hit if hit is not None and hit.expires > now else None

    def put(self, key_id: str, last_used: float | None, now: float) -> None:
        life = self.ttl * (1 - random.uniform(0, CACHE_JITTER))
        with self._lock:
            self._data[key_id] = _Cached(last_used, now + life)

    def keep_only(self, key_ids: set[str]) -> None:
        """Forgets deleted keys, so the cache never outgrows the account."""
        with self._lock:
            for k in [k for k in self._data if k not in key_ids]:
                del self._data[k]


def take_slot(slots: list[AccessKey], created: float | None) -> AccessKey | None:
    """Removes and returns the slot created at ``created`` (to the report's second)."""
    if created is None:
        return None
    for i, slot in enumerate(slots):
        if slot.created is not None and abs(slot.created - created) <= MATCH_TOLERANCE:
            return slots.pop(i)
    return None


def fetch_last_used(iam: IAMClient, key_id: str) -> float | None:
    """The key's last use (unix seconds), None if never used or the key is gone."""
    try:
        resp = iam.get_access_key_last_used(AccessKeyId=key_id)
    except Exception as e:
        if client_error_code(e) == "NoSuchEntity":  # deleted since it was listed
            return None
        raise
    when = resp.get("AccessKeyLastUsed", {}).get("LastUsedDate")
    return when.timestamp() if when is not None else None


def cached_last_used(iam: IAMClient, key: AccessKey, cache: LastUsedCache) -> float | None:
    """The key's last use through the cache (GetAccessKeyLastUsed when not cached)."""
    if key.key_id is None:
        return None
    now = time.time()
    hit = cache.get(key.key_id, now)
    if hit is not None:
        return hit.last_used
    value = fetch_last_used(iam, key.key_id)
    cache.put(key.key_id, value, time.time())
    return value
