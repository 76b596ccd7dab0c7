"""The WSGI app (``exporter.web.App``), driven in-process through werkzeug's test client."""

from __future__ import annotations

import dataclasses
import gzip
import socket
import zlib
from typing import TYPE_CHECKING, Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import Client, TestResponse

from exporter import metrics, web
from exporter.aws.session import ApiCounts
from exporter.inventory import (
    AccessKey,
    AccountInventory,
    AccountState,
    AccountSummary,
    Snapshot,
    User,
)
from exporter.metrics import Exposition, RenderInput
from tests.helpers import promtool_check_metrics

if TYPE_CHECKING:
    from exporter.poller import Poller

T0 = 1_700_000_000.0
KNOWN_PATHS = ["/metrics", "/healthz", "/readyz", "/"]
EVIL = "<script>alert('x')</script>"


class FakePoller:
    """Exposes only ``alive()``; any other attribute the app touches is recorded and fails."""

    def __init__(self, alive: bool = True) -> None:
        self.is_alive = alive
        self.touched: list[str] = []

    def alive(self) -> bool:
        self.touched.append("alive")
        return self.is_alive

    def __getattr__(self, name: str) -> Any:
        self.touched.append(name)
        raise AssertionError(f"the web app touched poller.{name}")


def snapshot() -> Snapshot:
    ok = AccountInventory("111111111111", "list", (
        User("alice", keys=(AccessKey("AKIAALICE1", "Active", T0 - 100),
                            AccessKey("AKIAALICE2", "Active", T0 - 50))),
        User("bob"),
    ), AccountSummary(0, 2))
    stale = AccountInventory("222222222222", "list", (User("carol"),))
    return Snapshot(accounts=(
        AccountState("self", "111111111111", "prod", ok, True, 1.25, T0),
        AccountState("arn:aws:iam::222222222222:role/x", "222222222222", EVIL, stale, False,
                     0.5, T0 - 900, error="AccessDenied<b>"),
        AccountState("arn:aws:iam::333333333333:role/x", "333333333333", "never", None,
                     False, 0.1, None, error="NoCredentialsError"),
    ), completed_at=T0, error_counts={("222222222222", "AccessDenied"): 2}, ready=True)


def make_client(store: web.Store, poller: FakePoller | None) -> Client:
    return Client(web.App(store, cast("Poller | None", poller)))


def exposition(snap: Snapshot) -> Exposition:
    return Exposition.of(RenderInput(snap, ApiCounts({}, {}, {}), 300))


@pytest.fixture
def store() -> web.Store:
    return web.Store(exposition(snapshot()))


@pytest.fixture
def poller() -> FakePoller:
    return FakePoller()


@pytest.fixture
def client(store: web.Store, poller: FakePoller) -> Client:
    return make_client(store, poller)


@pytest.fixture
def fixed_tail(monkeypatch: pytest.MonkeyPatch) -> bytes:
    """Makes the per-scrape process metrics deterministic, so two scrapes compare equal."""
    tail = (b"# HELP process_open_fds Number of open file descriptors.\n"
            b"# TYPE process_open_fds gauge\nprocess_open_fds 7.0\n")
    monkeypatch.setattr(metrics.Live, "render", lambda self: tail)
    return tail


def assert_length(resp: TestResponse) -> None:
    assert int(resp.headers["Content-Length"]) == len(resp.get_data())


def family_names(body: bytes) -> list[str]:
    return [f.name for f in text_string_to_metric_families(body.decode())]


# --------------------------------------------------------------------------- /metrics


def test_metrics_plain(client: Client, store: web.Store) -> None:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert resp.headers["Vary"] == "Accept-Encoding"
    assert "Content-Encoding" not in resp.headers
    assert_length(resp)
    body = resp.get_data()
    assert body.startswith(store.exposition.body)
    tail = body[len(store.exposition.body):]
    tail_families = family_names(tail)
    assert "process_resident_memory_bytes" in tail_families
    assert all(n.startswith("process_") for n in tail_families)


def test_metrics_serves_the_stored_exposition_exactly(client: Client, store: web.Store,
                                                      fixed_tail: bytes) -> None:
    assert client.get("/metrics").get_data() == store.exposition.body + fixed_tail
    newer = exposition(Snapshot(accounts=snapshot().accounts[:1], completed_at=T0))
    store.set(newer)
    body = client.get("/metrics").get_data()
    assert body == newer.body + fixed_tail
    assert b"222222222222" not in body


