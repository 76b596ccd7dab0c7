"""The read queue (exporter/workqueue.py) with an injected clock: what comes next, and
that a user is never handed to two workers at once. No timing is asserted: "not due" is
a get() that finds nothing within a short wait."""

from __future__ import annotations

import threading

from exporter.workqueue import EVENT_RETRY_MAX, Item, ReadQueue

NOTHING = 0.05  # how long a get() waits where nothing is due


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def queue(now: float = 1000.0) -> tuple[ReadQueue, Clock]:
    clock = Clock(now)
    return ReadQueue(clock), clock


def take(q: ReadQueue) -> Item:
    item = q.get(1.0)
    assert item is not None, "nothing due"
    return item


def drain(q: ReadQueue) -> list[tuple[str, str]]:
    """(kind, name) of everything due now, each done at once."""
    out = []
    while (item := q.get(NOTHING)) is not None:
        out.append((item.kind, item.name))
        q.done(item)
    return out


def no_listing(q: ReadQueue, clock: Clock) -> None:
    """A new queue's listing is due at once; most tests are about the rest."""
    q.list_at(clock.now + 10_000)


def test_events_before_the_listing_before_due_users() -> None:
    q, _ = queue()
    q.schedule("due-user", 0.0)
    q.event("named", {"CreateAccessKey"})
    assert drain(q) == [("event", "named"), ("list", ""), ("read", "due-user")]


def test_an_event_item_carries_its_events_and_tickets() -> None:
    q, clock = queue()
    no_listing(q, clock)
    t1 = q.event("alice", {"CreateAccessKey"})
    t2 = q.event("ALICE", {"UpdateAccessKey"})  # the same user: one read
    item = take(q)
    assert (item.kind, item.name) == ("event", "alice")
    assert item.events == {"CreateAccessKey", "UpdateAccessKey"}
    assert item.tickets == (t1, t2)
    assert q.get(NOTHING) is None


def test_never_read_users_first_in_listing_order_then_oldest_due_first() -> None:
    q, clock = queue(now=1000.0)
    no_listing(q, clock)
    q.schedule("read-at-900", 900.0)
    q.schedule("read-at-500", 500.0)
    for name in ("new-c", "new-a", "new-b"):  # listing order, not alphabetical
        q.schedule(name, 0.0)
    q.schedule("not-due", 1500.0)
    assert drain(q) == [("read", "new-c"), ("read", "new-a"), ("read", "new-b"),
                        ("read", "read-at-500"), ("read", "read-at-900")]


def test_a_user_not_due_yet_is_not_handed_out() -> None:
    q, clock = queue(now=1000.0)
    no_listing(q, clock)
    q.schedule("alice", 1300.0)
    assert q.get(NOTHING) is None
    assert not q.has_due()
    clock.now = 1300.0
    assert q.has_due()
    assert (take(q).kind, q.get(NOTHING)) == ("read", None)


def test_a_rescheduled_user_is_due_once_at_its_new_time() -> None:
    q, clock = queue(now=1000.0)
    no_listing(q, clock)
    q.schedule("alice", 0.0)
    q.schedule("alice", 2000.0)  # read meanwhile (by an event): due later now
    assert q.get(NOTHING) is None
    clock.now = 2000.0
    assert drain(q) == [("read", "alice")]


def test_forget_drops_a_user() -> None:
    q, clock = queue()
    no_listing(q, clock)
    q.schedule("alice", 0.0)
    q.forget("alice")
    assert q.get(NOTHING) is None


def test_the_listing_comes_again_when_due() -> None:
    q, clock = queue(now=1000.0)
    assert drain(q) == [("list", "")]
    # While the listing runs it is not handed out again, even if it is made due.
    q.resync()
    assert q.get(NOTHING) is None
    q.list_at(1300.0)  # the listing ended: next one in an interval
    assert q.get(NOTHING) is None
    clock.now = 1300.0
    assert drain(q) == [("list", "")]


def test_a_user_is_never_handed_out_twice_at_once() -> None:
    q, clock = queue()
    no_listing(q, clock)
    q.schedule("alice", 0.0)
    read = take(q)
    assert (read.kind, read.name) == ("read", "alice")
    # An event arrives while alice is being read: it waits for that read to end.
    ticket = q.event("Alice", {"DeleteAccessKey"})
    q.schedule("alice", 0.0)
    q.event("bob", {"CreateUser"})
    assert [(i.kind, i.name) for i in [take(q)]] == [("event", "bob")]  # others go on
    assert q.get(NOTHING) is None
    q.schedule("alice", clock.now + 300)  # what a worker does after a read
    q.done(read)
    event = take(q)
    assert (event.kind, event.name, event.tickets) == ("event", "Alice", (ticket,))
    # And while the event's read runs, alice's poll is not handed out either.
    clock.now += 300
    assert q.get(NOTHING) is None
    q.schedule("alice", clock.now + 300)
    q.done(event)
    assert q.get(NOTHING) is None
    clock.now += 300
    assert drain(q) == [("read", "alice")]


