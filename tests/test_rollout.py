"""Rollouts with one events queue: the old pod stops taking events at SIGTERM, so the new
pod applies every event sent from then on (docs/reconciliation.md, "Rollouts").

Two real daemons (CLI → gunicorn → worker) share one moto SQS queue. Without the early
stop the old pod keeps long-polling through its graceful drain and applies (and deletes)
events the new pod then never sees until its resync, an interval later.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from tests.daemon import Daemon, sample
from tests.events_helpers import body, make_queues
from tests.helpers import MOTO_ACCOUNT, add_user, daemon_config, iam_client

A = MOTO_ACCOUNT
USERS = 12


def test_events_sent_while_the_old_pod_stops_reach_the_new_pod(
        moto: str, aws_env: dict[str, str], daemons: Callable[..., Daemon]) -> None:
    iam = iam_client(moto)
    for i in range(USERS):
        add_user(iam, f"u{i:02d}", ("Active",))
    queues = make_queues(moto, max_receive=5)
    cfg: dict[str, Any] = {
        **daemon_config(moto, interval=3600),  # no resync during the test: events only
        "collection": {"last_used": "off"},
        # A long drain, so that a consumer still running through it would be seen.
        "web": {"shutdown_grace_seconds": 6},
        "events": {"queue_url": queues.url, "visibility_timeout_seconds": 30,
                   "wait_seconds": 20},
    }
    old = daemons(cfg)
    old.wait_ready()
    new = daemons(cfg)
    new.wait_ready()
    for d in (old, new):
        d.wait_for(lambda s: sample(s, "iam_exporter_events_queue_up") == 1)

    # A scrape still in flight keeps the old pod draining (up to its 6 s grace), as a
    # Prometheus scrape or a load balancer's connection does in a real rollout.
    slow = socket.create_connection(("127.0.0.1", old.port))
    slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    time.sleep(0.3)
    old.proc.send_signal(signal.SIGTERM)  # a rollout replaces the old pod
    time.sleep(0.3)  # the signal reaches the worker
    changed = []
    for i in range(USERS):
        name = f"u{i:02d}"
        iam.create_access_key(UserName=name)
        queues.send(body("CreateAccessKey", name, account=A))
        changed.append(name)
        time.sleep(0.1)

    # The new pod applies every one of them (its poll is an hour away).
    def all_two(s: dict[Any, float]) -> bool:
        return all(sample(s, "iam_user_access_keys", account_id=A, user_name=n,
                          status="Active") == 2 for n in changed)

    samples = new.wait_for(all_two, timeout=20)
    slow.close()
    assert old.proc.wait(30) == 0
    applied = sample(samples, "iam_exporter_events_total", result="applied") or 0
    assert applied >= len(changed)
    # Nothing was left behind in the queue or dead-lettered.
    assert queues.depth() == 0 and queues.depth(queues.dlq_url) == 0
