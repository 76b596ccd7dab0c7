"""The shipped IAM policy is exactly what the exporter calls, and it only reads."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import yaml

from tests.awsproxy import AwsProxy
from tests.helpers import ROOT, add_user

POLICY = ROOT / "deploy" / "aws" / "iam-policy.json"
STS_ACTIONS = {"GetCallerIdentity", "AssumeRole"}
WRITE_PREFIXES = ("Create", "Delete", "Update", "Put", "Attach", "Detach", "Add", "Remove",
                  "Set", "Tag", "Untag", "Upload", "Change", "Enable", "Deactivate", "Reset")


def policy_actions() -> set[str]:
    doc = json.loads(POLICY.read_text())
    actions: set[str] = set()
    for st in doc["Statement"]:
        assert st["Effect"] == "Allow"
        acts = st["Action"]
        actions.update([acts] if isinstance(acts, str) else acts)
    return actions


def test_policy_has_no_wildcards_and_no_writes() -> None:
    for action in policy_actions():
        service, _, name = action.partition(":")
        assert service in ("iam", "sts") and "*" not in name, action
        assert not name.startswith(WRITE_PREFIXES), action


def test_every_call_of_a_full_run_is_in_the_policy(iam: Any, proxy: AwsProxy, tmp_path: Any,
                                                   aws_env: dict[str, str]) -> None:
    add_user(iam, "alice", ("Active", "Inactive"))
    add_user(iam, "bob", ("Active",))
    proxy.actions.clear()
    for strategy in ("list", "credential-report"):
        cfg = tmp_path / f"{strategy}.yaml"
        cfg.write_text(yaml.safe_dump({"aws": {"endpoint_url": proxy.url},
                                       "collection": {"strategy": strategy}}))
        r = subprocess.run([sys.executable, "-m", "exporter", "once", "--config", str(cfg)],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    called = {f"{'sts' if a in STS_ACTIONS else 'iam'}:{a}" for a in proxy.counts()}
    # Everything called is allowed, and nothing allowed is unused.
    assert called == policy_actions()
