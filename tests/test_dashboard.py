"""The Grafana dashboard's structure (its queries run against a live Prometheus in
tests/test_e2e_alerting.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from tests.helpers import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "iam-key-exporter.json"
GENERATOR = ROOT / "deploy" / "grafana" / "dashboard.py"
# Metrics without an account_id label; every other selector filters on $account.
ACCOUNTLESS = ("up{", "iam_exporter_poll_interval_seconds{", "vector(")


def load() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(ps: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))


def test_json_is_what_the_generator_writes() -> None:
    r = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_variables_and_schema() -> None:
    dash = load()
    assert dash["uid"] == "iam-key-exporter"
    assert 36 <= dash["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    account = variables["account"]
    assert account["type"] == "query"
    assert account["definition"] == "label_values(iam_account_info, account_id)"
    assert account["multi"] is True and account["includeAll"] is True
    assert account["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_every_query_uses_the_variables() -> None:
    targets = 0
    for p in panels(load()["panels"]):
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            targets += 1
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            selectors = re.findall(r"[a-z_:]+\{[^}]*\}", t["expr"])
            assert selectors, t["expr"]
            for sel in selectors:
                if not sel.startswith(ACCOUNTLESS):
                    assert 'account_id=~"$account"' in sel, (p["title"], sel)
    assert targets >= 20


def test_panels_cover_the_issue() -> None:
    titles = {p["title"] for p in panels(load()["panels"])}
    for wanted in ("IAM users", "Users with >1 active key", "Accounts with root keys",
                   "Oldest active key", "Exporter", "Users with more than one active key",
                   "Active key age distribution", "Collection duration",
                   "Collection errors", "Data age"):
        assert wanted in titles, wanted


def test_panel_ids_are_unique_and_panels_do_not_overlap() -> None:
    ps = list(panels(load()["panels"]))
    ids = [p["id"] for p in ps]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in ps:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, p["title"]
        cells |= mine
