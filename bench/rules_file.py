"""A Prometheus rules file as bench/rules_cost.py reads it: its groups, their rules, and
the metric names the rules read (the families the estate must hold)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

NAME = re.compile(r"(?<![\w:])(iam_[a-z0-9_]*[a-z0-9]|up)(?![\w:])")


@dataclass
class Rule:
    group: str
    kind: str  # alert | record
    name: str
    expr: str
    key: str = ""  # unique in the file: the name, with #2, #3 for repeated record names


@dataclass
class RulesFile:
    path: Path
    text: str
    groups: list[tuple[str, list[Rule]]]

    @property
    def rules(self) -> list[Rule]:
        return [r for _, rules in self.groups for r in rules]

    def recorded(self) -> set[str]:
        return {r.name for r in self.rules if r.kind == "record"}

    def names(self) -> set[str]:
        """The metric names the rules read: in expressions, labels and annotation
        templates (whose queries run for each active alert), without recorded names."""
        found: set[str] = {"up"}
        for _, rules in self.groups:
            for r in rules:
                found |= set(NAME.findall(r.expr))
        for group in yaml.safe_load(self.text)["groups"]:
            for raw in group.get("rules", []):
                for part in ("labels", "annotations"):
                    for value in (raw.get(part) or {}).values():
                        found |= set(NAME.findall(str(value)))
        return found - self.recorded()


def without_templates(rules: RulesFile, path: Path) -> RulesFile:
    """The same rules with no labels or annotations on the alerts, written to `path`:
    Prometheus expands each label and annotation of each active alert as a Go template at
    every evaluation, whatever its text, so this measures the rules without that."""
    doc = yaml.safe_load(rules.text)
    for group in doc.get("groups", []):
        for raw in group.get("rules", []):
            if "alert" in raw:
                raw.pop("labels", None)
                raw.pop("annotations", None)
    path.write_text(yaml.safe_dump(doc, sort_keys=False, width=1000))
    return load_rules(path)


def load_rules(path: Path) -> RulesFile:
    text = path.read_text()
    doc = yaml.safe_load(text)
    groups: list[tuple[str, list[Rule]]] = []
    seen: dict[str, int] = {}
    for group in doc.get("groups", []):
        rules = []
        for raw in group.get("rules", []):
            kind = "alert" if "alert" in raw else "record"
            name = str(raw[kind])
            seen[name] = seen.get(name, 0) + 1
            key = name if seen[name] == 1 else f"{name}#{seen[name]}"
            rules.append(Rule(group["name"], kind, name, str(raw["expr"]), key))
        groups.append((group["name"], rules))
    return RulesFile(path, text, groups)
