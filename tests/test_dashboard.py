"""The Grafana dashboard's structure (its queries run against a live Prometheus in
tests/test_e2e_alerting.py)."""

from __future__ import annotations

import difflib
import importlib.util
import json
import re
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from tests.helpers import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "iam-key-exporter.json"
GENERATOR = ROOT / "deploy" / "grafana" / "dashboard.py"
# Metrics without an account_id label; every other selector filters on $account.
ACCOUNTLESS = ("up{", "iam_exporter_poll_interval_seconds{", "iam_exporter_events_total{",
               "iam_exporter_events_queue_up{", "iam_exporter_events_last_applied_delay_seconds{",
               "vector(")
NEW_PANELS = ("IAM requests/s vs budget", "IAM throttles/s", "Events by result",
              "Event delay")


def load() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_dashboard", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def panels(ps: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))


def documented_families() -> set[str]:
    """Metric names in the first column of the metrics tables of README.md and docs/."""
    names: set[str] = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        names |= set(re.findall(r"^\| `([a-z_:][a-z0-9_:]*)` \|", doc.read_text(), re.M))
    return names


def test_json_is_what_the_generator_writes_now() -> None:
    text = generator().render()
    committed = DASHBOARD.read_text()
    assert committed == text, (
        f"{DASHBOARD.relative_to(ROOT)} is out of date: run python3 "
        f"{GENERATOR.relative_to(ROOT)} and make chart\n" + "".join(difflib.unified_diff(
            committed.splitlines(True), text.splitlines(True), "committed", "generated", n=1)))
    assert generator().render() == text  # deterministic: same bytes on every run


def test_variables_and_schema() -> None:
    dash = load()
    assert dash["uid"] == "iam-key-exporter"
    assert 36 <= dash["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert set(variables) == {"datasource", "account"}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    account = variables["account"]
    assert account["type"] == "query"
    assert account["query"]["query"] == "label_values(iam_account_info, account_id)"
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


def test_every_query_reads_only_documented_families() -> None:
    documented = documented_families()
    assert {"iam_user_access_keys", "iam_exporter_collection_success"} <= documented
    allowed = documented | {"up"}
    for p in panels(load()["panels"]):
        for t in p.get("targets", []):
            # Every metric name: a selector's name, and any iam_ name (no label is one).
            used = set(re.findall(r"([a-z_:][a-z0-9_:]*)\{", t["expr"]))
            used |= set(re.findall(r"\biam_[a-z0-9_:]+", t["expr"]))
            assert used <= allowed, (p["title"], sorted(used - allowed))


def test_panels_cover_the_issue() -> None:
    titles = {p["title"] for p in panels(load()["panels"])}
    for wanted in ("IAM users", "Users with >1 active key", "Accounts with root keys",
                   "Oldest active key", "Exporter", "Users with more than one active key",
                   "Active key age distribution", "Collection duration",
                   "Collection errors", "Data age", *NEW_PANELS):
        assert wanted in titles, wanted


def test_new_panels_have_their_own_row_below_the_others() -> None:
    ps = load()["panels"]
    rows = [i for i, p in enumerate(ps) if p["type"] == "row"]
    assert [ps[i]["title"] for i in rows] == [
        "Overview", "Access keys", "Exporter", "Events and IAM request budget"]
    last = rows[-1]
    assert [p["title"] for p in ps[last + 1:]] == list(NEW_PANELS)
    assert all(p["title"] not in NEW_PANELS for p in ps[:last])
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in ps[:last])
    assert ps[last]["gridPos"]["y"] == bottom
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in ps[last + 1:]}
    assert "iam_exporter_iam_requests_total" in exprs["IAM requests/s vs budget"]
    assert "iam_exporter_iam_request_budget" in exprs["IAM requests/s vs budget"]
    assert "iam_exporter_iam_throttles_total" in exprs["IAM throttles/s"]
    assert "sum by (result) (rate(iam_exporter_events_total" in exprs["Events by result"]
    assert "iam_exporter_events_queue_up" in exprs["Events by result"]
    assert "iam_exporter_events_last_applied_delay_seconds" in exprs["Event delay"]


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
