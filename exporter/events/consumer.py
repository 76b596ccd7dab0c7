"""The event thread: long-polls the SQS queue and puts the users the events name at the
head of their account's read queue; the read is published at once.

A batch is what one long poll returns plus what is already waiting behind it (up to
MAX_BATCH messages), so a burst of events for one user costs one re-read. A message is
deleted once its user was read, or is known to need nothing. An unreadable one is left
for the queue's redrive policy (the dead-letter queue). One whose user could not be read
comes back after a back-off, up to TRIES receives; then it is deleted and the user stays
at the head of its account's queue until IAM answers, so a valid event is never
dead-lettered for a slow or failing read. Nothing here can end the thread, and SQS
errors only slow it down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from exporter.aws.errors import error_code
from exporter.aws.session import UNKNOWN_ACCOUNT, Target
from exporter.config import Config
from exporter.events import message, queue
from exporter.events.queue import Message
from exporter.events.stats import EventStats
from exporter.workqueue import Ticket

if TYPE_CHECKING:
    from exporter.poller import Poller

log = logging.getLogger("exporter.events")

MAX_BATCH = 100  # messages handled together (10 receives)
BACKOFF_MIN, BACKOFF_MAX = 1.0, 60.0
DEAD_LETTER_EVERY = 60.0
READY_WAIT = 0.2  # while the poller has not resolved which accounts it watches
STOP_WAIT = 1.0
# How long a batch waits for its users' reads (at most half the visibility timeout).
SETTLE_MAX = 20.0
# Receives of a message whose re-read failed before it is deleted and its user left
# first in the account's queue (kept below the redrive policy's maxReceiveCount).
TRIES = 3


@dataclass
class _Group:
    """The messages of one batch about one user of one watched account."""

    target: Target
    name: str
    events: set[str] = field(default_factory=set)
    messages: list[int] = field(default_factory=list)
    newest: float | None = None  # newest event time among them
    ticket: Ticket | None = None

    def add(self, index: int, event: str, when: float | None) -> None:
        self.messages.append(index)
        self.events.add(event)
        if when is not None and (self.newest is None or when > self.newest):
            self.newest = when


class Consumer:
    def __init__(self, cfg: Config, poller: Poller, *,
                 dead_letter_every: float = DEAD_LETTER_EVERY, sqs: Any = None) -> None:
        assert cfg.events.queue_url, "only built when events.queue_url is set"
        # Queue settings are read once; a reload changes them only with a restart.
        self._cfg = cfg
        self._url = cfg.events.queue_url
        self._poller = poller
        self._sqs = sqs
        self._dead_letter_every = dead_letter_every
        self._next_dead_letter = 0.0
        self._dead_letter_unreadable = False
        self._tries = TRIES
        self._backoff = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = EventStats()

    # -- the thread ----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="iam-events", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = STOP_WAIT) -> None:
        """Ends the thread; a long poll in flight is not waited for (a daemon thread)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # the thread must outlive any bug
                log.exception("event handling crashed; going on")
                self._stop.wait(BACKOFF_MIN)

    def step(self) -> None:
        """One long poll and its batch."""
        self._sample_dead_letter()
        # Until the poller has resolved the watched accounts (and the id of the default
        # credentials' account), an event's account cannot be told apart from one not
        # watched: leave the messages in the queue meanwhile.
        if not self._poller.resolved:
            self._stop.wait(READY_WAIT)
            return
        messages = self._receive()
        if messages and self._stop.is_set():
            # Stopping (a rollout): another pod takes them at once, untouched.
            queue.release(self._client(), self._url, messages)
        elif messages:
            self.handle(messages)

    def _client(self) -> Any:
        if self._sqs is None:
            self._sqs = queue.client(self._cfg, self._url)
        return self._sqs

    # -- SQS -----------------------------------------------------------------------------

    def _receive(self) -> list[Message]:
        ev = self._cfg.events
        try:
            batch = queue.receive(self._client(), self._url, ev.wait_seconds,
                                  ev.visibility_timeout_seconds)
        except Exception as e:
            self._receive_failed(e)
            self._stop.wait(self._backoff)
            return []
        self._received_ok()
        out = batch
        # What is already waiting behind a full batch joins it (no wait): one re-read
        # per user for the whole burst; for at most half the visibility timeout, so the
        # first messages are still ours when the batch is done.
        until = time.monotonic() + ev.visibility_timeout_seconds / 2
        while (len(batch) == queue.BATCH and len(out) < MAX_BATCH
               and time.monotonic() < until and not self._stop.is_set()):
            try:
                batch = queue.receive(self._client(), self._url, 0,
                                      ev.visibility_timeout_seconds)
            except Exception as e:
                self._receive_failed(e)
                break
            out += batch
        # A message received twice (its visibility ran out meanwhile) is handled once,
        # with its newest receipt handle (the one SQS deletes by).
        out = list({m.get("MessageId") or id(m): m for m in out}.values())
        self.stats.received(len(out))
        return out

    def _received_ok(self) -> None:
        if self.stats.queue_up is False:
            log.info("events queue reachable again", extra={"queue_url": self._url})
        self.stats.queue_up = True
        self._backoff = 0.0

    def _receive_failed(self, e: Exception) -> None:
        code = error_code(e)
        self.stats.receive_error(code)
        self.stats.queue_up = False
        self._backoff = min(max(self._backoff * 2, BACKOFF_MIN), BACKOFF_MAX)
        log.warning("cannot receive from the events queue; polling goes on", extra={
            "queue_url": self._url, "error": code, "detail": str(e)[:200],
            "retry_in_s": self._backoff})
        # A new client (and connection pool, and credentials) for the next attempt.
        self._sqs = None

    def _sample_dead_letter(self) -> None:
        now = time.monotonic()
        if now < self._next_dead_letter:
            return
        self._next_dead_letter = now + self._dead_letter_every
        try:
            sqs = self._client()
            redrive = queue.redrive(sqs, self._url, self._cfg.events.dead_letter_queue_url)
            url = redrive.dead_letter_url
            self.stats.dead_letter = queue.depth(sqs, url) if url else None
            if redrive.max_receives is not None:
                # Deleted on the last receive before the redrive policy would move it.
                self._tries = max(min(TRIES, redrive.max_receives), 1)
            self._dead_letter_unreadable = False
        except Exception as e:  # no sample; nothing else depends on it
            self.stats.dead_letter = None
            if not self._dead_letter_unreadable:
                log.info("cannot read the dead-letter queue's depth", extra={
                    "queue_url": self._url, "error": error_code(e)})
            self._dead_letter_unreadable = True

    # -- one batch -----------------------------------------------------------------------

    def handle(self, messages: list[Message]) -> None:
        """Parses, coalesces, re-reads, publishes once, deletes what is done, counts."""
        started = time.monotonic()
        results = [""] * len(messages)
        groups: dict[tuple[str, str], _Group] = {}
        # A watched account whose id is not known yet (STS failed so far): any account
        # might be it, so nothing is called unwatched.
        unsure = any(t.account_id == UNKNOWN_ACCOUNT for t in self._poller.targets)
        for i, msg in enumerate(messages):
            try:
                got = message.parse(msg.get("Body"))
            except message.InvalidEvent as e:
                results[i] = "invalid"
                log.warning("unreadable event message left for the dead-letter queue", extra={
                    "message_id": str(msg.get("MessageId"))[:100], "why": str(e)[:200],
                    "receive_count": _attribute(msg, "ApproximateReceiveCount")})
                continue
            if isinstance(got, message.Ignored):
                results[i] = "ignored"
                continue
            target = self._poller.target_for(got.account_id)
            if target is None:
                # Unsure: it comes back a few times (the id may be known by then), then
                # is deleted, never dead-lettered: an account whose id is not known has
                # not been listed yet, and its first listing reads every user anyway.
                results[i] = (("handed_over" if queue.receives(msg) >= self._tries else "failed")
                              if unsure else "ignored")
                continue
            # IAM user names are unique whatever their case.
            key = (target.key, got.user_name.lower())
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Group(target, got.user_name)
            group.add(i, got.event_name, got.event_time or _sent(msg))
        for g in groups.values():
            g.ticket = self._poller.request(g.target, g.name, g.events)
        newest = self._settle(list(groups.values()), results, messages)
        if newest is not None:
            self.stats.applied(time.time(), newest)
        done = [i for i, r in enumerate(results) if r in ("applied", "ignored", "handed_over")]
        if done:
            for i in queue.delete(self._client(), self._url, [messages[i] for i in done]):
                results[done[i]] = "delete_failed"
        retry = [messages[i] for i, r in enumerate(results) if r == "failed"]
        if retry:
            queue.back_off(self._client(), self._url, retry,
                           self._cfg.events.visibility_timeout_seconds)
        counts = Counter(results)
        self.stats.results(counts)
        if counts["delete_failed"]:
            self.stats.delete_failed(counts["delete_failed"])
        log.debug("event batch handled", extra={
            "messages": len(messages), "users": len(groups), **counts,
            "took_s": round(time.monotonic() - started, 3)})

    def _settle(self, groups: list[_Group], results: list[str],
                messages: list[Message]) -> float | None:
        """Waits (bounded) for each group's read; sets its messages' results. Returns the
        newest applied event time."""
        wait = min(self._cfg.events.visibility_timeout_seconds / 2, SETTLE_MAX)
        end = time.monotonic() + wait
        newest: float | None = None
        for g in groups:
            ticket = g.ticket
            if ticket is None:  # its account stopped being watched meanwhile
                result = "ignored"
            elif ticket.wait(max(end - time.monotonic(), 0.0)) and ticket.ok:
                result = "ignored" if ticket.error == "outside" else "applied"
                if result == "applied" and g.newest is not None:
                    newest = g.newest if newest is None else max(newest, g.newest)
            else:
                # Failed or slow: the message comes back after a back-off, a few times;
                # then it is deleted, and its user stays first in the account's queue
                # until IAM answers (never dead-lettered for a slow or failing read).
                receives = max((queue.receives(messages[i]) for i in g.messages), default=1)
                result = "handed_over" if receives >= self._tries else "failed"
            for i in g.messages:
                results[i] = result
        return newest

def _attribute(msg: Message, name: str) -> str | None:
    attrs = msg.get("Attributes")
    value = attrs.get(name) if isinstance(attrs, dict) else None
    return value if isinstance(value, str) else None


def _sent(msg: Message) -> float | None:
    """SQS SentTimestamp (epoch milliseconds) in seconds."""
    raw = _attribute(msg, "SentTimestamp")
    try:
        return int(raw) / 1000.0 if raw is not None else None
    except ValueError:
        return None