def test_metrics_gzip_is_one_member_of_the_plain_body(client: Client, store: web.Store,
                                                     fixed_tail: bytes) -> None:
    plain = client.get("/metrics")
    resp = client.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert resp.status_code == 200
    assert resp.headers["Content-Encoding"] == "gzip"
    assert resp.headers["Vary"] == "Accept-Encoding"
    assert resp.headers["Content-Type"] == metrics.CONTENT_TYPE
    assert_length(resp)
    data = resp.get_data()
    assert gzip.decompress(data) == plain.get_data() == store.exposition.body + fixed_tail
    # ONE member: curl --compressed (and other clients) stop after the first member, so
    # the per-scrape tail must be inside it, not in a second one.
    one = zlib.decompressobj(wbits=31)
    assert one.decompress(data) == plain.get_data()
    assert one.eof and one.unused_data == b""
    # The published part was compressed once: the stream starts with those bytes.
    assert data.startswith(store.exposition.gzip_head)


def test_metrics_gzip_every_family_reaches_a_single_member_reader(client: Client,
                                                                  store: web.Store) -> None:
    """What curl --compressed sees: the first gzip member holds every family, the
    accounts' and the per-scrape ones (process metrics) alike."""
    plain = family_names(client.get("/metrics").get_data())
    data = client.get("/metrics", headers={"Accept-Encoding": "gzip"}).get_data()
    first = zlib.decompressobj(wbits=31).decompress(data)
    assert family_names(first) == family_names(gzip.decompress(data)) == plain
    assert "iam_user_access_keys" in plain and "process_open_fds" in plain


def test_metrics_gzip_with_real_process_tail(client: Client, store: web.Store) -> None:
    data = gzip.decompress(client.get("/metrics", headers={"Accept-Encoding": "GZIP"})
                           .get_data())
    assert data.startswith(store.exposition.body)
    assert "process_open_fds" in family_names(data[len(store.exposition.body):])


@pytest.mark.parametrize("header", ["gzip;q=0", "identity", "deflate, br", ""])
def test_metrics_without_gzip(client: Client, store: web.Store, fixed_tail: bytes,
                              header: str) -> None:
    resp = client.get("/metrics", headers={"Accept-Encoding": header} if header else {})
    assert "Content-Encoding" not in resp.headers
    assert resp.headers["Vary"] == "Accept-Encoding"
    assert resp.get_data() == store.exposition.body + fixed_tail
    assert_length(resp)


def test_scrape_output_passes_promtool_without_warnings(client: Client,
                                                        store: web.Store) -> None:
    body = client.get("/metrics").get_data()
    names = family_names(body)
    assert len(names) == len(set(names)), "a metric family appears twice"
    cached = set(family_names(store.exposition.body))
    assert cached.isdisjoint(family_names(body[len(store.exposition.body):]))
    res = promtool_check_metrics(body)
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")


# --------------------------------------------------------------------------- probes


def test_readyz_before_and_after_first_snapshot() -> None:
    store = web.Store(exposition(Snapshot()))
    client = make_client(store, FakePoller())
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert_length(resp)
    # Accounts known, but not every user read once yet: still not ready.
    store.set(exposition(dataclasses.replace(snapshot(), ready=False)))
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert b"read once" in resp.get_data()
    store.set(exposition(snapshot()))
    resp = client.get("/readyz")
    assert resp.status_code == 200
    assert_length(resp)


def test_healthz_follows_poller() -> None:
    store = web.Store(exposition(Snapshot()))
    alive, dead = FakePoller(True), FakePoller(False)
    assert make_client(store, alive).get("/healthz").status_code == 200
    assert make_client(store, dead).get("/healthz").status_code == 503
    assert make_client(store, None).get("/healthz").status_code == 200
    assert alive.touched == ["alive"] and dead.touched == ["alive"]
    # The poller dying later is noticed on the next probe.
    alive.is_alive = False
    assert make_client(store, alive).get("/healthz").status_code == 503


