"""EventBridge-shaped bodies of IAM's CloudTrail events, the SQS queues they land in, and
what a consumer and its poller made of them.

The shapes follow what CloudTrail records for these calls: an administrator names the
user in ``requestParameters.userName``; a user acting on its own keys does not, and is
found in ``responseElements.accessKey.userName`` (CreateAccessKey) or
``userIdentity.userName`` (UpdateAccessKey, DeleteAccessKey).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from exporter.aws.accounts import AccountSet
from exporter.aws.session import ApiStats
from exporter.config import Config
from exporter.events.consumer import Consumer
from exporter.inventory import User
from exporter.poller import Poller
from tests.awsproxy import AwsProxy
from tests.daemon import parse_samples
from tests.helpers import MOTO_ACCOUNT, aws, make_config

A = MOTO_ACCOUNT


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


# --- an in-process poller and consumer on the (proxied) moto server ---------------------


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config(endpoint: str, queues: Queues, **extra: Any) -> Config:
    return make_config(**merge({
        "aws": {"endpoint_url": endpoint, "max_attempts": 1},
        "collection": {"last_used": "off"},
        "events": {"queue_url": queues.url, "wait_seconds": 1,
                   "visibility_timeout_seconds": 1},
    }, extra))


class Runner:
    """Builds a poller (first cycle done) and its consumer (started unless start=False);
    counts the IAM calls of this process (ApiStats: immune to other processes' traffic
    through a reused proxy port)."""

    def __init__(self, proxy: AwsProxy, queues: Queues) -> None:
        self.proxy, self.queues = proxy, queues
        self.consumers: list[Consumer] = []
        self.stats = ApiStats()

    def __call__(self, start: bool = True, **extra: Any) -> tuple[Poller, Consumer]:
        cfg = config(self.proxy.url, self.queues, **extra)
        poller = Poller(cfg, AccountSet(cfg, self.stats))
        snap = poller.run_cycle()
        assert all(a.success for a in snap.accounts), snap.accounts
        consumer = Consumer(cfg, poller, dead_letter_every=0.5)
        self.consumers.append(consumer)
        if start:
            consumer.start()
        return poller, consumer

    def iam_calls(self) -> Counter[str]:
        """IAM calls so far by operation (after retries)."""
        out: Counter[str] = Counter()
        for (_, service, operation), n in self.stats.counts().calls.items():
            if service == "iam":
                out[operation] += n
        return out


# --- what a consumer and its poller did --------------------------------------------


def keys(poller: Poller, user: str, account: str = A) -> dict[str, int] | None:
    """{status: keys} of the user as served, None when it is not served."""
    u = served(poller, user, account)
    return None if u is None else {s: u.count(s) for s in ("Active", "Inactive") if u.count(s)}


def served(poller: Poller, user: str, account: str = A) -> User | None:
    for st in poller.snapshot.accounts:
        if st.account_id == account and st.inventory is not None:
            for u in st.inventory.users:
                if u.name == user:
                    return u
    return None


def the(poller: Poller, user: str) -> User:
    u = served(poller, user)
    assert u is not None, f"{user} is not served"
    return u


def results(c: Consumer) -> dict[str, int]:
    return {r: c.stats.count(r) for r in ("applied", "ignored", "invalid", "failed")}


def settled(c: Consumer, queues: Queues, **want: int) -> Callable[[], bool]:
    """The consumer counted at least these results and the queue is empty."""
    return lambda: all(c.stats.count(r) >= n for r, n in want.items()) and not queues.depth()


def metrics(c: Consumer) -> dict[Any, float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(c.stats)
    return parse_samples(generate_latest(registry).decode())
