"""One account's queue of reads, drained by its workers at the pace of its request budget.

Order: users named by events first; then the listing, when due (membership: new and
deleted users, once per interval); then users by when they are due (one interval after
their last read), never-read users first in listing order. Nothing is ever dropped: a
read that fails comes back after a pause, an event's user stays at the head until IAM
answers. A user is never read by two workers at once.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

# Back-off of an event's user whose re-read fails: doubling from EVENT_RETRY to at most
# EVENT_RETRY_MAX seconds, until IAM answers.
EVENT_RETRY, EVENT_RETRY_MAX = 1.0, 60.0


class Ticket:
    """The outcome of the next read of a user an event named: ok, or the error code."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self.ok = False
        self.error = ""

    def settle(self, ok: bool, error: str = "") -> None:
        if not self._done.is_set():
            self.ok, self.error = ok, error
            self._done.set()

    def wait(self, timeout: float | None) -> bool:
        return self._done.wait(timeout)

    @property
    def settled(self) -> bool:
        return self._done.is_set()


@dataclass
class _Event:
    name: str
    events: set[str] = field(default_factory=set)
    tickets: list[Ticket] = field(default_factory=list)
    not_before: float = 0.0
    tries: int = 0


@dataclass(frozen=True, slots=True)
class Item:
    kind: Literal["event", "list", "read"]
    name: str = ""
    events: frozenset[str] = frozenset()
    tickets: tuple[Ticket, ...] = ()
    tries: int = 0


def _k(name: str) -> str:
    return name.lower()


class ReadQueue:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._events: dict[str, _Event] = {}  # insertion order: first named, first read
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, int, str, str]] = []  # (due, seq, key, name)
        self._seq = itertools.count()
        self._busy: set[str] = set()  # users being read
        # Users a resync found being read: read again once that read ends (it may have
        # begun before the resync).
        self._again: set[str] = set()
        self._list_due: float | None = 0.0  # None while a listing runs
        self._paused_until = 0.0
        self._closed = False

    # -- adding work ---------------------------------------------------------------------

    def event(self, name: str, events: set[str]) -> Ticket:
        """Puts the user at the head of the queue; the ticket tells how its read went."""
        ticket = Ticket()
        with self._cond:
            ev = self._events.get(_k(name))
            if ev is None:
                ev = self._events[_k(name)] = _Event(name)
            ev.events |= events
            ev.tickets.append(ticket)
            self._cond.notify()
        return ticket

    def schedule(self, name: str, due: float) -> None:
        """The user is due at ``due`` (unix time; 0: as soon as possible)."""
        with self._cond:
            k = _k(name)
            if k in self._again:  # being read when a resync came: again at once
                self._again.discard(k)
                due = min(due, 0.0)
            self._due[k] = due
            heapq.heappush(self._heap, (due, next(self._seq), k, name))
            self._cond.notify()

    def forget(self, name: str) -> None:
        with self._cond:
            self._due.pop(_k(name), None)
            self._again.discard(_k(name))

    def list_at(self, when: float) -> None:
        with self._cond:
            self._list_due = when
            self._cond.notify()

    def pause(self, seconds: float) -> None:
        """Nothing of this account is read for a while (its credentials failed)."""
        with self._cond:
            self._paused_until = self._clock() + seconds

    def resync(self) -> None:
        """Everything due now: a listing, then every user, oldest read first."""
        with self._cond:
            self._paused_until = 0.0
            if self._list_due is not None:
                self._list_due = 0.0
            # New sequence numbers in the old order: oldest due first, and a valid heap.
            self._heap = [(0.0, next(self._seq), k, name)
                          for due, _, k, name in sorted(self._heap) if self._due.get(k) == due]
            for _, _, k, _ in self._heap:
                self._due[k] = 0.0
            self._again |= self._busy
            self._cond.notify_all()

    # -- taking work ---------------------------------------------------------------------

    def get(self, timeout: float) -> Item | None:
        """The next item due, waiting up to timeout for one; None if there is none."""
        end = time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                now = self._clock()
                item, wake = self._take(now)
                if item is not None:
                    return item
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, max(wake - now, 0.001)))
        return None

    def _take(self, now: float) -> tuple[Item | None, float]:
        if now < self._paused_until:
            return None, self._paused_until
        wake = float("inf")
        for k, ev in self._events.items():
            if k in self._busy:
                continue
            if ev.not_before <= now:
                del self._events[k]
                self._busy.add(k)
                return Item("event", ev.name, frozenset(ev.events), tuple(ev.tickets),
                            ev.tries), now
            wake = min(wake, ev.not_before)
        if self._list_due is not None:
            if self._list_due <= now:
                self._list_due = None
                return Item("list"), now
            wake = min(wake, self._list_due)
        parked = []  # due, but being read (an event): kept for when that read ends
        try:
            while self._heap:
                due, _, k, name = self._heap[0]
                if self._due.get(k) != due:
                    heapq.heappop(self._heap)  # rescheduled since
                    continue
                if k in self._busy:
                    parked.append(heapq.heappop(self._heap))
                    continue
                if due > now:
                    return None, min(wake, due)
                heapq.heappop(self._heap)
                del self._due[k]
                self._busy.add(k)
                return Item("read", name), now
            return None, wake
        finally:
            for entry in parked:
                heapq.heappush(self._heap, entry)

    def done(self, item: Item) -> None:
        with self._cond:
            k = _k(item.name)
            self._busy.discard(k)
            if k in self._again:  # a resync came during a read that did not reschedule
                self._again.discard(k)
                self._due[k] = 0.0
                heapq.heappush(self._heap, (0.0, next(self._seq), k, item.name))
            self._cond.notify_all()

    def retry_event(self, item: Item, error: str) -> None:
        """The event's user could not be read: its tickets learn why, and the user stays
        at the head of the queue, tried again after a back-off."""
        for t in item.tickets:
            t.settle(False, error)
        with self._cond:
            k = _k(item.name)
            ev = self._events.get(k)
            if ev is None:
                ev = _Event(item.name)
                # Ahead of events named since: it was first.
                self._events = {k: ev, **self._events}
            ev.events |= item.events
            ev.tries = max(ev.tries, item.tries + 1)
            ev.not_before = self._clock() + min(EVENT_RETRY * 2 ** item.tries, EVENT_RETRY_MAX)
            self._busy.discard(k)
            self._cond.notify_all()

    def has_due(self) -> bool:
        """Whether something else is due now (cheap: a peek, for spawning workers)."""
        now = self._clock()
        with self._cond:
            if now < self._paused_until:
                return False
            return (any(e.not_before <= now for e in self._events.values())
                    or bool(self._heap and self._heap[0][0] <= now))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
