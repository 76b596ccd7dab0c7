"""The IAM request budget of one account: at most ``aws.max_requests_per_second``
requests (every attempt, retries included), slowing down by itself while IAM throttles.

IAM's request quota is per account and shared with everything else that calls IAM there
(Terraform, CI, people). The budget paces requests evenly (no burst: over any window of
``w`` seconds at most ``w * rate + 1`` requests go out). A throttled answer halves the
rate, at most once a second (answers to requests already in flight say nothing new);
the rate then climbs back linearly to the cap over ``RECOVER_SECONDS``.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator

# Halve on throttling, never below this share of the cap.
DECREASE = 0.5
MIN_SHARE = 0.05
# From the lowered rate back to the cap, linearly, in this many seconds.
RECOVER_SECONDS = 60.0
# Throttles within this long of the last decrease do not lower the rate again.
HOLD_SECONDS = 1.0

# Error codes meaning "slow down" (IAM answers Throttling; the others for other APIs).
THROTTLING_CODES = frozenset({"Throttling", "ThrottlingException", "RequestLimitExceeded",
                              "TooManyRequestsException", "RequestThrottled"})


class Budget:
    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.cap = rate
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._turn = threading.Condition(self._lock)
        self._waiting: list[tuple[int, int]] = []  # (0 urgent / 1, arrival): a heap
        self._arrivals = itertools.count()
        self._local = threading.local()
        self._next = 0.0  # when the next request may go
        self._low = rate  # the rate right after the last decrease
        self._cut_at = -1e18  # when the last decrease happened

    def _rate(self, now: float) -> float:
        climbed = (now - self._cut_at) / RECOVER_SECONDS * (self.cap - self._low)
        return min(self.cap, self._low + max(climbed, 0.0))

    def rate(self) -> float:
        """Requests per second allowed now."""
        with self._lock:
            return self._rate(self._clock())

    def waiting(self) -> int:
        """Calls waiting for their turn now."""
        with self._lock:
            return len(self._waiting)

    @contextlib.contextmanager
    def urgent(self) -> Iterator[None]:
        """The calls this thread makes meanwhile go before every waiting non-urgent one
        (an event's re-read does not queue behind a pass)."""
        self._local.urgent = True
        try:
            yield
        finally:
            self._local.urgent = False

    def acquire(self) -> None:
        """Blocks until the next request may go out: first come, first served, urgent
        calls first.

        A request's turn is taken when it goes, not booked ahead: a thread that wakes
        late from its sleep must not send together with the one booked after it (that
        would put more than ``w * rate + 1`` requests in a window)."""
        me = (0 if getattr(self._local, "urgent", False) else 1, next(self._arrivals))
        with self._turn:
            heapq.heappush(self._waiting, me)
            self._turn.notify_all()  # an urgent arrival may be first now
            while True:
                if self._waiting[0] != me:
                    self._turn.wait()
                    continue
                now = self._clock()
                if now >= self._next:
                    heapq.heappop(self._waiting)
                    self._next = now + 1.0 / self._rate(now)
                    self._turn.notify_all()
                    return
                wait = self._next - now
                self._turn.release()
                try:
                    self._sleep(wait)
                finally:
                    self._turn.acquire()

    def throttled(self) -> None:
        with self._lock:
            now = self._clock()
            if now - self._cut_at < HOLD_SECONDS:
                return
            self._low = max(self._rate(now) * DECREASE, self.cap * MIN_SHARE)
            self._cut_at = now
            # Requests already paced at the old rate are spread out at the new one.
            self._next = max(self._next, now + 1.0 / self._low)
