"""Shared test helpers: tools, ports, config building and a moto seeding client."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from bench.harness import CREDS, load_config
from bench.harness import ROOT as ROOT  # re-exported: tests import these from here
from bench.harness import free_port as free_port
from bench.harness import subprocess_env as subprocess_env
from exporter import config

TESTDATA = Path(__file__).resolve().parent / "testdata"
# Fake credentials, and nothing that could reach real AWS or a developer's own profile.
ISOLATED_ENV = CREDS
FAKE_ENV = {k: CREDS[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
                                  "AWS_DEFAULT_REGION")}
MOTO_ACCOUNT = "123456789012"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_binary(name: str) -> str:
    """Path of an external tool; a missing tool fails under CI=true and skips elsewhere."""
    path = shutil.which(name)
    if path:
        return path
    msg = f"{name} is not installed (run: bash .ci/install-tools)"
    if in_ci():
        pytest.fail(msg)
    pytest.skip(msg)  # only outside CI, see the guard above
    raise AssertionError("unreachable")


def promtool_check_metrics(text: bytes | str) -> subprocess.CompletedProcess[str]:
    """Runs `promtool check metrics` on an exposition; returns the completed process."""
    data = text.decode() if isinstance(text, bytes) else text
    return subprocess.run([require_binary("promtool"), "check", "metrics"], input=data,
                          capture_output=True, text=True, timeout=60)


# IAM requests per second the tests allow the exporter (aws.max_requests_per_second):
# far above the default of 10, so that tests making many IAM calls stay fast. Tests of
# the request budget itself set their own.
TEST_BUDGET = 1000


def make_config(**overrides: Any) -> config.Config:
    """A Config from nested keyword data, through the real loader (so it is validated),
    with the request budget at TEST_BUDGET unless aws.max_requests_per_second is given."""
    aws = overrides.get("aws")
    if aws is None or isinstance(aws, dict):
        overrides = {**overrides, "aws": {"max_requests_per_second": TEST_BUDGET,
                                          **(aws or {})}}
    return load_config(overrides)


def reset_moto(url: str) -> None:
    """Empties the moto server at url (every account, every service)."""
    requests.post(f"{url}/moto-api/reset", timeout=10).raise_for_status()


def iam_client(endpoint: str, **kw: Any) -> Any:
    """An IAM client on endpoint with the fake credentials; kw go to boto3.client."""
    return boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=FAKE_ENV["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=FAKE_ENV["AWS_SECRET_ACCESS_KEY"], **kw)


def add_user(iam: Any, name: str, statuses: tuple[str, ...] = (), path: str = "/",
             tags: dict[str, str] | None = None) -> list[str]:
    """Creates a user with keys in the given statuses; returns the key ids."""
    kwargs: dict[str, Any] = {"UserName": name, "Path": path}
    if tags:
        kwargs["Tags"] = [{"Key": k, "Value": v} for k, v in tags.items()]
    iam.create_user(**kwargs)
    ids = []
    for status in statuses:
        key = iam.create_access_key(UserName=name)["AccessKey"]["AccessKeyId"]
        if status == "Inactive":
            iam.update_access_key(UserName=name, AccessKeyId=key, Status="Inactive")
        ids.append(key)
    return ids


BASE_CREDS = {"aws_access_key_id": FAKE_ENV["AWS_ACCESS_KEY_ID"],
              "aws_secret_access_key": FAKE_ENV["AWS_SECRET_ACCESS_KEY"]}


def aws(service: str, endpoint: str, creds: dict[str, str] | None = None) -> Any:
    """A boto3 client on the moto server, with the fake credentials or the given ones."""
    return boto3.client(service, endpoint_url=endpoint,  # type: ignore[call-overload]
                        region_name="us-east-1", **(creds or BASE_CREDS))


def creds_in(endpoint: str, account_id: str, session: str = "seed") -> dict[str, str]:
    """Credentials that moto treats as account ``account_id`` (an assumed role there)."""
    c = aws("sts", endpoint).assume_role(
        RoleArn=f"arn:aws:iam::{account_id}:role/OrganizationAccountAccessRole",
        RoleSessionName=session)["Credentials"]
    return {"aws_access_key_id": c["AccessKeyId"], "aws_secret_access_key": c["SecretAccessKey"],
            "aws_session_token": c["SessionToken"]}


def daemon_config(endpoint: str, interval: float = 1, **aws: Any) -> dict[str, Any]:
    """A daemon config against a (proxied) fake AWS: one attempt, short timeouts, and a
    request budget (TEST_BUDGET) that never slows a test down."""
    return {"interval_seconds": interval,
            "aws": {"endpoint_url": endpoint, "max_attempts": 1,
                    "connect_timeout_seconds": 1, "read_timeout_seconds": 3,
                    "max_requests_per_second": TEST_BUDGET, **aws}}
