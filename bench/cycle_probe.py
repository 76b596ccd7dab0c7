"""Times collection passes of whichever ``exporter`` package is first on sys.path.

bench/scenarios/before_after.py runs it with ``python -P`` and ``PYTHONPATH`` set to
another checkout, so that the same measurement runs on the exporter of that checkout.
It imports nothing from bench/ (that checkout's bench/ may differ), and works with both
cores: the continuous one (``Poller.run_once``: a pass on demand, the account loops keep
running until ``stop()``) and the older one (``Poller.run_cycle``: one collection cycle,
bounded by ``collection.timeout_seconds``). Writes JSON to --out: each pass's wall and CPU
seconds, the process's peak RSS, the counts it collected, and which API it used.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time
from typing import Any

import yaml


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _config(args: argparse.Namespace, cycles: bool) -> Any:
    from exporter.config import AwsConfig, parse

    aws: dict[str, Any] = {"endpoint_url": args.endpoint, "retry_mode": "standard"}
    if "max_requests_per_second" in {f.name for f in dataclasses.fields(AwsConfig)}:
        aws["max_requests_per_second"] = args.budget
    collection: dict[str, Any] = {"concurrency": args.concurrency}
    if cycles:  # the older core's deadline per cycle (deprecated and ignored since)
        collection["timeout_seconds"] = args.timeout
    return parse(yaml.safe_dump({
        "aws": aws, "interval_seconds": 86400, "log_level": "warning",
        "collection": collection}), env={})


def _counts(snap: Any) -> dict[str, dict[str, dict[str, int]]]:
    return {st.account_id: {u.name: {s: sum(1 for k in u.keys if k.status == s)
                                     for s in ("Active", "Inactive")}
                            for u in st.inventory.users}
            for st in snap.accounts if st.success and st.inventory is not None}


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--budget", type=float, default=1000.0)
    ap.add_argument("--passes", "--cycles", dest="passes", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per pass")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import exporter
    from exporter.aws.accounts import AccountSet
    from exporter.aws.session import ApiStats
    from exporter.poller import Poller

    cycles = hasattr(Poller, "run_cycle")  # the older core
    cfg = _config(args, cycles)
    poller = Poller(cfg, AccountSet(cfg, ApiStats()))
    passes, snap = [], None
    try:
        for _ in range(args.passes):
            cpu, t = _cpu(), time.perf_counter()
            snap = (getattr(poller, "run_cycle")() if cycles  # noqa: B009 - older API
                    else poller.run_once(timeout=args.timeout))
            passes.append({"seconds": time.perf_counter() - t, "cpu_seconds": _cpu() - cpu})
    finally:
        if not cycles:
            poller.stop()
    with open(args.out, "w") as f:
        json.dump({"exporter": exporter.__file__, "api": "run_cycle" if cycles else "run_once",
                   "passes": passes,
                   "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                   "counts": _counts(snap)}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
