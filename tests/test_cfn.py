"""CloudFormation for the exporter's roles: cfn-lint clean, and the same actions as the
shipped IAM policy (deploy/aws/iam-policy.json, itself checked against the code's calls
by test_policy.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import cfn_yaml

from tests.helpers import ROOT

AWS = ROOT / "deploy" / "aws"
EXPORTER_ROLE, MEMBER_ROLE = AWS / "exporter-role.yaml", AWS / "member-role.yaml"
# Beyond the policy of one account, the exporter's own role assumes the member roles.
EXPORTER_ONLY = {"sts:AssumeRole"}


def policy_actions() -> set[str]:
    doc = json.loads((AWS / "iam-policy.json").read_text())
    out: set[str] = set()
    for st in doc["Statement"]:
        acts = st["Action"]
        out.update([acts] if isinstance(acts, str) else acts)
    return out


def load(path: Path) -> Any:
    return cfn_yaml.load(str(path))


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
    r = subprocess.run([str(cfn_lint), str(EXPORTER_ROLE), str(MEMBER_ROLE)],
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
