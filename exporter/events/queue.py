"""The SQS side: the client, receiving, deleting, and the dead-letter queue's depth."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config as BotoConfig

from exporter import __version__
from exporter.aws.session import core_session, harden
from exporter.config import Config

log = logging.getLogger("exporter.events")

BATCH = 10  # SQS's most messages per ReceiveMessage and per DeleteMessageBatch
ATTRIBUTES = ["SentTimestamp", "ApproximateReceiveCount"]
# sqs.<region>.amazonaws.com (and its VPC endpoint names), or the legacy
# <region>.queue.amazonaws.com.
_REGION_RES = (re.compile(r"(?:^|\.)sqs[.-]([a-z]{2}(?:-[a-z]+)+-\d+)\.", re.ASCII),
               re.compile(r"^([a-z]{2}(?:-[a-z]+)+-\d+)\.queue\.amazonaws\.com", re.ASCII))
_ARN_NAME_RE = re.compile(r"^arn:aws[a-z-]*:sqs:[a-z0-9-]+:\d{12}:([\w.-]{1,80})\Z", re.ASCII)

Message = dict[str, Any]


def region_of(queue_url: str, default: str) -> str:
    """The region in the queue URL's host, else default (a local fake's URL)."""
    host = urlsplit(queue_url).hostname or ""
    for pattern in _REGION_RES:
        m = pattern.search(host)
        if m:
            return m.group(1)
    return default


def client(cfg: Config, queue_url: str) -> Any:
    """An SQS client from the exporter's own credentials (the default chain), at
    aws.endpoint_url like every other service. The read timeout outlasts a long poll."""
    region = region_of(queue_url, cfg.region)
    session = boto3.Session(botocore_session=core_session(), region_name=region)
    sqs = session.client(
        "sqs", endpoint_url=cfg.endpoint_url,
        config=BotoConfig(
            region_name=region, retries={"mode": "standard"},
            connect_timeout=cfg.aws.connect_timeout_seconds,
            read_timeout=max(cfg.aws.read_timeout_seconds, cfg.events.wait_seconds + 10.0),
            user_agent_extra=f"iam-key-exporter/{__version__}"))
    harden(sqs)
    return sqs


def receive(sqs: Any, queue_url: str, wait: int, visibility: int) -> list[Message]:
    resp = sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=BATCH, WaitTimeSeconds=wait,
        VisibilityTimeout=visibility, AttributeNames=ATTRIBUTES)
    return list(resp.get("Messages") or ())


def delete(sqs: Any, queue_url: str, messages: Sequence[Message]) -> list[int]:
    """Deletes the messages, 10 a request; returns the positions of those that could not
    be deleted (they come back after the visibility timeout and are handled again)."""
    failed: list[int] = []
    for i in range(0, len(messages), BATCH):
        chunk = messages[i:i + BATCH]
        entries = [{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]}
                   for n, m in enumerate(chunk)]
        try:
            resp = sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)
        except Exception as e:
            log.warning("could not delete handled messages; they will be handled again",
                        extra={"messages": len(chunk), "error": type(e).__name__})
            failed += range(i, i + len(chunk))
            continue
        for f in resp.get("Failed") or ():
            log.warning("could not delete a handled message; it will be handled again",
                        extra={"message_id": chunk[int(f["Id"])].get("MessageId"),
                               "error": f.get("Code")})
            failed.append(i + int(f["Id"]))
    return failed


# A message whose user could not be read comes back after this long, doubling per
# receive (at most the visibility timeout).
BACK_OFF = 5


def receives(msg: Message) -> int:
    """How often SQS has handed the message out (ApproximateReceiveCount), at least 1."""
    attrs = msg.get("Attributes")
    raw = attrs.get("ApproximateReceiveCount") if isinstance(attrs, dict) else None
    return max(int(raw), 1) if isinstance(raw, str) and raw.isdigit() else 1


def release(sqs: Any, queue_url: str, messages: Sequence[Message]) -> None:
    """Makes the messages visible again at once (this consumer is stopping)."""
    _set_visibility(sqs, queue_url, messages, lambda _: 0)


def back_off(sqs: Any, queue_url: str, messages: Sequence[Message], visibility: int) -> None:
    """Makes the messages visible again after a back-off that grows with their receives."""

    def wait(m: Message) -> int:
        return int(min(BACK_OFF * 2 ** (receives(m) - 1), visibility))

    _set_visibility(sqs, queue_url, messages, wait)


def _set_visibility(sqs: Any, queue_url: str, messages: Sequence[Message],
                    seconds: Callable[[Message], int]) -> None:
    """Best effort: where it fails, the messages come back after the visibility timeout."""
    for i in range(0, len(messages), BATCH):
        entries = [{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"],
                    "VisibilityTimeout": seconds(m)}
                   for n, m in enumerate(messages[i:i + BATCH])]
        try:
            sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries)
        except Exception as e:
            log.info("could not set the messages' back-off; they come back after the "
                     "visibility timeout", extra={"error": type(e).__name__})


@dataclass(frozen=True, slots=True)
class Redrive:
    dead_letter_url: str | None
    max_receives: int | None  # the redrive policy's maxReceiveCount


def redrive(sqs: Any, queue_url: str, configured: str | None) -> Redrive:
    """The queue's redrive policy: its dead-letter queue (the configured one, else the
    one the policy names; SQS keeps it in the same account and region: the URL's last
    segment swapped) and its maxReceiveCount."""
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])
    raw = (attrs.get("Attributes") or {}).get("RedrivePolicy")
    policy = json.loads(raw) if raw else {}
    count = policy.get("maxReceiveCount")
    receives = int(count) if isinstance(count, int | str) and str(count).isdigit() else None
    if configured:
        return Redrive(configured, receives)
    arn = policy.get("deadLetterTargetArn")
    m = _ARN_NAME_RE.match(arn) if isinstance(arn, str) else None
    if m is None:
        return Redrive(None, receives)
    return Redrive(f"{queue_url.rstrip('/').rsplit('/', 1)[0]}/{m.group(1)}", receives)


def depth(sqs: Any, queue_url: str) -> float:
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url,
                                     AttributeNames=["ApproximateNumberOfMessages"])
    return float(attrs["Attributes"]["ApproximateNumberOfMessages"])