def test_retry_event_settles_the_tickets_and_backs_off_doubling() -> None:
    q, clock = queue(now=1000.0)
    no_listing(q, clock)
    ticket = q.event("alice", {"CreateAccessKey"})
    item = take(q)
    q.retry_event(item, "Throttling")
    assert ticket.settled and not ticket.ok and ticket.error == "Throttling"
    waits = []
    for tries in range(1, 9):
        # Not before its back-off has passed...
        start = clock.now
        assert q.get(NOTHING) is None
        while (item2 := q.get(0.0)) is None:
            clock.now += 0.5
            assert clock.now - start <= EVENT_RETRY_MAX, "never came back"
        waits.append(clock.now - start)
        assert (item2.kind, item2.name, item2.tries) == ("event", "alice", tries)
        assert item2.events == {"CreateAccessKey"}
        q.retry_event(item2, "Throttling")
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_a_retried_event_stays_ahead_of_events_named_since() -> None:
    q, clock = queue(now=1000.0)
    no_listing(q, clock)
    q.event("alice", {"CreateAccessKey"})
    item = take(q)
    later = q.event("bob", {"CreateAccessKey"})
    q.retry_event(item, "ServiceUnavailable")
    assert drain(q) == [("event", "bob")]  # alice waits for her back-off
    assert later.settled is False  # done() does not settle: the worker does
    again = q.event("alice", {"UpdateAccessKey"})  # a new event joins the waiting one
    q.event("carol", {"CreateAccessKey"})
    clock.now += 1.0
    first = take(q)
    assert (first.kind, first.name, first.tries) == ("event", "alice", 1)
    assert first.events == {"CreateAccessKey", "UpdateAccessKey"}
    assert first.tickets == (again,)  # the settled ticket is not carried on
    assert take(q).name == "carol"


def test_resync_makes_everything_due_oldest_read_first() -> None:
    q, _ = queue(now=1000.0)
    assert drain(q) == [("list", "")]
    q.list_at(1300.0)
    q.schedule("read-at-1000", 1300.0)
    q.schedule("read-at-950", 1250.0)
    q.schedule("read-at-990", 1290.0)
    assert q.get(NOTHING) is None
    q.resync()
    assert drain(q) == [("list", ""), ("read", "read-at-950"), ("read", "read-at-990"),
                        ("read", "read-at-1000")]


def test_resync_ends_a_pause() -> None:
    q, clock = queue(now=1000.0)
    q.schedule("alice", 0.0)
    q.pause(5.0)
    assert q.get(NOTHING) is None  # not even the listing
    clock.now += 5.0
    assert drain(q) == [("list", ""), ("read", "alice")]
    q.schedule("alice", 0.0)
    q.pause(5.0)
    q.resync()
    assert drain(q) == [("read", "alice")]


def test_close_ends_a_waiting_get() -> None:
    q, clock = queue()
    no_listing(q, clock)
    got: list[Item | None] = []
    waiter = threading.Thread(target=lambda: got.append(q.get(30.0)))
    waiter.start()
    q.close()
    waiter.join(10.0)
    assert not waiter.is_alive() and got == [None]
    q.schedule("alice", 0.0)
    assert q.get(1.0) is None  # closed: nothing is handed out any more


def test_an_event_wakes_a_waiting_get() -> None:
    q, clock = queue()
    no_listing(q, clock)
    got: list[Item | None] = []
    waiter = threading.Thread(target=lambda: got.append(q.get(30.0)))
    waiter.start()
    q.event("alice", {"CreateUser"})
    waiter.join(10.0)
    assert not waiter.is_alive()
    assert [(i.kind, i.name) for i in got if i is not None] == [("event", "alice")]


def test_a_resync_during_a_read_reads_the_user_again_after_it() -> None:
    """The read in flight may have begun before the resync: the user is due again when
    it ends, not an interval later."""
    q, clock = queue(now=1000.0)
    no_listing(q, clock)
    q.schedule("alice", 0.0)
    read = take(q)
    q.resync()
    q.schedule("alice", clock.now + 300)  # the worker's reschedule after its read
    q.done(read)
    assert drain(q) == [("list", ""), ("read", "alice")]  # the resync's listing too
    # Without a resync, the reschedule stands.
    q.schedule("bob", 0.0)
    read = take(q)
    q.schedule("bob", clock.now + 300)
    q.done(read)
    assert q.get(NOTHING) is None
