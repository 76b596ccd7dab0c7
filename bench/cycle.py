"""Benchmark: one collection cycle of a moto account, against the sequential boto3 loop.

Both sides talk real HTTP to a moto server, optionally through a proxy that adds a fixed
per-request latency (what a real IAM endpoint 20 ms away costs). The exporter's cycle and
the baseline (paginate ListUsers, then ListAccessKeys per user, one at a time) are
alternated in the same run; the report gives both medians, their ratio and the IAM
requests each made.

    python bench/cycle.py --users 1000 --latency-ms 20 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.aws.collect import collect_account  # noqa: E402
from exporter.aws.errors import Deadline  # noqa: E402
from exporter.aws.session import ApiStats, Target  # noqa: E402
from exporter.config import Config, parse  # noqa: E402
from tests.awsproxy import AwsProxy  # noqa: E402

CREDS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
         "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
         "AWS_EC2_METADATA_DISABLED": "true",
         "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}


def wait_listening(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def seed(endpoint: str, users: int) -> int:
    iam = boto3.client("iam", endpoint_url=endpoint)
    keys = 0
    for i in range(users):
        name = f"user-{i:05d}"
        iam.create_user(UserName=name)
        for _ in range(2 if i % 10 == 0 else 1):  # 10 % hold two keys
            iam.create_access_key(UserName=name)
            keys += 1
    return keys


def baseline(iam: Any) -> tuple[dict[str, int], int]:
    """The straightforward sequential loop most scripts use."""
    counts: dict[str, int] = {}
    n = 0
    for page in iam.get_paginator("list_users").paginate():
        for user in page["Users"]:
            keys = iam.list_access_keys(UserName=user["UserName"])["AccessKeyMetadata"]
            counts[user["UserName"]] = sum(1 for k in keys if k["Status"] == "Active")
            n += 1
    return counts, n


def exporter_target(endpoint: str, concurrency: int) -> tuple[Target, Config]:
    """A target as the daemon keeps it: clients built once, account id resolved once."""
    cfg = parse(f"aws: {{endpoint_url: '{endpoint}'}}\n"
                f"collection: {{concurrency: {concurrency}}}\n", env={})
    target = Target(cfg, ApiStats())
    target.resolve_account_id()
    return target, cfg


def exporter_cycle(target: Target, cfg: Config) -> tuple[dict[str, int], int]:
    inv = collect_account(target, cfg, Deadline(600))
    return {u.name: u.count("Active") for u in inv.users}, len(inv.users)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "cycle.json"))
    args = ap.parse_args()
    os.environ.update(CREDS)

    from tests.helpers import free_port

    # moto in its own process, so that its CPU time does not share our GIL.
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    moto = f"http://127.0.0.1:{port}"
    wait_listening(moto)
    proxy = AwsProxy(moto).start()
    proxy.latency = args.latency_ms / 1000
    try:
        t = time.perf_counter()
        keys = seed(moto, args.users)
        print(f"seeded {args.users} users, {keys} keys in {time.perf_counter() - t:.1f}s",
              file=sys.stderr)
        results: dict[str, list[float]] = {"exporter": [], "baseline": []}
        requests: dict[str, dict[str, int]] = {}
        truth: dict[str, int] | None = None
        target, cfg = exporter_target(proxy.url, args.concurrency)
        client = boto3.client("iam", endpoint_url=proxy.url)
        for _ in range(args.rounds):
            for name, fn in (("exporter", lambda: exporter_cycle(target, cfg)),
                             ("baseline", lambda: baseline(client))):
                before = proxy.counts()
                t = time.perf_counter()
                counts, n = fn()
                results[name].append(time.perf_counter() - t)
                after = proxy.counts()
                requests[name] = {k: after[k] - before.get(k, 0) for k in after
                                  if after[k] != before.get(k, 0)}
                assert n == args.users, (name, n)
                if truth is None:
                    truth = counts
                assert counts == truth, f"{name} disagrees with the other side"
    finally:
        proxy.stop()
        server.terminate()
        server.wait(10)

    med = {k: statistics.median(v) for k, v in results.items()}
    ratio = med["baseline"] / med["exporter"]
    out: dict[str, Any] = {
        "users": args.users, "keys": keys, "latency_ms": args.latency_ms,
        "concurrency": args.concurrency, "rounds": args.rounds,
        "median_seconds": med, "speedup_vs_baseline": ratio, "requests": requests,
        "requests_per_user_exporter": requests["exporter"].get("ListAccessKeys", 0) / args.users,
    }
    print(f"{'side':<10} {'median s':>9} {'IAM requests':>13}")
    for k in ("exporter", "baseline"):
        print(f"{k:<10} {med[k]:>9.2f} {sum(requests[k].values()):>13}")
    print(f"speed-up: {ratio:.1f}x  ({args.users} users, {args.latency_ms:g} ms latency, "
          f"concurrency {args.concurrency})")
    print("exporter requests by action:", json.dumps(requests["exporter"], sort_keys=True))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
