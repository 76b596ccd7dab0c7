"""Accounts reached through sts:AssumeRole (moto keeps each account's IAM apart)."""

from __future__ import annotations

from typing import Any

import boto3

from tests.daemon import parse_samples, sample
from tests.helpers import FAKE_ENV, add_user
from tests.test_cli import run_cli


def assumed_iam(endpoint: str, account: str) -> Any:
    sts = boto3.client("sts", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id=FAKE_ENV["AWS_ACCESS_KEY_ID"],
                       aws_secret_access_key=FAKE_ENV["AWS_SECRET_ACCESS_KEY"])
    creds = sts.assume_role(RoleArn=f"arn:aws:iam::{account}:role/seed",
                            RoleSessionName="seed")["Credentials"]
    return boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=creds["AccessKeyId"],
                        aws_secret_access_key=creds["SecretAccessKey"],
                        aws_session_token=creds["SessionToken"])


def test_each_listed_account_is_collected_through_its_role(
        moto: str, aws_env: dict[str, str], tmp_path: Any) -> None:
    add_user(assumed_iam(moto, "111111111111"), "prod-user", ("Active", "Active"))
    add_user(assumed_iam(moto, "222222222222"), "dev-user", ("Inactive",))
    r = run_cli("once", tmp_path=tmp_path, config={
        "aws": {"endpoint_url": moto},
        "accounts": [
            {"role_arn": "arn:aws:iam::111111111111:role/iam-key-exporter", "name": "prod",
             "external_id": "xid-123"},
            {"role_arn": "arn:aws:iam::222222222222:role/iam-key-exporter", "name": "dev"},
        ]})
    assert r.returncode == 0, r.stderr
    s = parse_samples(r.stdout)
    assert sample(s, "iam_user_access_keys", account_id="111111111111",
                  user_name="prod-user", status="Active") == 2
    assert sample(s, "iam_user_access_keys", account_id="222222222222",
                  user_name="dev-user", status="Inactive") == 1
    # Each account sees only its own users.
    assert sample(s, "iam_user_access_keys", account_id="111111111111",
                  user_name="dev-user", status="Active") is None
    assert sample(s, "iam_account_info", account_id="111111111111", account_name="prod") == 1
    assert sample(s, "iam_account_info", account_id="222222222222", account_name="dev") == 1
    for acct in ("111111111111", "222222222222"):
        assert sample(s, "iam_exporter_collection_success", account_id=acct) == 1
        # Role sessions need no GetCallerIdentity: the id is in the role ARN.
        assert sample(s, "iam_exporter_aws_api_calls_total", account_id=acct, service="sts",
                      operation="GetCallerIdentity") is None
