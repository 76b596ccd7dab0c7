"""Which replica (shard) watches which account.

Each account belongs to exactly one of ``total`` shards, chosen by rendezvous
(highest-random-weight) hashing: every shard gets a weight from a hash of
``"<account_id>/<shard>"`` and the highest weight wins. The hash is BLAKE2b, so the
result is the same in every process, on every machine and every Python version (the
built-in ``hash()`` is salted per process and must not be used here). Going from N to
N+1 shards moves only the accounts that the new shard wins, about 1/(N+1) of them, and
each of those moves to the new shard; nothing else is reshuffled.
"""

from __future__ import annotations

import hashlib


def _weight(account_id: str, shard: int) -> int:
    digest = hashlib.blake2b(f"{account_id}/{shard}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def shard_of(account_id: str, total: int) -> int:
    """The shard (0 ≤ shard < total) that owns the account."""
    if total < 1:
        raise ValueError(f"sharding total must be at least 1, got {total}")
    if total == 1:
        return 0
    # max() keeps the first of equal weights, so ties (never seen in practice) go to the
    # lowest shard, deterministically.
    return max(range(total), key=lambda shard: _weight(account_id, shard))


def mine(account_id: str, total: int, index: int) -> bool:
    """True if shard ``index`` of ``total`` owns the account."""
    if not 0 <= index < total:
        raise ValueError(f"shard index must be in 0..{total - 1}, got {index}")
    return shard_of(account_id, total) == index
