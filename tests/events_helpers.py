"""EventBridge-shaped bodies of IAM's CloudTrail events, and the SQS queues they land in.

The shapes follow what CloudTrail records for these calls: an administrator names the
user in ``requestParameters.userName``; a user acting on its own keys does not, and is
found in ``responseElements.accessKey.userName`` (CreateAccessKey) or
``userIdentity.userName`` (UpdateAccessKey, DeleteAccessKey).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tests.helpers import MOTO_ACCOUNT, aws


def _iso(when: float | None) -> str:
    return datetime.fromtimestamp(time.time() if when is None else when, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def event(name: str, user: str | None = None, *, account: str = MOTO_ACCOUNT,
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
    sqs = aws("sqs", endpoint)
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])
    policy = {"deadLetterTargetArn": arn["Attributes"]["QueueArn"],
              "maxReceiveCount": max_receive}
    url = sqs.create_queue(QueueName=name,
                           Attributes={"RedrivePolicy": json.dumps(policy)})["QueueUrl"]
    return Queues(sqs, url, dlq)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, every: float = 0.05,
               what: str | Callable[[], str] = "condition") -> Any:
    """predicate()'s first truthy value; fails after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what if isinstance(what, str) else what()} "
                                 f"not met in {timeout}s")
        time.sleep(every)


def bodies(names: Iterable[tuple[str, str]], **kw: Any) -> list[str]:
    """Bodies of (event name, user) pairs with the same keyword arguments."""
    return [body(n, u, **kw) for n, u in names]
