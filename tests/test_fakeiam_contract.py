"""The benchmarks' fake IAM (bench/fakeiam.py) answers as moto does, so it cannot drift.

The same small estate is loaded into moto (through the API) and into the fake (read back
from moto: same names, paths, ids, tags and dates), and the exporter's own `once` command
collects each. Every per-user and per-account series must be identical, and so must the
API calls the exporter made. What legitimately differs, and is normalised:

- iam_credential_report_generated_timestamp_seconds: moto's report always says it was
  generated on 2015-02-02; the fake (like AWS) gives the real generation time. Both must
  be present; their values are not compared.
- moto's credential report has no <root_account> row; the fake's has one (AWS always
  writes it). The exporter reads root keys from GetAccountSummary, where both agree, so
  no series differs.
- Self-metrics that measure the run (durations, timestamps) are not compared.
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from bench.fakeiam import Dataset, FakeIam
from tests.daemon import CONSOLE_SCRIPT, parse_samples
from tests.helpers import (
    MOTO_ACCOUNT,
    ROOT,
    add_user,
    aws,
    creds_in,
    iam_client,
    subprocess_env,
)

MEMBER = "111111111111"  # a second account, reached through AssumeRole
ROLE = f"arn:aws:iam::{MEMBER}:role/iam-key-exporter"

# Families compared sample by sample.
COMPARED = (
    "iam_user_access_keys", "iam_access_key_created_timestamp_seconds",
    "iam_access_key_last_used_timestamp_seconds", "iam_user_info", "iam_account_users",
    "iam_root_access_keys_present", "iam_account_access_keys",
    "iam_account_users_with_multiple_active_keys", "iam_account_watched_users",
    "iam_account_info", "iam_exporter_collection_success", "iam_exporter_aws_api_calls_total",
    "iam_exporter_aws_api_errors_total",
)
PRESENT_ONLY = ("iam_credential_report_generated_timestamp_seconds",)

ESTATE: list[tuple[str, str, dict[str, str], tuple[str, ...]]] = [
    ("alice", "/", {"Team": "payments"}, ("Active",)),
    ("bob", "/", {"Team": "platform"}, ("Active", "Active")),
    ("carol", "/engineering/", {"Team": "data"}, ("Active", "Inactive")),
    ("dave", "/", {}, ()),
    ("erin@example.com", "/ops/oncall/", {"Team": "ops"}, ("Inactive",)),
    ("frank.o+ops=1,2", "/ops/", {"Team": "ops"}, ("Active",)),
    ("svc-exempt", "/service/", {"iam-key-exporter/exempt": "true"}, ("Active", "Active")),
]


def dataset_from(iam: Any, account_id: str = MOTO_ACCOUNT) -> Dataset:
    """What moto holds, as a fake dataset (ids and dates included)."""
    users = []
    for page in iam.get_paginator("list_users").paginate():
        for u in page["Users"]:
            keys = iam.list_access_keys(UserName=u["UserName"])["AccessKeyMetadata"]
            tags = iam.list_user_tags(UserName=u["UserName"])["Tags"]
            users.append({
                "name": u["UserName"], "path": u["Path"], "user_id": u["UserId"],
                "created": u["CreateDate"].timestamp(),
                "tags": {t["Key"]: t["Value"] for t in tags},
                "keys": [{"key_id": k["AccessKeyId"], "status": k["Status"],
                          "created": k["CreateDate"].timestamp()} for k in keys]})
    return Dataset.from_json({"account_id": account_id, "users": users})


def once(endpoint: str, strategy: str, tmp: Path, **extra: Any) -> dict[Any, float]:
    cfg = tmp / f"{strategy}-{endpoint.rsplit(':', 1)[1]}.yaml"
    cfg.write_text(yaml.safe_dump({
        "aws": {"endpoint_url": endpoint},
        "collection": {"strategy": strategy},
        "metrics": {"user_tags": {"Team": "team"}},
        "log_level": "warning",
        **extra,
    }))
    r = subprocess.run([str(CONSOLE_SCRIPT), "once", "--config", str(cfg)], cwd=ROOT,
                       env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return parse_samples(r.stdout)


def select(samples: dict[Any, float], families: tuple[str, ...]) -> dict[Any, float]:
    return {k: v for k, v in samples.items() if k[0] in families}


def seed(iam: Any) -> None:
    for name, path, tags, statuses in ESTATE:
        add_user(iam, name, statuses, path=path, tags=tags)


def compare(theirs: dict[Any, float], ours: dict[Any, float]) -> None:
    assert theirs == ours, {
        "only in moto": {k: v for k, v in theirs.items() if ours.get(k) != v},
        "only in fake": {k: v for k, v in ours.items() if theirs.get(k) != v}}


@pytest.fixture
def estate(iam: Any, tmp_path: Path) -> tuple[Path, Dataset]:
    seed(iam)
    data = dataset_from(iam)
    out = tmp_path / "dataset.json"
    out.write_text(json.dumps(data.to_json()))
    return out, data


@pytest.mark.e2e
@pytest.mark.parametrize("strategy", ["list", "credential-report"])
def test_exporter_sees_the_same_through_moto_and_the_fake(
        moto: str, estate: tuple[Path, Dataset], strategy: str, tmp_path: Path) -> None:
    path, data = estate
    with FakeIam(dataset=path, latency_ms=0) as fake:
        from_fake = once(fake.url, strategy, tmp_path)
        fake_calls = fake.stats()["requests"]
    from_moto = once(moto, strategy, tmp_path)

    theirs, ours = select(from_moto, COMPARED), select(from_fake, COMPARED)
    compare(theirs, ours)
    for name in PRESENT_ONLY:
        assert select(from_moto, (name,)) and select(from_fake, (name,)), name

    # The comparison is not vacuous: the families are there (moto's keys were never used
    # and nothing failed, so those two are rightly absent), every user and key is there,
    # with its tag label.
    absent = {"iam_access_key_last_used_timestamp_seconds", "iam_exporter_aws_api_errors_total"}
    assert {k[0] for k in ours} == set(COMPARED) - absent
    keys = {dict(k[1])["user_name"]: v for k, v in ours.items()
            if k[0] == "iam_user_access_keys" and dict(k[1])["status"] == "Active"}
    assert keys == {u.name: data.truth()[u.name]["Active"] for u in data.users}
    info = {dict(k[1])["user_name"]: dict(k[1]) for k in ours if k[0] == "iam_user_info"}
    assert info["carol"]["team"] == "data" and info["carol"]["path"] == "/engineering/"
    assert info["svc-exempt"]["exempt"] == "true" and info["dave"]["team"] == ""
    # The fake counted what the exporter says it called.
    said = {dict(k[1])["operation"]: v for k, v in ours.items()
            if k[0] == "iam_exporter_aws_api_calls_total" and dict(k[1])["service"] == "iam"}
    assert {op: n for op, n in fake_calls.items() if op != "GetCallerIdentity"} == said


@pytest.mark.e2e
def test_errors_have_the_same_shape(moto: str, aws_env: dict[str, str]) -> None:
    with FakeIam(users=3, latency_ms=0) as fake:
        for url in (moto, fake.url):
            iam = boto3.client("iam", endpoint_url=url)
            with pytest.raises(ClientError) as err:
                iam.list_access_keys(UserName="nobody")
            assert err.value.response["Error"]["Code"] == "NoSuchEntity"
            assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
            assert err.value.response["ResponseMetadata"]["RequestId"]


def _client(url: str, attempts: int = 1) -> Any:
    return iam_client(url, config=BotoConfig(retries={"total_max_attempts": attempts,
                                                      "mode": "standard"}))


@pytest.mark.e2e
def test_fake_paginates_like_aws_where_moto_does_not() -> None:
    """moto ignores MaxItems; the fake honours it (AWS caps it at 1,000, default 100)."""
    data = Dataset.generate(2345, seed=3)
    with FakeIam(users=2345, seed=3, latency_ms=0) as fake:
        iam = _client(fake.url)
        first = iam.list_users(MaxItems=1000)
        assert len(first["Users"]) == 1000 and first["IsTruncated"] and first["Marker"]
        assert len(iam.list_users()["Users"]) == 100  # AWS's default page
        names = [u["UserName"] for p in iam.get_paginator("list_users").paginate(
            PaginationConfig={"PageSize": 1000}) for u in p["Users"]]
        assert names == [u.name for u in data.users]
        details = [u for p in iam.get_paginator("get_account_authorization_details").paginate(
            Filter=["User"], PaginationConfig={"PageSize": 1000}) for u in p["UserDetailList"]]
        assert [u["UserName"] for u in details] == names
        tagged = {u["UserName"]: {t["Key"]: t["Value"] for t in u.get("Tags", [])}
                  for u in details}
        assert tagged == {u.name: u.tags for u in data.users}
        counts = fake.stats()["requests"]
        assert counts["ListUsers"] == 2 + 3 and counts["GetAccountAuthorizationDetails"] == 3


@pytest.mark.e2e
def test_fake_throttles_and_counts() -> None:
    with FakeIam(users=5, latency_ms=0, throttle=1.0) as fake:
        with pytest.raises(ClientError) as err:
            _client(fake.url).list_users()
        assert err.value.response["Error"]["Code"] == "Throttling"
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        fake.configure(throttle=0.0)
        _client(fake.url).list_access_keys(UserName="user-000001")
        stats = fake.stats()
        assert stats["requests"] == {"ListUsers": 1, "ListAccessKeys": 1}
        assert stats["throttled"] == {"ListUsers": 1}


def _two_accounts(path: Path, member: Dataset) -> Path:
    """A fake estate: an empty default account and the member account."""
    path.write_text(json.dumps({"accounts": [Dataset([], account_id=MOTO_ACCOUNT).to_json(),
                                             member.to_json()]}))
    return path


def _as(creds: dict[str, Any]) -> dict[str, str]:
    return {"aws_access_key_id": creds["AccessKeyId"],
            "aws_secret_access_key": creds["SecretAccessKey"],
            "aws_session_token": creds["SessionToken"]}


@pytest.mark.e2e
def test_assume_role_and_caller_identity_answer_like_moto(
        moto: str, aws_env: dict[str, str], tmp_path: Path) -> None:
    member = Dataset.generate(2, account_id=MEMBER)
    with FakeIam(dataset=_two_accounts(tmp_path / "d.json", member), latency_ms=0) as fake:
        for url in (moto, fake.url):
            got = aws("sts", url).assume_role(RoleArn=ROLE, RoleSessionName="bench")
            creds, user = got["Credentials"], got["AssumedRoleUser"]
            assert set(creds) == {"AccessKeyId", "SecretAccessKey", "SessionToken",
                                  "Expiration"}, url
            assert creds["AccessKeyId"].startswith("ASIA") and len(creds["AccessKeyId"]) == 20
            assert creds["Expiration"] > datetime.now(UTC)
            assert user["Arn"] == f"arn:aws:sts::{MEMBER}:assumed-role/iam-key-exporter/bench"
            assert user["AssumedRoleId"].startswith("AROA")
            assert user["AssumedRoleId"].endswith(":bench")
            me = aws("sts", url, _as(creds)).get_caller_identity()
            assert (me["Account"], me["Arn"]) == (MEMBER, user["Arn"]), url
            # AWS answers the AssumedRoleId here; moto a role id of its own, same shape.
            assert me["UserId"].startswith("AROA") and me["UserId"].endswith(":bench"), url
            assert aws("sts", url).get_caller_identity()["Account"] == MOTO_ACCOUNT, url


@pytest.mark.e2e
def test_exporter_sees_the_same_member_account_through_moto_and_the_fake(
        moto: str, aws_env: dict[str, str], tmp_path: Path) -> None:
    """The account comes from the assumed role's credentials, in moto and in the fake:
    the default account is empty in both, the member holds the estate."""
    seed(aws("iam", moto, creds_in(moto, MEMBER)))
    member = dataset_from(aws("iam", moto, creds_in(moto, MEMBER)), MEMBER)
    accounts = {"accounts": [{"role_arn": ROLE, "name": "member"}]}
    with FakeIam(dataset=_two_accounts(tmp_path / "d.json", member), latency_ms=0) as fake:
        ours = select(once(fake.url, "list", tmp_path, **accounts), COMPARED)
        by_account = fake.stats()["accounts"]
    theirs = select(once(moto, "list", tmp_path, **accounts), COMPARED)
    compare(theirs, ours)
    keys = {dict(k[1])["user_name"]: v for k, v in ours.items()
            if k[0] == "iam_user_access_keys" and dict(k[1])["status"] == "Active"}
    assert keys == {u.name: member.truth()[u.name]["Active"] for u in member.users}
    assert {dict(k[1])["account_id"] for k in ours if k[0] == "iam_user_access_keys"} == {
        MEMBER}
    assert by_account[MOTO_ACCOUNT]["requests"] == 0 and by_account[MEMBER]["requests"] > 0


def _burst(iam: Any, n: int) -> int:
    """Sends n requests at once; how many were answered (the rest throttled)."""
    ok = 0
    for _ in range(n):
        try:
            iam.list_users()
            ok += 1
        except ClientError as e:
            assert e.response["Error"]["Code"] == "Throttling"
            assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    return ok


@pytest.mark.e2e
def test_fake_throttles_by_rate_per_account(aws_env: dict[str, str]) -> None:
    """A token bucket per account, as IAM's quota: the burst goes through, then the
    rate; one account's traffic leaves the other's bucket alone."""
    with FakeIam(users=3, accounts=2, latency_ms=0, quota_rate=5, quota_burst=5) as fake:
        roles = [f"arn:aws:iam::21000000000{i}:role/r" for i in (0, 1)]
        once_only = BotoConfig(retries={"total_max_attempts": 1, "mode": "standard"})
        iams = [boto3.client("iam", endpoint_url=fake.url, region_name="us-east-1",
                             config=once_only, **_as(aws("sts", fake.url).assume_role(
                                 RoleArn=r, RoleSessionName="bench")["Credentials"]))
                for r in roles]
        first = _burst(iams[0], 10)
        assert 5 <= first <= 6  # the burst, and maybe one token refilled meanwhile
        assert _burst(iams[1], 5) == 5
        time.sleep(1.0)
        assert 4 <= _burst(iams[0], 5) <= 5
        acct = fake.stats()["accounts"]
        assert acct["210000000000"]["throttled"] >= 4
        assert (acct["210000000001"]["requests"], acct["210000000001"]["throttled"]) == (5, 0)
        fake.configure(quota_rate=0)
        assert _burst(iams[0], 20) == 20
        fake.configure(quota_rate=2, quota_burst=3)
        assert _burst(iams[1], 5) == 3
