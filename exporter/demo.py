"""``demo``: an embedded fake AWS account (moto) with sample users and an events queue,
for a first look.

``python -m exporter.demo add-key USER`` (while the demo runs) creates a key for USER in
the fake account and sends its CloudTrail event to the demo's queue, as EventBridge
would: the new key is on /metrics within a second, long before the next poll. It finds
the demo through the file the demo writes ($TMPDIR/iam-key-exporter-demo.json, or
$IAM_KEY_EXPORTER_DEMO_STATE).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
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


def _client(service: str, endpoint: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint,  # type: ignore[call-overload]
                        region_name="us-east-1", aws_access_key_id="demo",
                        aws_secret_access_key="demo")


def seed(endpoint: str) -> None:
    iam = _client("iam", endpoint)
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


QUEUE = "iam-key-exporter-events-0"
STATE_VAR = "IAM_KEY_EXPORTER_DEMO_STATE"


def events_queue(endpoint: str) -> str:
    """The events queue, with a dead-letter queue after 5 receives (as deploy/aws
    sets it up); returns its URL."""
    sqs = _client("sqs", endpoint)
    dlq = sqs.create_queue(QueueName=f"{QUEUE}-dlq")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])
    policy = {"deadLetterTargetArn": arn["Attributes"]["QueueArn"], "maxReceiveCount": 5}
    return str(sqs.create_queue(QueueName=QUEUE, Attributes={
        "RedrivePolicy": json.dumps(policy)})["QueueUrl"])


def state_path() -> str:
    return os.environ.get(STATE_VAR) or os.path.join(tempfile.gettempdir(),
                                                     "iam-key-exporter-demo.json")


def write_state(endpoint: str, queue_url: str) -> str | None:
    """Where add-key finds the demo; None when it cannot be written (no add-key then)."""
    path = state_path()
    try:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump({"endpoint": endpoint, "queue_url": queue_url, "pid": os.getpid()}, fh)
    except OSError:
        return None
    return path


def remove_state() -> None:
    """Removes the state file if this process wrote it (another demo may have since)."""
    path = state_path()
    try:
        with open(path, encoding="utf-8") as fh:
            if json.load(fh).get("pid") == os.getpid():
                os.remove(path)
    except (OSError, ValueError, AttributeError):
        pass


def cloudtrail_event(name: str, user: str, account: str, key_id: str) -> dict[str, Any]:
    """An EventBridge event of an IAM call, as EventBridge delivers it to SQS."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "version": "0", "id": str(uuid.uuid4()), "detail-type": "AWS API Call via CloudTrail",
        "source": "aws.iam", "account": account, "time": now, "region": "us-east-1",
        "resources": [],
        "detail": {
            "eventVersion": "1.08", "eventTime": now, "eventSource": "iam.amazonaws.com",
            "eventName": name, "awsRegion": "us-east-1",
            "userIdentity": {"type": "IAMUser", "accountId": account, "userName": "demo"},
            "requestParameters": {"userName": user},
            "responseElements": {"accessKey": {"accessKeyId": key_id, "status": "Active",
                                               "userName": user}},
            "eventType": "AwsApiCall", "recipientAccountId": account,
        },
    }


def add_key(user: str) -> int:
    """Creates a key for user in the running demo's fake account and sends the event."""
    try:
        with open(state_path(), encoding="utf-8") as fh:
            state = json.load(fh)
        endpoint, queue_url = state["endpoint"], state["queue_url"]
    except (OSError, ValueError, KeyError, TypeError):
        print(f"no running demo found ({state_path()}): start it with `make demo`",
              file=sys.stderr)
        return 1
    iam = _client("iam", endpoint)
    try:
        key = iam.create_access_key(UserName=user)["AccessKey"]["AccessKeyId"]
    except iam.exceptions.NoSuchEntityException:
        print(f"no user {user!r} in the demo account", file=sys.stderr)
        return 1
    except iam.exceptions.LimitExceededException:
        print(f"{user} already has 2 keys, IAM's limit", file=sys.stderr)
        return 1
    account = _client("sts", endpoint).get_caller_identity()["Account"]
    event = cloudtrail_event("CreateAccessKey", user, account, key)
    _client("sqs", endpoint).send_message(QueueUrl=queue_url, MessageBody=json.dumps(event))
    print(f"created {key} for {user} and sent its CreateAccessKey event; see "
          f"iam_user_access_keys{{user_name=\"{user}\"}} on /metrics")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "add-key":
        print("usage: python -m exporter.demo add-key USER", file=sys.stderr)
        return 2
    return add_key(args[1])


if __name__ == "__main__":
    sys.exit(main())
