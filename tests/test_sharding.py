"""Sharding: every account in exactly one shard, balanced, stable, and little movement on growth."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter

import pytest

from exporter.sharding import mine, shard_of
from tests.helpers import ROOT, subprocess_env

# A few hundred synthetic, distinct 12-digit account ids (fixed seed: same ids every run).
_rng = random.Random(20240501)
IDS = sorted({f"{_rng.randrange(10**12):012d}" for _ in range(600)})
TOTALS = range(1, 6)


def test_ids_are_synthetic_account_ids() -> None:
    assert len(IDS) >= 500
    assert all(len(a) == 12 and a.isdigit() for a in IDS)


@pytest.mark.parametrize("total", TOTALS)
def test_shards_are_disjoint_and_cover_all(total: int) -> None:
    shards = [{a for a in IDS if mine(a, total, i)} for i in range(total)]
    assert set().union(*shards) == set(IDS)
    assert sum(len(s) for s in shards) == len(IDS)  # so no account is in two shards
    for a in IDS:
        assert [i for i in range(total) if mine(a, total, i)] == [shard_of(a, total)]
        assert 0 <= shard_of(a, total) < total


@pytest.mark.parametrize("total", TOTALS)
def test_shards_are_roughly_balanced(total: int) -> None:
    counts = Counter(shard_of(a, total) for a in IDS)
    mean = len(IDS) / total
    assert set(counts) == set(range(total))
    for shard, n in counts.items():
        assert 0.7 * mean <= n <= 1.3 * mean, (shard, n, mean)


@pytest.mark.parametrize("n", range(1, 6))
def test_adding_a_shard_moves_few_accounts_and_only_to_the_new_shard(n: int) -> None:
    moved = [a for a in IDS if shard_of(a, n) != shard_of(a, n + 1)]
    assert len(moved) <= 1.5 * len(IDS) / (n + 1), (len(moved), len(IDS) / (n + 1))
    assert moved, "the new shard must take some accounts"
    # Rendezvous hashing: an account only moves when the new shard wins it.
    assert {shard_of(a, n + 1) for a in moved} == {n}


def test_one_shard_owns_everything() -> None:
    assert all(shard_of(a, 1) == 0 and mine(a, 1, 0) for a in IDS)


# Fixed answers: a change of hash or algorithm would reshuffle every deployment's accounts
# on upgrade, so it must be a deliberate one that updates this table.
EXPECTED = {
    "123456789012": [0, 0, 2, 2, 4, 4, 4],
    "111111111111": [0, 1, 1, 3, 3, 3, 6],
    "000000000001": [0, 0, 2, 2, 2, 2, 6],
    "987654321098": [0, 1, 1, 1, 1, 1, 1],
    "210987654321": [0, 1, 1, 3, 3, 3, 3],
}


@pytest.mark.parametrize("account_id", sorted(EXPECTED))
def test_assignment_is_fixed(account_id: str) -> None:
    assert [shard_of(account_id, t) for t in range(1, 8)] == EXPECTED[account_id]


@pytest.mark.parametrize("seed", ["0", "12345"])
def test_another_process_computes_the_same_shards(seed: str) -> None:
    """Independent of the per-process string hash salt (PYTHONHASHSEED)."""
    code = ("import json, sys; from exporter.sharding import shard_of; "
            "ids = json.load(sys.stdin); "
            "print(json.dumps({t: [shard_of(a, t) for a in ids] for t in range(1, 6)}))")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(IDS), cwd=ROOT,
                         env=subprocess_env({"PYTHONHASHSEED": seed}), capture_output=True,
                         text=True, timeout=60, check=True).stdout
    theirs = {int(t): v for t, v in json.loads(out).items()}
    assert theirs == {t: [shard_of(a, t) for a in IDS] for t in TOTALS}


@pytest.mark.parametrize(("total", "index"), [(0, 0), (-1, 0), (3, 3), (3, -1)])
def test_invalid_shard_arguments_are_rejected(total: int, index: int) -> None:
    with pytest.raises(ValueError):
        mine("123456789012", total, index)
