"""``demo``: an embedded fake AWS account (moto) with sample users, for a first look."""

from __future__ import annotations

import os
import socket
from typing import Any

import boto3

DEMO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "demo",
    "AWS_SECRET_ACCESS_KEY": "demo",  # moto accepts any credentials
    "AWS_REGION": "us-east-1",
}

# user name, path, tags, key statuses
SAMPLE_USERS: list[tuple[str, str, dict[str, str], tuple[str, ...]]] = [
    ("alice", "/", {"Team": "payments"}, ("Active",)),
    ("bob", "/", {"Team": "platform"}, ("Active", "Active")),
    ("carol", "/engineering/", {"Team": "data"}, ("Active", "Inactive")),
    ("dave", "/", {"Team": "payments"}, ()),
    # Exempt: two active keys on purpose (a documented exception), so no alert.
    ("svc-ci-deployer", "/service/",
     {"Team": "platform", "Owner": "ci", "iam-key-exporter/exempt": "true"},
     ("Active", "Active")),
    ("erin@example.com", "/", {}, ("Inactive",)),
    ("frank.o+ops=1,2", "/ops/", {"Team": "ops"}, ("Active",)),
]


class DemoUnavailable(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_fake_aws() -> tuple[Any, str]:
    """Starts moto's server on loopback; returns (server, endpoint URL)."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as e:
        raise DemoUnavailable(
            f"the demo needs moto's server ({e.name} is missing): "
            "pip install 'iam-key-exporter[demo]'") from None
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"


def seed(endpoint: str) -> None:
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="demo", aws_secret_access_key="demo")
    for name, path, tags, statuses in SAMPLE_USERS:
        iam.create_user(UserName=name, Path=path,
                        Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        for status in statuses:
            key = iam.create_access_key(UserName=name)["AccessKey"]
            if status == "Inactive":
                iam.update_access_key(UserName=name, AccessKeyId=key["AccessKeyId"],
                                      Status="Inactive")


def use_demo_credentials() -> None:
    """Points this process (and gunicorn's worker) at the fake account only."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        os.environ.pop(var, None)
    os.environ.update(DEMO_CREDENTIALS)
