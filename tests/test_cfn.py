"""CloudFormation for the exporter's roles and its event path: cfn-lint clean, the same
actions as the shipped IAM policy (deploy/aws/iam-policy.json, itself checked against the
code's calls by test_policy.py), and the event rules, queues and forwarding wired as the
exporter needs them (deploy/aws/events.yaml, events-member.yaml)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import cfn_yaml

from exporter.config import EventsConfig
from tests.helpers import ROOT

AWS = ROOT / "deploy" / "aws"
EXPORTER_ROLE, MEMBER_ROLE = AWS / "exporter-role.yaml", AWS / "member-role.yaml"
EVENTS, EVENTS_MEMBER = AWS / "events.yaml", AWS / "events-member.yaml"
TEMPLATES = (EXPORTER_ROLE, MEMBER_ROLE, EVENTS, EVENTS_MEMBER)
# Beyond the policy of one account, the exporter's own role assumes the member roles.
EXPORTER_ONLY = {"sts:AssumeRole"}
# The IAM calls whose events the exporter handles (issue 12; DESIGN.md "Events").
HANDLED_EVENTS = {"CreateAccessKey", "UpdateAccessKey", "DeleteAccessKey", "CreateUser",
                  "DeleteUser", "TagUser", "UntagUser"}
EVENT_PATTERN = {
    "source": ["aws.iam"],
    "detail-type": ["AWS API Call via CloudTrail"],
    "detail": {"eventSource": ["iam.amazonaws.com"], "eventName": sorted(HANDLED_EVENTS),
               "errorCode": [{"exists": False}]},
}
# What the exporter does with its queue and with the dead-letter queue (depth metric).
QUEUE_ACTIONS = {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                 "sqs:GetQueueAttributes"}
DLQ_ACTIONS = {"sqs:GetQueueAttributes"}
MAX_REPLICAS = 10


def policy_actions() -> set[str]:
    doc = json.loads((AWS / "iam-policy.json").read_text())
    out: set[str] = set()
    for st in doc["Statement"]:
        acts = st["Action"]
        out.update([acts] if isinstance(acts, str) else acts)
    return out


def load(path: Path) -> Any:
    """The template as CloudFormation deploys it: Fn::ForEach expanded (events.yaml uses
    the AWS::LanguageExtensions transform; cfn-lint checks the template as written)."""
    return expand(cfn_yaml.load(str(path)))


def expand(node: Any, values: dict[str, str] | None = None) -> Any:
    """``node`` with every Fn::ForEach replicated as the transform does it: ${Identifier}
    replaced in keys and strings, Ref Identifier by its value, and an Fn::Sub left without
    variables by its string (as in ``Condition: !Sub "Shard${Shard}"``)."""
    values = values or {}
    if isinstance(node, str):
        for name, value in values.items():
            node = node.replace(f"${{{name}}}", value)
        return node
    if isinstance(node, list):
        return [expand(x, values) for x in node]
    if not isinstance(node, dict):
        return node
    if set(node) == {"Fn::Sub"} and isinstance(node["Fn::Sub"], str):
        text = expand(node["Fn::Sub"], values)
        return text if "${" not in text else {"Fn::Sub": text}
    if set(node) == {"Ref"} and node["Ref"] in values:
        return values[node["Ref"]]
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("Fn::ForEach::"):
            name, collection, fragment = value
            for item in collection:
                out.update(expand(fragment, {**values, name: item}))
        else:
            out[expand(key, values)] = expand(value, values)
    return out


def branches(node: Any) -> list[Any]:
    """Both sides of an Fn::If (recursively), without AWS::NoValue."""
    if isinstance(node, dict) and set(node) == {"Fn::If"}:
        _, yes, no = node["Fn::If"]
        return branches(yes) + branches(no)
    if isinstance(node, dict) and node.get("Ref") == "AWS::NoValue":
        return []
    return [node]


def role(template: Any) -> dict[str, Any]:
    [res] = [r for r in template["Resources"].values() if r["Type"] == "AWS::IAM::Role"]
    return dict(res["Properties"])


def statements(template: Any) -> list[dict[str, Any]]:
    out = []
    for pol in role(template)["Policies"]:
        for st in pol["PolicyDocument"]["Statement"]:
            out += branches(st)
    return out


def actions(template: Any) -> set[str]:
    acts: set[str] = set()
    for st in statements(template):
        assert st["Effect"] == "Allow"
        a = st["Action"]
        acts.update([a] if isinstance(a, str) else a)
    return acts


def test_cfn_lint_passes() -> None:
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    r = subprocess.run([str(cfn_lint), *map(str, TEMPLATES)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_exporter_role_allows_the_policy_plus_assuming_member_roles() -> None:
    assert actions(load(EXPORTER_ROLE)) == policy_actions() | EXPORTER_ONLY


def test_member_role_allows_the_iam_reads_of_the_policy() -> None:
    assert actions(load(MEMBER_ROLE)) == {a for a in policy_actions() if a.startswith("iam:")}


@pytest.mark.parametrize("path", [EXPORTER_ROLE, MEMBER_ROLE], ids=lambda p: p.stem)
def test_no_wildcards_and_assume_role_only_on_the_member_role(path: Path) -> None:
    for st in statements(load(path)):
        acts = [st["Action"]] if isinstance(st["Action"], str) else st["Action"]
        assert all("*" not in a for a in acts), acts
        if "sts:AssumeRole" in acts:
            assert acts == ["sts:AssumeRole"]
            assert st["Resource"] == {
                "Fn::Sub": "arn:${AWS::Partition}:iam::*:role/${MemberRoleName}"}


def test_exporter_role_trusts_the_service_account_or_eks_pod_identity() -> None:
    trust = role(load(EXPORTER_ROLE))["AssumeRolePolicyDocument"]
    irsa, pod_identity = trust["Fn::If"][1], trust["Fn::If"][2]
    # IRSA: the JSON template, with the parameters filled in as CloudFormation would.
    text, variables = irsa["Fn::Sub"]
    issuer = "oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE"
    assert variables["Issuer"] == {"Fn::Select": [1, {"Fn::Split": [
        ":oidc-provider/", {"Ref": "OidcProviderArn"}]}]}
    params = {"OidcProviderArn": f"arn:aws:iam::111111111111:oidc-provider/{issuer}",
              "Issuer": issuer, "Namespace": "monitoring", "ServiceAccountName": "iam-ke"}
    doc = json.loads(re.sub(r"\$\{(\w+)\}", lambda m: params[m.group(1)], text))
    [st] = doc["Statement"]
    assert st["Principal"] == {"Federated": params["OidcProviderArn"]}
    assert st["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert st["Condition"]["StringEquals"] == {
        f"{issuer}:sub": "system:serviceaccount:monitoring:iam-ke",
        f"{issuer}:aud": "sts.amazonaws.com"}
    # EKS Pod Identity.
    [st] = pod_identity["Statement"]
    assert st["Principal"] == {"Service": "pods.eks.amazonaws.com"}
    assert sorted(st["Action"]) == ["sts:AssumeRole", "sts:TagSession"]


def test_member_role_trusts_only_the_exporter_role() -> None:
    tpl = load(MEMBER_ROLE)
    [st] = role(tpl)["AssumeRolePolicyDocument"]["Statement"]
    assert st["Action"] == "sts:AssumeRole"
    with_id, without_id = st["Condition"]["Fn::If"][1:]
    for cond in (with_id, without_id):
        assert cond["ArnEquals"] == {"aws:PrincipalArn": {"Ref": "ExporterRoleArn"}}
    assert with_id["StringEquals"] == {"sts:ExternalId": {"Ref": "ExternalId"}}
    # StackSet-friendly: every value comes from parameters, nothing names one account.
    params = tpl["Parameters"]
    assert set(params) == {"ExporterRoleArn", "RoleName", "ExternalId"}
    assert params["RoleName"]["Default"] == "iam-key-exporter-member"
    assert not re.search(r"\b\d{12}\b", MEMBER_ROLE.read_text())


def test_default_member_role_name_matches() -> None:
    exporter = load(EXPORTER_ROLE)["Parameters"]["MemberRoleName"]["Default"]
    member = load(MEMBER_ROLE)["Parameters"]["RoleName"]["Default"]
    assert exporter == member


# --------------------------------------------------------------------------------------
# The exporter's role: SQS only on the event queues, only when they are given


def test_exporter_role_reads_the_event_queues_only_when_given() -> None:
    tpl = load(EXPORTER_ROLE)
    params = tpl["Parameters"]
    assert params["QueueArns"]["Default"] == "" == params["DeadLetterQueueArns"]["Default"]
    by_sid: dict[str, Any] = {}
    for pol in role(tpl)["Policies"]:
        for st in pol["PolicyDocument"]["Statement"]:
            if isinstance(st, dict) and "Fn::If" in st:
                cond, yes, no = st["Fn::If"]
                if str(yes.get("Sid", "")).startswith("Events"):
                    assert no == {"Ref": "AWS::NoValue"}
                    by_sid[yes["Sid"]] = (cond, yes)
    assert set(by_sid) == {"EventsQueue", "EventsDeadLetterQueue"}
    conditions = tpl["Conditions"]
    for sid, param, acts in (("EventsQueue", "QueueArns", QUEUE_ACTIONS),
                             ("EventsDeadLetterQueue", "DeadLetterQueueArns", DLQ_ACTIONS)):
        cond, st = by_sid[sid]
        assert conditions[cond] == {"Fn::Not": [{"Fn::Equals": [{"Ref": param}, ""]}]}
        assert set(st["Action"]) == acts and len(st["Action"]) == len(acts)
        assert st["Resource"] == {"Fn::Split": [",", {"Ref": param}]}
    sqs = {a for a in actions(tpl) if a.startswith("sqs:")}
    assert sqs == QUEUE_ACTIONS


@pytest.mark.parametrize(("value", "ok"), [
    ("", True),
    ("arn:aws:sqs:us-east-1:111111111111:iam-key-exporter-events-0", True),
    ("arn:aws:sqs:us-east-1:111111111111:q-0,arn:aws:sqs:us-east-1:111111111111:q-1", True),
    ("https://sqs.us-east-1.amazonaws.com/111111111111/q", False),
    ("arn:aws:sqs:us-east-1:111111111111:*", False),
    ("arn:aws:sqs:us-east-1:111111111111:q,", False),
])
def test_queue_arn_parameters_accept_arn_lists_only(value: str, ok: bool) -> None:
    params = load(EXPORTER_ROLE)["Parameters"]
    for name in ("QueueArns", "DeadLetterQueueArns"):
        pattern = params[name]["AllowedPattern"]
        assert bool(re.fullmatch(pattern, value)) is ok, (name, value)


# --------------------------------------------------------------------------------------
# events.yaml, resolved as CloudFormation would for every supported Replicas value


def evaluate(node: Any, params: dict[str, str], conditions: dict[str, Any]) -> bool:
    if isinstance(node, dict) and len(node) == 1:
        (fn, arg), = node.items()
        if fn == "Condition":
            return evaluate(conditions[arg], params, conditions)
        if fn == "Fn::Not":
            return not evaluate(arg[0], params, conditions)
        if fn == "Fn::And":
            return all(evaluate(a, params, conditions) for a in arg)
        if fn == "Fn::Or":
            return any(evaluate(a, params, conditions) for a in arg)
        if fn == "Fn::Equals":
            a, b = (params[x["Ref"]] if isinstance(x, dict) else str(x) for x in arg)
            return a == b
    raise AssertionError(f"unexpected condition {node!r}")


NO_VALUE = object()


def resolve(node: Any, true: set[str]) -> Any:
    """The template node with Fn::If decided and AWS::NoValue dropped."""
    if isinstance(node, dict):
        if set(node) == {"Fn::If"}:
            cond, yes, no = node["Fn::If"]
            return resolve(yes if cond in true else no, true)
        if node == {"Ref": "AWS::NoValue"}:
            return NO_VALUE
        out = {k: resolve(v, true) for k, v in node.items()}
        return {k: v for k, v in out.items() if v is not NO_VALUE}
    if isinstance(node, list):
        return [v for v in (resolve(x, true) for x in node) if v is not NO_VALUE]
    return node


def stack(path: Path, **params: str) -> dict[str, Any]:
    """The resources and outputs a stack of the template gets with these parameters (the
    defaults otherwise), conditions evaluated."""
    tpl = load(path)
    values = {k: str(v.get("Default", "")) for k, v in tpl["Parameters"].items()}
    values.update(params, **{"AWS::AccountId": "111111111111"})
    conds = tpl.get("Conditions", {})
    true = {c for c in conds if evaluate(conds[c], values, conds)}

    def keep(section: dict[str, Any]) -> dict[str, Any]:
        return {k: resolve(v, true) for k, v in section.items()
                if v.get("Condition") is None or v["Condition"] in true}

    return {"Resources": keep(tpl["Resources"]), "Outputs": keep(tpl.get("Outputs", {}))}


def of_type(resources: dict[str, Any], type_: str) -> dict[str, Any]:
    return {k: v["Properties"] for k, v in resources.items() if v["Type"] == type_}


def test_events_replicas_parameter_covers_what_one_stack_builds() -> None:
    param = load(EVENTS)["Parameters"]["Replicas"]
    assert param["Default"] == 1
    assert param["AllowedValues"] == list(range(1, MAX_REPLICAS + 1))


@pytest.mark.parametrize("replicas", range(1, MAX_REPLICAS + 1))
def test_events_stack_has_a_queue_per_replica_each_fed_by_the_rules(replicas: int) -> None:
    res = stack(EVENTS, Replicas=str(replicas))["Resources"]
    rules, queues = of_type(res, "AWS::Events::Rule"), of_type(res, "AWS::SQS::Queue")
    main = {k: q for k, q in queues.items() if not k.startswith("DeadLetter")}
    assert sorted(main) == sorted(f"Queue{i}" for i in range(replicas))
    # One dead-letter queue per queue, named after it.
    for i in range(replicas):
        q, dlq = main[f"Queue{i}"], queues[f"DeadLetterQueue{i}"]
        assert q["QueueName"] == {"Fn::Sub": f"${{QueueNamePrefix}}-{i}"}
        assert dlq["QueueName"] == {"Fn::Sub": f"${{QueueNamePrefix}}-{i}-dlq"}
        assert q["RedrivePolicy"] == {"deadLetterTargetArn": {"Fn::GetAtt": [
            f"DeadLetterQueue{i}", "Arn"]}, "maxReceiveCount": {"Ref": "MaxReceiveCount"}}
    assert len(queues) == 2 * replicas
    # Every queue is the target of exactly one rule (so it sees every event once), and no
    # rule has more targets than EventBridge allows.
    targets = [t["Arn"]["Fn::GetAtt"][0] for r in rules.values() for t in r["Targets"]]
    assert sorted(targets) == sorted(main)
    assert all(1 <= len(r["Targets"]) <= 5 for r in rules.values())
    assert len(rules) == (replicas + 4) // 5
    for r in rules.values():
        assert r["EventBusName"] == "default" and r["State"] == "ENABLED"
    # The queue policy: EventBridge may send, on behalf of these rules only, to every queue.
    [policy] = of_type(res, "AWS::SQS::QueuePolicy").values()
    assert sorted(q["Ref"] for q in policy["Queues"]) == sorted(main)
    [allow] = [st for st in policy["PolicyDocument"]["Statement"] if st["Effect"] == "Allow"]
    assert allow["Principal"] == {"Service": "events.amazonaws.com"}
    assert allow["Action"] == "sqs:SendMessage"
    assert sorted(a["Fn::GetAtt"][0] for a in allow["Resource"]) == sorted(main)
    assert allow["Condition"] == {"ArnEquals": {"aws:SourceArn": [
        {"Fn::GetAtt": [r, "Arn"]} for r in sorted(rules)]}}
    # The outputs list the queues in shard order.
    outputs = stack(EVENTS, Replicas=str(replicas))["Outputs"]
    assert outputs["QueueUrls"]["Value"] == {"Fn::Join": [
        ",", [{"Ref": f"Queue{i}"} for i in range(replicas)]]}
    assert outputs["QueueArns"]["Value"] == {"Fn::Join": [
        ",", [{"Fn::GetAtt": [f"Queue{i}", "Arn"]} for i in range(replicas)]]}
    assert outputs["DeadLetterQueueArns"]["Value"] == {"Fn::Join": [
        ",", [{"Fn::GetAtt": [f"DeadLetterQueue{i}", "Arn"]} for i in range(replicas)]]}


def event_rules(path: Path) -> list[dict[str, Any]]:
    return [r["Properties"] for r in load(path)["Resources"].values()
            if r["Type"] == "AWS::Events::Rule"]


@pytest.mark.parametrize("path", [EVENTS, EVENTS_MEMBER], ids=lambda p: p.stem)
def test_event_pattern_lists_exactly_the_handled_events(path: Path) -> None:
    rules = event_rules(path)
    assert rules
    for rule in rules:
        pattern = dict(rule["EventPattern"])
        names = pattern["detail"]["eventName"]
        assert set(names) == HANDLED_EVENTS and len(names) == len(HANDLED_EVENTS)
        pattern["detail"] = {**pattern["detail"], "eventName": sorted(names)}
        assert pattern == EVENT_PATTERN


def test_handled_events_are_the_ones_the_code_handles() -> None:
    """Once the events consumer is in exporter/, every event the rules send is one it
    names (an event name it does not know would be consumed for nothing)."""
    text = "\n".join(p.read_text() for p in (ROOT / "exporter").rglob("*.py")
                     if p.name != "demo.py")
    named = {e for e in HANDLED_EVENTS if re.search(rf"[\"']{e}[\"']", text)}
    assert named in (set(), HANDLED_EVENTS), f"the code does not name {HANDLED_EVENTS - named}"


def test_event_queues_are_encrypted_and_outlast_the_exporter_visibility_timeout() -> None:
    params = load(EVENTS)["Parameters"]
    exporter_timeout = EventsConfig().visibility_timeout_seconds
    assert params["VisibilityTimeoutSeconds"]["MinValue"] >= exporter_timeout
    assert params["VisibilityTimeoutSeconds"]["Default"] >= exporter_timeout
    assert params["MaxReceiveCount"]["Default"] >= 2  # a failed re-read is retried
    res = stack(EVENTS, Replicas=str(MAX_REPLICAS))["Resources"]
    for name, q in of_type(res, "AWS::SQS::Queue").items():
        assert q["SqsManagedSseEnabled"] is True, name
        if name.startswith("Queue"):
            assert q["VisibilityTimeout"] == {"Ref": "VisibilityTimeoutSeconds"}
            assert q["MessageRetentionPeriod"] == {"Ref": "MessageRetentionSeconds"}
            assert q["ReceiveMessageWaitTimeSeconds"] == EventsConfig().wait_seconds
        else:  # a dead-letter queue keeps messages longer than its source queue
            assert q["MessageRetentionPeriod"] == params["MessageRetentionSeconds"]["MaxValue"]


CENTRAL_BUS = {"Fn::Sub": "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}"
                          ":event-bus/default"}
MEMBER_TARGET_BUS = {"Fn::Sub": "arn:${AWS::Partition}:events:${AWS::Region}:"
                                "${CentralAccountId}:event-bus/default"}


def test_organization_bus_policy_accepts_the_organization_only_when_given() -> None:
    assert not of_type(stack(EVENTS)["Resources"], "AWS::Events::EventBusPolicy")
    res = stack(EVENTS, OrganizationId="o-exampleorgid")["Resources"]
    [policy] = of_type(res, "AWS::Events::EventBusPolicy").values()
    assert policy["EventBusName"] == "default"
    st = policy["Statement"]
    assert (st["Effect"], st["Principal"], st["Action"]) == ("Allow", "*", "events:PutEvents")
    assert st["Resource"] == CENTRAL_BUS
    assert st["Condition"] == {"StringEquals": {"aws:PrincipalOrgID": {"Ref": "OrganizationId"}}}
    assert all(r["EventBusName"] == "default" for r in event_rules(EVENTS))


def test_member_template_forwards_to_the_central_bus() -> None:
    res = stack(EVENTS_MEMBER, CentralAccountId="222222222222")["Resources"]
    [rule] = of_type(res, "AWS::Events::Rule").values()
    [target] = rule["Targets"]
    assert target["Arn"] == MEMBER_TARGET_BUS
    assert target["RoleArn"] == {"Fn::GetAtt": ["ForwardRole", "Arn"]}
    assert rule["EventBusName"] == "default"
    # The role: EventBridge of this account only, PutEvents on the central bus only.
    role_ = of_type(res, "AWS::IAM::Role")["ForwardRole"]
    [trust] = role_["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "events.amazonaws.com"}
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    [st] = [s for p in role_["Policies"] for s in p["PolicyDocument"]["Statement"]]
    assert (st["Action"], st["Resource"]) == ("events:PutEvents", MEMBER_TARGET_BUS)
    # StackSet-friendly: nothing names an account; no rule in the central account itself
    # (its events are on the central bus already).
    assert not re.search(r"\b\d{12}\b", EVENTS_MEMBER.read_text())
    assert "RoleName" not in role_
    central = stack(EVENTS_MEMBER, CentralAccountId="111111111111")["Resources"]
    assert not of_type(central, "AWS::Events::Rule")


@pytest.mark.parametrize("path", [EVENTS, EVENTS_MEMBER], ids=lambda p: p.stem)
def test_event_templates_deploy_in_us_east_1_only(path: Path) -> None:
    asserts = [a["Assert"] for r in load(path)["Rules"].values() for a in r["Assertions"]]
    assert {"Fn::Equals": [{"Ref": "AWS::Region"}, "us-east-1"]} in asserts


@pytest.mark.parametrize("path", [EVENTS, EVENTS_MEMBER], ids=lambda p: p.stem)
def test_event_templates_explain_the_organization_choice(path: Path) -> None:
    header = path.read_text().split("AWSTemplateFormatVersion")[0]
    header = " ".join(line.lstrip("# ") for line in header.splitlines())
    for phrase in ("organization trail", "StackSet", "us-east-1", "EventBridge"):
        assert phrase in header, phrase