def test_scrapes_touch_nothing_but_alive(client: Client, poller: FakePoller,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*_: Any, **__: Any) -> None:
        raise AssertionError("a request to the exporter opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for path in ("/metrics", "/readyz", "/", "/nope"):
        for headers in ({}, {"Accept-Encoding": "gzip"}):
            assert client.get(path, headers=headers).status_code in (200, 404)
        client.head(path)
    assert poller.touched == []
    assert client.get("/healthz").status_code == 200
    assert poller.touched == ["alive"]


# --------------------------------------------------------------------------- index


def test_index_lists_accounts_escaped(client: Client) -> None:
    resp = client.get("/")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    assert_length(resp)
    page = resp.get_data(as_text=True)
    assert page.startswith("<!doctype html>")
    assert '<a href="/metrics">' in page
    rows = [r for r in page.split("<tr>") if "<td>" in r]
    assert len(rows) == 3
    assert "111111111111" in rows[0] and "prod" in rows[0] and "<td>ok</td>" in rows[0]
    assert "222222222222" in rows[1] and "failed: AccessDenied&lt;b&gt;" in rows[1]
    assert "333333333333" in rows[2] and "failed: NoCredentialsError" in rows[2]
    assert "<script>" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in rows[1]


def test_index_before_any_account_listed() -> None:
    page = Client(web.App(web.Store(exposition(Snapshot())))).get("/").get_data(as_text=True)
    assert "no account listed yet" in page


# --------------------------------------------------------------------------- routing


@pytest.mark.parametrize("path", ["/nope", "/metrics/", "/favicon.ico", "/metricsx",
                                  "/METRICS", "/healthz/../metrics"])
def test_unknown_paths_404(client: Client, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 404
    assert_length(resp)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", KNOWN_PATHS)
def test_other_methods_405(client: Client, poller: FakePoller, path: str,
                           method: str) -> None:
    resp = client.open(path, method=method, data=b"x")
    assert resp.status_code == 405
    assert resp.headers["Allow"] == "GET, HEAD"
    assert_length(resp)
    assert poller.touched == []


@pytest.mark.parametrize("path", ["/", "/readyz", "/healthz"])
def test_head_has_headers_and_no_body(client: Client, path: str) -> None:
    get = client.get(path)
    head = client.head(path)
    assert head.status_code == get.status_code == 200
    assert head.get_data() == b""
    assert head.headers["Content-Type"] == get.headers["Content-Type"]
    assert head.headers["Content-Length"] == get.headers["Content-Length"] != "0"


def test_head_metrics(client: Client, store: web.Store, fixed_tail: bytes) -> None:
    head = client.head("/metrics", headers={"Accept-Encoding": "gzip"})
    assert head.status_code == 200
    assert head.get_data() == b""
    assert head.headers["Content-Encoding"] == "gzip"
    assert head.headers["Content-Type"] == metrics.CONTENT_TYPE
    full = client.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert head.headers["Content-Length"] == str(len(full.get_data()))


# --------------------------------------------------------------------------- accepts_gzip


@pytest.mark.parametrize(("header", "expected"), [
    ("gzip", True),
    ("GZIP", True),
    (" gzip ", True),
    ("deflate, gzip;q=0.5", True),
    ("gzip, deflate, br", True),
    ("br;q=1.0, gzip;q=0.8, *;q=0.1", True),
    ("gzip; q=1", True),
    ("gzip;Q=0.001", True),
    ("gzip;q=0", False),
    ("gzip;q=0.000", False),
    ("gzip ; q=0", False),
    ("gzip;Q=0", False),
    ("*", True),
    ("*;q=0", False),
    ("*;q=0, gzip", True),  # an explicit entry wins over the wildcard
    ("gzip;q=0, *", False),
    ("identity", False),
    ("deflate, br", False),
    ("", False),
    ("gzipx, xgzip", False),
    ("gzip;q=abc", False),
    ("gzip;q=", False),
    ("gzip;q=2", False),
    ("gzip;q=-1", False),
    ("gzip;q=nan", False),
    (",,;;==", False),
])
def test_accepts_gzip(header: str, expected: bool) -> None:
    assert web.accepts_gzip(header) is expected


def test_a_new_exposition_is_served_from_the_next_scrape(fixed_tail: bytes) -> None:
    data = RenderInput(snapshot(), ApiCounts({}, {}, {}), 60.0)
    store = web.Store(Exposition.of(data))
    client = make_client(store, None)
    assert client.get("/metrics").get_data() == b"".join(metrics.render_accounts(data)) \
        + fixed_tail
    newer = RenderInput(Snapshot(accounts=snapshot().accounts[:1], completed_at=T0),
                        ApiCounts({}, {}, {}), 60.0)
    store.set(Exposition.of(newer))
    resp = client.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert gzip.decompress(resp.get_data()) == b"".join(metrics.render_accounts(newer)) \
        + fixed_tail
