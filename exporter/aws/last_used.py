"""Last-used dates of access keys for the list strategy.

The credential report already holds them (``access_key_N_last_used_date``), for every
key, in one download that AWS reuses for 4 hours. The report has no key ids, so each
report slot is matched to a key by its creation time (``access_key_N_last_rotated`` is
the key's CreateDate, to the second). Only keys the report cannot match (created after
the report, or the report is not available) cost one GetAccessKeyLastUsed each, and
those answers are kept for a few hours, so a cycle never pays a second call per key
again and again.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from exporter.aws.errors import Deadline, client_error_code, error_code
from exporter.aws.list_strategy import parallel_map
from exporter.inventory import AccessKey, User

if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient

# How long a GetAccessKeyLastUsed answer is reused (with jitter, so that keys fetched
# in the same cycle are not all fetched again in the same later cycle). The report is
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
    """GetAccessKeyLastUsed answers by key id, kept across cycles of one account."""

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


class ReportMatcher:
    """Matches each user's keys to the report's slots as the keys come in (from the
    ListAccessKeys threads); the report's rows are let go as they are used."""

    def __init__(self, report_users: Sequence[User]) -> None:
        self._slots: dict[str, list[AccessKey]] = {u.name: list(u.keys) for u in report_users}
        # Ids of the keys the report could not match (set.add is atomic in CPython).
        self.unmatched: set[str] = set()

    def match(self, name: str, keys: tuple[AccessKey, ...]
              ) -> tuple[tuple[AccessKey, ...], list[int]]:
        """The keys with their last-used dates, and the positions of those not matched."""
        slots = self._slots.pop(name, [])
        out: list[AccessKey] = []
        missing: list[int] = []
        for i, key in enumerate(keys):
            slot = take_slot(slots, key.created)
            if slot is None:
                missing.append(i)
                out.append(key)
            else:
                out.append(replace(key, last_used=slot.last_used))
        return tuple(out), missing

    def __call__(self, name: str, keys: tuple[AccessKey, ...]) -> tuple[AccessKey, ...]:
        matched, missing = self.match(name, keys)
        for i in missing:
            key_id = keys[i].key_id
            if key_id is not None:
                self.unmatched.add(key_id)
        return matched


def match_report(users: Sequence[User], report_users: Sequence[User]
                 ) -> tuple[tuple[User, ...], list[tuple[int, int]]]:
    """Users with last-used dates from the report, and the (user, key) indexes of keys
    the report could not match."""
    matcher = ReportMatcher(report_users)
    out: list[User] = []
    unmatched: list[tuple[int, int]] = []
    for ui, user in enumerate(users):
        keys, missing = matcher.match(user.name, user.keys)
        unmatched.extend((ui, ki) for ki in missing)
        out.append(replace(user, keys=keys) if keys != user.keys else user)
    return tuple(out), unmatched


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


def fill_from_api(iam: IAMClient, users: tuple[User, ...], wanted: Sequence[tuple[int, int]],
                  concurrency: int, deadline: Deadline,
                  cache: LastUsedCache | None) -> tuple[tuple[User, ...], str | None]:
    """Fills in the wanted keys from GetAccessKeyLastUsed (through the cache when given);
    returns the users and, when some wanted key got no date, why (the first error code,
    or DeadlineExceeded). A key whose call fails (denied, throttled through every retry)
    or is not reached by the deadline keeps no date; the others, and every cached date,
    are kept."""
    now = time.time()
    found: dict[tuple[int, int], float | None] = {}
    todo: list[tuple[int, int]] = []
    for ui, ki in wanted:
        key_id = users[ui].keys[ki].key_id
        if key_id is None:
            continue
        hit = cache.get(key_id, now) if cache is not None else None
        if hit is not None:
            found[(ui, ki)] = hit.last_used
        else:
            todo.append((ui, ki))

    def one(pos: tuple[int, int]) -> tuple[float | None] | str:
        key_id = users[pos[0]].keys[pos[1]].key_id
        assert key_id is not None
        try:
            value = fetch_last_used(iam, key_id)
        except Exception as e:
            if getattr(e, "operation_name", None) == "AssumeRole":
                raise
            return error_code(e)
        if cache is not None:
            cache.put(key_id, value, time.time())
        return (value,)

    missing: str | None = None
    for pos, got in zip(todo, parallel_map(one, todo, concurrency, deadline, "iam-lastused"),
                        strict=True):
        if isinstance(got, tuple):
            found[pos] = got[0]
        else:
            missing = missing or got or "DeadlineExceeded"
    if cache is not None:
        cache.keep_only({k.key_id for u in users for k in u.keys if k.key_id})
    if not found:
        return users, missing
    by_user: dict[int, dict[int, float | None]] = {}
    for (ui, ki), value in found.items():
        by_user.setdefault(ui, {})[ki] = value
    out = list(users)
    for ui, values in by_user.items():
        out[ui] = replace(out[ui], keys=tuple(
            replace(k, last_used=values[ki]) if ki in values else k
            for ki, k in enumerate(out[ui].keys)))
    return tuple(out), missing
