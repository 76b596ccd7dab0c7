"""EventBridge-shaped bodies of IAM's CloudTrail events, the SQS queues they land in, and
a moto server to hold those queues (scenario 8; tests/events_helpers.py uses the same).

The shapes follow what CloudTrail records for these calls: an administrator names the
user in ``requestParameters.userName``; a user acting on its own keys does not, and is
found in ``responseElements.accessKey.userName`` (CreateAccessKey) or
``userIdentity.userName`` (UpdateAccessKey, DeleteAccessKey).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bench.fakedata import ACCOUNT_ID
from bench.harness import CREDS, ROOT, free_port, stop_process, subprocess_env


def _iso(when: float | None) -> str:
    return datetime.fromtimestamp(time.time() if when is None else when, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def event(name: str, user: str | None = None, *, account: str = ACCOUNT_ID,
          caller: str = "admin", key_id: str | None = None, status: str | None = None,
          self_service: bool = False, error: str | None = None,
          when: float | None = None, **detail: Any) -> dict[str, Any]:
    """One EventBridge event of an IAM call by IAM user ``caller`` on ``user``'s keys or
    on ``user`` itself; ``self_service``: the caller is the user and does not name
    itself. ``detail`` entries are set on the CloudTrail record (None removes one)."""
    params: dict[str, Any] = {}
    if user is not None and not self_service:
        params["userName"] = user
    if key_id is not None:
        params["accessKeyId"] = key_id
    if status is not None:
        params["status"] = status
    response: dict[str, Any] | None = None
    if name == "CreateAccessKey" and error is None:
        response = {"accessKey": {"accessKeyId": key_id or "AKIAEXAMPLE", "status": "Active",
                                  "userName": user, "createDate": "Mar 6, 2024 9:22:54 PM"}}
    elif name == "CreateUser" and error is None:
        response = {"user": {"userName": user, "path": "/", "userId": "AIDAEXAMPLE",
                             "arn": f"arn:aws:iam::{account}:user/{user}"}}
    who = caller if not self_service else user
    record: dict[str, Any] = {
        "eventVersion": "1.08",
        "userIdentity": {"type": "IAMUser", "principalId": "AIDAEXAMPLECALLER",
                         "arn": f"arn:aws:iam::{account}:user/{who}", "accountId": account,
                         "accessKeyId": "AKIAEXAMPLECALLER", "userName": who},
        "eventTime": _iso(when), "eventSource": "iam.amazonaws.com", "eventName": name,
        "awsRegion": "us-east-1", "sourceIPAddress": "192.0.2.1", "userAgent": "aws-cli/2",
        "requestParameters": params or None, "responseElements": response,
        "requestID": str(uuid.uuid4()), "eventID": str(uuid.uuid4()), "readOnly": False,
        "eventType": "AwsApiCall", "managementEvent": True, "recipientAccountId": account,
        "eventCategory": "Management",
    }
    if error is not None:
        record["errorCode"] = error
        record["errorMessage"] = f"User: {who} is not authorized"
    for k, v in detail.items():
        if v is None:
            record.pop(k, None)
        else:
            record[k] = v
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "AWS API Call via CloudTrail",
            "source": "aws.iam", "account": account, "time": record.get("eventTime"),
            "region": "us-east-1", "resources": [], "detail": record}


def body(name: str, user: str | None = None, **kw: Any) -> str:
    return json.dumps(event(name, user, **kw))


# -- the queues ---------------------------------------------------------------------------


def sqs_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"])


@dataclass
class Queues:
    sqs: Any  # an SQS client on the moto server
    url: str
    dlq_url: str

    def send(self, *bodies: str) -> None:
        """Sends the bodies in order, ten to a request."""
        for i in range(0, len(bodies), 10):
            entries = [{"Id": str(n), "MessageBody": b} for n, b in enumerate(bodies[i:i + 10])]
            resp = self.sqs.send_message_batch(QueueUrl=self.url, Entries=entries)
            assert not resp.get("Failed"), resp["Failed"]

    def depth(self, url: str | None = None) -> int:
        """Messages in the queue (default: the main one), visible or in flight."""
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=url or self.url, AttributeNames=[
                "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
        return sum(int(v) for v in attrs["Attributes"].values())


def make_queues(endpoint: str, name: str = "iam-key-exporter-events-0",
                max_receive: int = 2) -> Queues:
    """The events queue and its dead-letter queue, with a redrive policy, on moto."""
    sqs = sqs_client(endpoint)
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])
    policy = {"deadLetterTargetArn": arn["Attributes"]["QueueArn"],
              "maxReceiveCount": max_receive}
    url = sqs.create_queue(QueueName=name,
                           Attributes={"RedrivePolicy": json.dumps(policy)})["QueueUrl"]
    return Queues(sqs, url, dlq)


class MotoServer:
    """moto's server (threaded) in its own process, so that its CPU does not share a GIL
    with the benchmark: ``url``; ``wait()`` until it listens; ``stop()``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)

    def wait(self, timeout: float = 30.0) -> MotoServer:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto server not listening after {timeout:g}s"
                                       ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc, grace=10)

    def __enter__(self) -> MotoServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
