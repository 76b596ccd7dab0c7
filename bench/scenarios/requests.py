"""Scenario 5: IAM requests per pass (a listing, then each user read once: ``run_once``),
both strategies, last-used and tags on and off, at 500 and 5,000 users: the documented
formula against the fake's count, exactly.

The formula (list strategy): listing pages (GetAccountAuthorizationDetails) + 1
GetAccountSummary + the credential report's calls (Generate + Get, for last-used dates) +
1 ListAccessKeys per user + last-used calls (GetAccessKeyLastUsed per key with ``api``).
The credential-report strategy: Generate + Get + GetAccountSummary (+ listing pages when
tags are wanted)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import boto3

from bench.fakedata import Dataset
from bench.fakeiam import FakeIam
from bench.harness import config_dict, load_config, table
from bench.scenarios.common import NO_BUDGET, Bench, InProcess, exact

PAGE = 1000  # the exporter's MaxItems
S = "5 requests per pass"


@dataclass
class Combo:
    strategy: str
    last_used: str | None  # list strategy only
    tags: bool

    @property
    def label(self) -> str:
        lu = f" last_used={self.last_used}" if self.strategy == "list" else ""
        return f"{self.strategy}{lu} tags={'on' if self.tags else 'off'}"

    def config(self, endpoint: str) -> dict[str, Any]:
        coll: dict[str, Any] = {"strategy": self.strategy}
        if self.strategy == "list" and self.last_used is not None:
            coll["last_used"] = self.last_used
        extra: dict[str, Any] = {"collection": coll,
                                 "aws": {"max_requests_per_second": NO_BUDGET}}
        if self.tags:
            extra["metrics"] = {"user_tags": {"Team": "team"}}
        return config_dict(endpoint, **extra)

    def formula(self, users: int, keys: int) -> tuple[int, str]:
        pages = max(1, math.ceil(users / PAGE))
        if self.strategy == "credential-report":
            n, text = 3, "Generate + Get + Summary"
            if self.tags:
                n, text = n + pages, text + f" + {pages} GAAD page(s) for tags"
            return n, text
        # Users come from GetAccountAuthorizationDetails (GAAD) pages whether or not tag
        # labels are wanted: the exemption tag is read on every user.
        n, text = pages + users + 1, f"{pages} GAAD + {users} ListAccessKeys + Summary"
        if self.last_used == "credential-report":
            n, text = n + 2, text + " + Generate + Get"
        elif self.last_used == "api":
            n, text = n + keys, text + f" + {keys} GetAccessKeyLastUsed"
        return n, text


def combos(users: int, full_max: int) -> list[Combo]:
    lst = [Combo("list", lu, tags) for lu in ("off", "credential-report", "api")
           for tags in (False, True)]
    if users > full_max:  # big list passes cost CPU here: the fullest (the default) only
        lst = [Combo("list", "credential-report", True)]
    return [*lst, Combo("credential-report", None, False),
            Combo("credential-report", None, True)]


def _measure(b: Bench, fake: FakeIam, data: Dataset, c: Combo) -> dict[str, Any]:
    users = len(data.users)
    with InProcess(load_config(c.config(fake.url)), b.sizes.timeout) as exp:
        fake.reset()
        snap, secs, _ = exp.run_pass()
    ok, note = exact(snap, {data.account_id: data.truth()})
    measured = {k: v for k, v in fake.stats()["requests"].items()
                if k not in ("GetCallerIdentity", "AssumeRole")}
    total = sum(measured.values())
    expect, text = c.formula(users, data.key_count())
    b.row(S, f"{users} users {c.label}: requests = formula", f"{total} ({text} = {expect})",
          "measured == formula", total == expect and ok)
    if c.strategy == "list" and c.last_used != "api":
        per_user = {op: n for op, n in measured.items()
                    if op in ("ListAccessKeys", "GetAccessKeyLastUsed", "ListUserTags")}
        b.row(S, f"{users} users {c.label}: calls per user",
              f"{sum(per_user.values()) / users:.3f}", "1 (ListAccessKeys only)",
              per_user == {"ListAccessKeys": users})
    return {"users": users, "combo": asdict(c), "measured": measured, "total": total,
            "formula": expect, "formula_text": text, "exact": ok, "note": note,
            "seconds": secs}


def cold_requests(b: Bench, fake: FakeIam, data: Dataset) -> dict[str, Any]:
    """The credential-report strategy's first pass: the report has to be generated."""
    cfg = load_config(Combo("credential-report", None, False).config(fake.url))
    with InProcess(cfg, b.sizes.timeout) as exp:
        fake.forget_report()
        fake.reset()
        snap, secs, _ = exp.run_pass()
    ok, _ = exact(snap, {data.account_id: data.truth()})
    measured = {k: v for k, v in fake.stats()["requests"].items() if k != "GetCallerIdentity"}
    total = sum(measured.values())
    b.row(S, f"{len(data.users)} users credential-report, no report yet: requests",
          f"{total} (Generate x2 + Get + Summary = 4)", "<= 5", total <= 5 and ok)
    return {"users": len(data.users), "cold": True, "measured": measured, "total": total,
            "seconds": secs, "exact": ok}


def scenario_requests(b: Bench) -> None:
    z = b.sizes
    results: list[dict[str, Any]] = []
    for users in z.requests_sizes:
        data = Dataset.generate(users)
        with FakeIam(users=users, latency_ms=0) as fake:
            # A report exists, as it does from the exporter's previous pass (AWS keeps
            # one for 4 hours); the cold start is measured separately below.
            boto3.client("iam", endpoint_url=fake.url).generate_credential_report()
            results += [_measure(b, fake, data, c)
                        for c in combos(users, z.requests_full_combos_max)]
            if users == z.requests_sizes[0]:
                results.append(cold_requests(b, fake, data))
    print(table(["users", "config", "IAM requests", "formula", "exact", "s"], [
        [r["users"], Combo(**r["combo"]).label if "combo" in r else "cold report",
         r["total"], r.get("formula", "-"), r["exact"], f"{r['seconds']:.2f}"]
        for r in results]))
    b.write("requests", {"results": results})
