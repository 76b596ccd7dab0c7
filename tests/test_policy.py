"""The shipped IAM policy is exactly what the exporter calls, and it only reads."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import botocore.session
import yaml

from tests.awsproxy import AwsProxy
from tests.helpers import ROOT, add_user

POLICY = ROOT / "deploy" / "aws" / "iam-policy.json"
STS_ACTIONS = {"GetCallerIdentity", "AssumeRole"}
WRITE_PREFIXES = ("Create", "Delete", "Update", "Put", "Attach", "Detach", "Add", "Remove",
                  "Set", "Tag", "Untag", "Upload", "Change", "Enable", "Deactivate", "Reset")
# The events consumer (config events.queue_url) long-polls its queue, deletes the messages
# it handled, delays or gives back the ones it could not handle yet (their visibility), and
# reads queue attributes (its redrive policy, and the dead-letter queue's depth). Exactly
# these four SQS actions: never SendMessage, never a queue change.
SQS_ACTIONS = {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
               "sqs:GetQueueAttributes"}
# The IAM action a batch operation is authorized by.
SQS_BATCH = {"DeleteMessageBatch": "DeleteMessage", "SendMessageBatch": "SendMessage",
             "ChangeMessageVisibilityBatch": "ChangeMessageVisibility"}


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
        assert service in ("iam", "sts", "organizations", "sqs") and "*" not in name, action
        # Read-only everywhere but on the event queue, where handled messages are deleted.
        assert service == "sqs" or not name.startswith(WRITE_PREFIXES), action
    assert {a for a in policy_actions() if a.startswith("sqs:")} == SQS_ACTIONS


def test_policy_sqs_statements_are_scoped_to_the_event_queues() -> None:
    doc = json.loads(POLICY.read_text())
    sqs = {st["Sid"]: st for st in doc["Statement"]
           if any(a.startswith("sqs:") for a in st["Action"])}
    assert set(sqs) == {"EventsQueue", "EventsDeadLetterQueue"}
    assert set(sqs["EventsQueue"]["Action"]) == SQS_ACTIONS
    assert sqs["EventsDeadLetterQueue"]["Action"] == ["sqs:GetQueueAttributes"]
    # The queue names of deploy/aws/events.yaml (<prefix>-<shard>, <prefix>-<shard>-dlq),
    # in us-east-1 where IAM's events are; "?" is one character, so a queue's pattern
    # never matches a dead-letter queue.
    assert sqs["EventsQueue"]["Resource"] == "arn:aws:sqs:us-east-1:*:iam-key-exporter-events-?"
    assert sqs["EventsDeadLetterQueue"]["Resource"] == (
        "arn:aws:sqs:us-east-1:*:iam-key-exporter-events-?-dlq")


def _camel(snake: str) -> str:
    return "".join(part.capitalize() for part in snake.split("_"))


def code_operations() -> set[str]:
    """Every AWS operation the exporter's code can call, read from the source: client
    method uses (iam.list_users), paginators, and the client each goes to. The demo's
    seeding of its fake account is not the exporter's."""
    ops: set[str] = set()
    for path in (ROOT / "exporter").rglob("*.py"):
        if path.name == "demo.py":
            continue
        text = path.read_text()
        for client, method in re.findall(r"\b(iam|sts)\.([a-z_]+)\b", text):
            if method != "meta":  # the client's events and config, not an operation
                ops.add(f"{client}:{_camel(method)}")
        if path.name == "organizations.py":
            for method in re.findall(r"\bclient\.([a-z_]+)\(", text):
                if method != "get_paginator":
                    ops.add(f"organizations:{_camel(method)}")
            for method in re.findall(r"(?:get_paginator|_pages)\(\s*\"([a-z_]+)\"", text):
                ops.add(f"organizations:{_camel(method)}")
    # botocore's AssumeRoleCredentialFetcher calls sts:AssumeRole for member accounts.
    if "AssumeRoleCredentialFetcher" in (ROOT / "exporter/aws/session.py").read_text():
        ops.add("sts:AssumeRole")
    return ops | sqs_operations()


def sqs_operations() -> set[str]:
    """The SQS actions the code's calls need, whatever the client is named: any call of an
    SQS operation (queue.receive_message(...)) or operation name in quotes ("ReceiveMessage"),
    mapped to the IAM action that authorizes it."""
    names = botocore.session.get_session().get_service_model("sqs").operation_names
    snake = {re.sub(r"(?<!^)(?=[A-Z])", "_", n).lower(): n for n in names}
    found: set[str] = set()
    for path in (ROOT / "exporter").rglob("*.py"):
        if path.name.startswith("demo"):  # the demo's fake account fills its own queue
            continue
        text = path.read_text()
        found |= {snake[m] for m in re.findall(r"\.([a-z_]+)\(", text) if m in snake}
        found |= {n for n in names if re.search(rf"[\"']{n}[\"']", text)}
    return {f"sqs:{SQS_BATCH.get(n, n)}" for n in found}


def test_policy_matches_the_operations_in_the_code() -> None:
    ops = code_operations()
    assert {"iam:ListAccessKeys", "organizations:ListAccounts", "sts:AssumeRole"} <= ops
    # The events consumer may not be in the code yet; once it is, it needs exactly the
    # SQS actions of the policy.
    sqs = sqs_operations()
    assert sqs in (set(), SQS_ACTIONS), f"the code needs {sorted(sqs)}, the policy grants " \
        f"{sorted(SQS_ACTIONS)}"
    assert ops | SQS_ACTIONS == policy_actions()


def test_every_call_of_a_full_run_is_in_the_policy(iam: Any, proxy: AwsProxy, tmp_path: Any,
                                                   aws_env: dict[str, str]) -> None:
    add_user(iam, "alice", ("Active", "Inactive"))
    add_user(iam, "bob", ("Active",))
    proxy.actions.clear()
    runs = [
        {"collection": {"strategy": "list"}},
        {"collection": {"strategy": "list", "last_used": "api"}},
        {"collection": {"strategy": "credential-report"}, "metrics": {"user_tags": {"T": "t"}}},
        # Without GetAccountAuthorizationDetails: ListUsers, users without tags.
        {"collection": {"strategy": "list"}, "deny": "GetAccountAuthorizationDetails"},
    ]
    for i, run in enumerate(runs):
        proxy.modes.clear()
        if "deny" in run:
            proxy.modes[run.pop("deny")] = "deny"
        cfg = tmp_path / f"run{i}.yaml"
        cfg.write_text(yaml.safe_dump({"aws": {"endpoint_url": proxy.url}, **run}))
        r = subprocess.run([sys.executable, "-m", "exporter", "once", "--config", str(cfg)],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    called = {f"{'sts' if a in STS_ACTIONS else 'iam'}:{a}" for a in proxy.counts()}
    # Everything called is allowed, and every IAM/STS action allowed is used (the
    # Organizations and AssumeRole ones are covered by the source check above and the
    # Organizations tests, GetUser (an event's re-read of one user) by the source check
    # and the events tests).
    allowed = {a for a in policy_actions()
               if a.startswith(("iam:", "sts:")) and a not in ("sts:AssumeRole", "iam:GetUser")}
    assert called == allowed
