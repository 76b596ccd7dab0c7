"""The IAM fast path (exporter.aws.query) against botocore: the same signature, the same
request body, the same pages back, and botocore's own retries, errors and accounting,
over real HTTP(S) (moto behind the counting proxy, or a small canned IAM server here).

moto ignores MaxItems and Marker and never truncates, so the page-by-page comparison
has the proxy cut moto's answers into pages (Pager below).
"""

from __future__ import annotations

import http.server
import re
import ssl
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import boto3
import botocore.auth
import pytest
import trustme
from botocore import xform_name
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotoConfig
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, EndpointConnectionError
from botocore.exceptions import SSLError as BotoSSLError
from botocore.parsers import ResponseParserError
from botocore.retries.standard import ExponentialBackoff
from botocore.serialize import create_serializer
from botocore.stub import Stubber

from exporter.aws import list_strategy, query
from exporter.aws.session import UNKNOWN_ACCOUNT, ApiStats, Target
from tests.awsproxy import AwsProxy
from tests.helpers import FAKE_ENV, add_user, iam_client, make_config

NS = "https://iam.amazonaws.com/doc/2010-05-08/"
FORM = "application/x-www-form-urlencoded; charset=utf-8"
ACCESS_KEY = FAKE_ENV["AWS_ACCESS_KEY_ID"]
# Every character IAM allows in a user name: letters, digits and +=,.@_-
ODD_NAMES = ("a+b=c,d.e@f_g-h", "Zz09+=,.@_-", "=leading.and.trailing@", "x" * 64)
CANNED_KEY_ID = "AKIAIOSFODNN7CANNED1"
# moto's ListAccessKeys answer, with IsTruncated as IAM sends it.
KEYS_XML = (
    f'<ListAccessKeysResponse xmlns="{NS}"><ListAccessKeysResult><AccessKeyMetadata>'
    f"<member><UserName>alice</UserName><AccessKeyId>{CANNED_KEY_ID}</AccessKeyId>"
    "<Status>Active</Status><CreateDate>2024-01-02T03:04:05.123456Z</CreateDate></member>"
    "</AccessKeyMetadata><IsTruncated>false</IsTruncated></ListAccessKeysResult>"
    "<ResponseMetadata><RequestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</RequestId>"
    "</ResponseMetadata></ListAccessKeysResponse>").encode()


# -- helpers -----------------------------------------------------------------------------


def make_target(url: str, **aws: Any) -> tuple[Target, ApiStats]:
    """A Target (the exporter's own client set-up) on url, and its call accounting."""
    stats = ApiStats()
    return Target(make_config(aws={"endpoint_url": url, **aws}), stats), stats


def learnt(target: Target) -> query.QueryClient:
    """The target's fast path, after one botocore call of its IAM client (not one of the
    fast path's operations) taught it the endpoint."""
    lists = target.iam_lists()
    assert lists.endpoint is None
    target.iam().get_account_summary()
    assert lists.endpoint is not None, lists.unusable
    return lists


def counted(stats: ApiStats, operation: str) -> tuple[int, dict[str, int], int]:
    """(calls, errors by code, retries) that ApiStats holds for one IAM operation."""
    counts = stats.counts()
    key = (UNKNOWN_ACCOUNT, "iam", operation)
    return (counts.calls.get(key, 0),
            {k[3]: n for k, n in counts.errors.items() if k[:3] == key},
            counts.retries.get(key, 0))


SIGNED = ("Authorization", "X-Amz-Date", "X-Amz-Security-Token", "Content-Type")


def botocore_signature(url: str, body: bytes, creds: Credentials, region: str,
                       now: datetime, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The signed headers botocore's SigV4Auth gives the fast path's request at now."""
    monkeypatch.setattr(botocore.auth, "get_current_datetime",
                        lambda: now.astimezone(UTC).replace(tzinfo=None))
    request = AWSRequest("POST", url, data=body, headers={"Content-Type": FORM})
    botocore.auth.SigV4Auth(creds, "iam", region).add_auth(request)
    return {k: request.headers.get(k) for k in SIGNED}


class Pager:
    """Makes the proxy cut moto's list answers into pages of ``sizes[action]`` members,
    with IsTruncated and an opaque Marker that needs escaping in a form body."""

    MARKER = "AQ+/{}=="

    def __init__(self, proxy: AwsProxy, sizes: dict[str, int]) -> None:
        self._sizes = sizes
        self._request = threading.local()  # the Marker of the request being answered
        proxy.rule, proxy.rewrite = self._rule, self._rewrite

    def _rule(self, action: str, params: dict[str, list[str]]) -> None:
        marker = params.get("Marker", [""])[0]
        match = re.fullmatch(r"AQ\+/(\d+)==", marker)
        assert match or not marker, f"unexpected Marker {marker!r}"
        self._request.start = int(match[1]) if match else 0

    def _rewrite(self, action: str, data: bytes) -> bytes:
        if action not in self._sizes:
            return data
        start, size = self._request.start, self._sizes[action]
        root = ET.fromstring(data)
        result = root.find(f"{{{NS}}}{action}Result")
        assert result is not None, data
        listed = result.find(f"{{{NS}}}{query.LISTS[action]}")
        assert listed is not None, data
        members = list(listed)
        for member in members[:start] + members[start + size:]:
            listed.remove(member)
        for name in ("IsTruncated", "Marker"):
            for old in result.findall(f"{{{NS}}}{name}"):
                result.remove(old)
        more = start + size < len(members)
        ET.SubElement(result, f"{{{NS}}}IsTruncated").text = str(more).lower()
        if more:
            ET.SubElement(result, f"{{{NS}}}Marker").text = self.MARKER.format(start + size)
        return ET.tostring(root)


FIELDS = ("UserName", "Path", "AccessKeyId", "Status", "CreateDate", "Tags")


def pages(call: Callable[..., Any], operation: str, params: dict[str, Any]
          ) -> list[dict[str, Any]]:
    """Every page of a Marker-paginated call, reduced to the fields the exporter reads."""
    out: list[dict[str, Any]] = []
    marker = None
    while len(out) < 50:
        page = call(**params, **({"Marker": marker} if marker else {}))
        out.append({"items": [{f: m[f] for f in FIELDS if f in m}
                              for m in page[query.LISTS[operation]]],
                    "IsTruncated": page.get("IsTruncated", False),
                    "Marker": page.get("Marker")})
        if not page.get("IsTruncated"):
            return out
        marker = page["Marker"]
    raise AssertionError(f"{operation} never stopped paging")


class _CannedHandler(http.server.BaseHTTPRequestHandler):
    server: CannedIam
    protocol_version = "HTTP/1.1"

    def log_message(self, *_: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.count("connections")

    def do_POST(self) -> None:
        form = dict(parse_qsl(self.rfile.read(int(self.headers.get("Content-Length") or 0))
                              .decode()))
        self.server.count("requests")
        # The canned keys, wrapped as the answer to whichever Action was asked.
        answer = KEYS_XML.replace(b"ListAccessKeys", form.get("Action", "").encode())
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
        # Closes the connection after this answer, without saying so (no Connection:
        # close): like a server's idle timeout just after an answer.
        self.close_connection = self.server.close_after_answer


class CannedIam(http.server.ThreadingHTTPServer):
    """Answers every POST (any Action) with the keys of KEYS_XML over kept-alive HTTP/1.1 (TLS when
    given a context), counting connections, requests and closed connections."""

    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None,
                 close_after_answer: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _CannedHandler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.close_after_answer = close_after_answer
        self.seen = {"connections": 0, "requests": 0, "closed": 0}
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server_address[1]}"

    def count(self, what: str) -> None:
        with self._cond:
            self.seen[what] += 1
            self._cond.notify_all()

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        self.count("closed")

    def wait_all_closed(self) -> None:
        """Until every connection opened so far has been closed by this side."""
        with self._cond:
            assert self._cond.wait_for(
                lambda: self.seen["closed"] == self.seen["connections"], timeout=10), self.seen

    def __enter__(self) -> CannedIam:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture
def backoffs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """botocore's retry backoff without the wait; the attempt numbers it was asked about
    (so a test sees that the fast path asked botocore's retry handler)."""
    asked: list[int] = []

    def delay_amount(self: ExponentialBackoff, context: Any) -> float:
        asked.append(context.attempt_number)
        return 0.0

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", delay_amount)
    return asked


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy settings in the environment (whatever the machine has)."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_bundle(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def tls_server(ca: trustme.CA) -> Iterator[CannedIam]:
    """The canned IAM server over TLS, with a certificate for 127.0.0.1 from ca."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    with CannedIam(tls=context) as server:
        yield server


# -- 1, 2: the request, byte for byte --------------------------------------------------


DAY1 = datetime(2024, 2, 28, 23, 59, 59, tzinfo=UTC)
DAY2 = datetime(2024, 2, 29, 0, 0, 1, tzinfo=UTC)
SECRET = FAKE_ENV["AWS_SECRET_ACCESS_KEY"]
TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVzLWVhc3QtMSJHMEUCIQ+token=="
# One Signer signs these in order: its cached key must follow the day and the secret.
# Each step changes one thing: the token (same key), the day, the secret, the day.
SIGNINGS = [(DAY1, Credentials(ACCESS_KEY, SECRET)),
            (DAY1, Credentials(ACCESS_KEY, SECRET, TOKEN)),
            (DAY2, Credentials(ACCESS_KEY, SECRET, TOKEN)),
            (DAY2, Credentials(ACCESS_KEY, "other/Secret+Key", TOKEN)),
            (DAY1, Credentials(ACCESS_KEY, "other/Secret+Key"))]


@pytest.mark.parametrize("url", ["https://iam.amazonaws.com/", "http://127.0.0.1:5000/",
                                 "http://LocalHost:80/", "https://[::1]:8443/"])
@pytest.mark.parametrize("region", ["us-east-1", "cn-north-1"])
def test_signer_signs_exactly_as_botocores_sigv4(client: Any, url: str, region: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Signer.headers gives botocore's Authorization, X-Amz-Date and token headers for
    the fast path's request: default and explicit ports, with and without a session
    token, every user-name character, across a day change and a secret change."""
    signer = query.Signer("iam", region)
    host = query.signed_host(urlsplit(url))
    serializer = create_serializer("query")
    model = client.meta.service_model.operation_model("ListAccessKeys")
    for now, creds in SIGNINGS:
        for name in ODD_NAMES:
            body = query.form(serializer, model, {"UserName": name, "Marker": "AQ+/1=="})
            expected = botocore_signature(url, body, creds, region, now, monkeypatch)
            got = signer.headers(creds, host, body, now=now)
            assert {k: got.get(k) for k in SIGNED} == expected, (now, creds, name)


FORMS = [
    ("ListAccessKeys", {"UserName": ODD_NAMES[0]}),
    ("ListAccessKeys", {"UserName": ODD_NAMES[1], "Marker": "AQ+/Zm9v/YmFy=="}),
    ("ListUsers", {"MaxItems": 1000}),
    ("ListUsers", {"MaxItems": 1000, "Marker": "AAE/+x=="}),
    ("GetAccountAuthorizationDetails", {"Filter": ["User"], "MaxItems": 1000}),
    ("GetAccountAuthorizationDetails",
     {"Filter": ["User", "Role"], "MaxItems": 1000, "Marker": "m+/="}),
]


@pytest.mark.parametrize("operation, params", FORMS)
def test_form_is_botocores_query_body(client: Any, operation: str,
                                      params: dict[str, Any]) -> None:
    """form() gives the body botocore's Query serializer gives, field for field in the
    same order, and the same bytes botocore puts on the wire (its urlencoded dict)."""
    model = client.meta.service_model.operation_model(operation)
    serialized = create_serializer("query").serialize_to_request(params, model)["body"]
    body = query.form(create_serializer("query"), model, params)
    assert parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=True) == [
        (k, str(v)) for k, v in serialized.items()]
    wire = AWSRequest("POST", "https://iam.amazonaws.com/", data=serialized).prepare().body
    assert isinstance(wire, str) and body == wire.encode()


# -- 3: the pages, against moto ----------------------------------------------------------


SEEDED = {  # name: (key statuses, path, tags)
    "alice": (("Active",), "/", {}),
    "b+o=b,x.y@z_w-9": (("Active", "Inactive"), "/division/team/",
                        {"team": "blue", "cost-center": "1+1=2"}),
    "carol": ((), "/", {"owner": "carol@example.com"}),
    "Dave_01": (("Inactive",), "/ops/", {}),
    "eve.e-2": (("Active", "Active"), "/", {}),
}


def test_fast_path_pages_equal_botocores(iam: Any, proxy: AwsProxy) -> None:
    """Page by page, ListAccessKeys, ListUsers and GetAccountAuthorizationDetails on the
    fast path give what a plain botocore client gives (users, paths, keys, statuses,
    dates, tags, IsTruncated, Marker); each page is one request and one counted call."""
    for name, (statuses, path, tags) in SEEDED.items():
        add_user(iam, name, statuses, path=path, tags=tags)
    Pager(proxy, {"ListAccessKeys": 1, "ListUsers": 2, "GetAccountAuthorizationDetails": 2})
    target, stats = make_target(proxy.url)
    lists = learnt(target)
    reference = iam_client(proxy.url)  # botocore as it comes, through the same pager
    walks: list[tuple[str, dict[str, Any]]] = [
        ("ListAccessKeys", {"UserName": name}) for name in SEEDED] + [
        ("ListUsers", {"MaxItems": 2}),
        ("GetAccountAuthorizationDetails", {"Filter": ["User"], "MaxItems": 2})]
    fast: dict[str, list[dict[str, Any]]] = {}
    for operation, params in walks:
        sent, calls = proxy.counts()[operation], counted(stats, operation)[0]
        got = pages(getattr(lists, xform_name(operation)), operation, params)
        assert proxy.counts()[operation] - sent == len(got)
        assert counted(stats, operation)[0] - calls == len(got)
        assert got == pages(getattr(reference, xform_name(operation)), operation, params)
        fast[params.get("UserName", operation)] = got
    # Not vacuous: the fast path's pages hold what was seeded, over several pages.
    for name, (statuses, _, _) in SEEDED.items():
        assert [[(k["UserName"], k["Status"]) for k in p["items"]] for p in fast[name]] == (
            [[(name, s)] for s in statuses] or [[]])
    details = fast["GetAccountAuthorizationDetails"]
    assert [p["Marker"] for p in details] == ["AQ+/2==", "AQ+/4==", None]
    assert {u["UserName"]: (u["Path"], {t["Key"]: t["Value"] for t in u.get("Tags", [])})
            for p in details for u in p["items"]} == {
        name: (path, tags) for name, (_, path, tags) in SEEDED.items()}
    assert all(isinstance(u["CreateDate"], datetime) and u["CreateDate"].tzinfo is not None
               for p in details for u in p["items"])
    assert len(fast["ListUsers"]) == 3
    assert counted(stats, "ListAccessKeys")[1:] == ({}, 0)


# -- 4, 5, 6: retries, errors and their accounting --------------------------------------


@pytest.mark.parametrize("fault", ["throttle", "http500", "reset"])
def test_a_transient_fault_is_retried_by_botocores_handler(
        iam: Any, proxy: AwsProxy, backoffs: list[int], fault: str) -> None:
    """One throttled, failed or cut-off request is retried (botocore's needs-retry
    handler decides and gives the delay): the call succeeds after 2 requests and is
    counted as one call with one retry."""
    add_user(iam, "alice", ("Active",))
    target, stats = make_target(proxy.url)
    lists = learnt(target)
    proxy.modes["ListAccessKeys"], proxy.fault_budget = fault, 1
    page = lists.list_access_keys(UserName="alice")
    assert [(k["UserName"], k["Status"]) for k in page["AccessKeyMetadata"]] == [
        ("alice", "Active")]
    assert page["ResponseMetadata"]["RetryAttempts"] == 1
    assert (proxy.counts()["ListAccessKeys"], proxy.faults["ListAccessKeys"]) == (2, 1)
    assert backoffs == [1]
    assert counted(stats, "ListAccessKeys") == (1, {}, 1)


def test_retries_stop_at_max_attempts_with_botocores_error(
        iam: Any, proxy: AwsProxy, backoffs: list[int]) -> None:
    """Throttled for good with max_attempts 3: exactly 3 requests, then the error
    botocore itself raises for the same answers (class, code, operation, message); one
    call with 2 retries and the error code is counted."""
    add_user(iam, "alice", ("Active",))
    target, stats = make_target(proxy.url, max_attempts=3)
    lists = learnt(target)
    proxy.modes["ListAccessKeys"] = "throttle"
    with pytest.raises(ClientError) as fast:
        lists.list_access_keys(UserName="alice")
    assert proxy.counts()["ListAccessKeys"] == 3
    assert backoffs == [1, 2]
    assert counted(stats, "ListAccessKeys") == (1, {"Throttling": 1}, 2)
    assert fast.value.response["Error"]["Code"] == "Throttling"
    assert fast.value.operation_name == "ListAccessKeys"
    with pytest.raises(ClientError) as slow:
        target.iam().list_access_keys(UserName="alice")
    assert type(fast.value) is type(slow.value)
    assert str(fast.value) == str(slow.value)  # "... (reached max retries: 2): ..."
    assert counted(stats, "ListAccessKeys") == (2, {"Throttling": 2}, 4)


@pytest.mark.parametrize("fault, code, modelled", [
    ("deny", "AccessDenied", None),
    ("no_such_entity", "NoSuchEntity", "NoSuchEntityException"),
])
def test_a_non_retryable_error_is_raised_after_one_request(
        iam: Any, proxy: AwsProxy, fault: str, code: str, modelled: str | None) -> None:
    """AccessDenied and NoSuchEntity are not retried: one request, then the exception
    class botocore raises for the code (the client's modelled class when IAM has one)."""
    add_user(iam, "alice", ("Active",))
    target, stats = make_target(proxy.url)
    lists = learnt(target)
    proxy.modes["ListAccessKeys"] = fault
    with pytest.raises(ClientError) as fast:
        lists.list_access_keys(UserName="alice")
    assert proxy.counts()["ListAccessKeys"] == 1
    assert counted(stats, "ListAccessKeys") == (1, {code: 1}, 0)
    assert (fast.value.response["Error"]["Code"], fast.value.operation_name) == (
        code, "ListAccessKeys")
    expected = getattr(target.iam().exceptions, modelled) if modelled else ClientError
    assert type(fast.value) is expected
    with pytest.raises(ClientError) as slow:
        target.iam().list_access_keys(UserName="alice")
    assert type(slow.value) is expected and str(fast.value) == str(slow.value)


def test_list_keys_on_the_fast_path_treats_a_missing_user_as_gone(
        iam: Any, proxy: AwsProxy) -> None:
    """list_strategy.list_keys over the fast path: a user moto does not know (a real
    NoSuchEntity) is None, a real one gives its keys, each with one request."""
    add_user(iam, "alice", ("Active", "Inactive"))
    target, _ = make_target(proxy.url)
    lists = learnt(target)
    assert list_strategy.list_keys(lists, "ghost") is None
    keys = list_strategy.list_keys(lists, "alice")
    assert keys is not None and sorted(k.status for k in keys) == ["Active", "Inactive"]
    assert proxy.counts()["ListAccessKeys"] == 2


def test_an_answer_that_is_not_xml_is_an_invalid_response(aws_env: dict[str, str],
                                                          proxy: AwsProxy) -> None:
    """A 200 that is not XML raises botocore's ResponseParserError after one request
    (standard mode does not retry it), counted under the same error label as on the
    botocore path."""
    target, stats = make_target(proxy.url)
    lists = learnt(target)
    proxy.modes["ListAccessKeys"] = "garbage"
    with pytest.raises(ResponseParserError):
        target.iam().list_access_keys(UserName="alice")
    assert counted(stats, "ListAccessKeys") == (1, {"ResponseParserError": 1}, 0)
    with pytest.raises(ResponseParserError):
        lists.list_access_keys(UserName="alice")
    assert proxy.counts()["ListAccessKeys"] == 2
    assert counted(stats, "ListAccessKeys") == (2, {"ResponseParserError": 2}, 0)


# -- 7: kept-alive connections --------------------------------------------------------


def test_an_idle_connection_closed_by_the_server_is_not_an_error(
        aws_env: dict[str, str]) -> None:
    """After the server closed the kept-alive connection while it was idle, the next
    call opens a new one: one request, no retry counted."""
    with CannedIam(close_after_answer=True) as server:
        target, stats = make_target(server.url)
        lists = learnt(target)
        for _ in range(2):
            server.wait_all_closed()  # the last answer's connection is closed by now
            page = lists.list_access_keys(UserName="alice")
            assert page["AccessKeyMetadata"][0]["AccessKeyId"] == CANNED_KEY_ID
            assert page["ResponseMetadata"]["RetryAttempts"] == 0
        assert counted(stats, "ListAccessKeys") == (2, {}, 0)
        assert server.seen["requests"] == server.seen["connections"] == 3


def test_a_kept_alive_connection_is_reused(aws_env: dict[str, str]) -> None:
    """While the server keeps it open, consecutive calls share one connection."""
    with CannedIam() as server:
        target, stats = make_target(server.url)
        lists = learnt(target)
        opened = server.seen["connections"]
        for _ in range(3):
            lists.list_access_keys(UserName="alice")
        assert server.seen["connections"] == opened + 1
        assert counted(stats, "ListAccessKeys") == (3, {}, 0)


# -- 8: where the fast path stands aside -------------------------------------------------


def teach(lists: query.QueryClient, url: str, signature_version: str = "v4") -> None:
    """What botocore's before-sign event hands the fast path for a request to url."""
    lists._learn(request=AWSRequest("POST", url, headers={"User-Agent": "ua/1"}),
                 signing_name="iam", region_name="us-east-1",
                 signature_version=signature_version, operation_name="GetAccountSummary")


def stubbed_lists(url: str) -> tuple[query.QueryClient, Any]:
    """A fast path around a plain IAM client for url."""
    client = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="x")
    return query.QueryClient(client, Credentials("x", "x"), 1, 1, None), client


@pytest.mark.parametrize("url, env, signature_version, why", [
    ("https://iam.amazonaws.com/", {"HTTPS_PROXY": "http://127.0.0.1:9"}, "v4", "proxy"),
    ("http://127.0.0.1:5000/", {"http_proxy": "http://127.0.0.1:9"}, "v4", "proxy"),
    ("http://127.0.0.1:5000/iam/", {}, "v4", "request shape"),
    ("http://127.0.0.1:5000/?x=1", {}, "v4", "request shape"),
    ("https://iam.amazonaws.com/", {}, "v2", "signature v2"),
])
def test_stands_aside_for_proxies_paths_and_other_signatures(
        no_proxy_env: None, monkeypatch: pytest.MonkeyPatch, url: str, env: dict[str, str],
        signature_version: str, why: str) -> None:
    """Behind a proxy, under a path or query, or with another signature than SigV4 the
    fast path learns nothing, and every call goes to botocore (here its Stubber)."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    lists, client = stubbed_lists(url)
    teach(lists, url, signature_version)
    assert (lists.unusable, lists.endpoint) == (why, None)
    teach(lists, "https://iam.amazonaws.com/")  # for good: a later call changes nothing
    assert (lists.unusable, lists.endpoint) == (why, None)
    with Stubber(client) as stub:
        stub.add_response("list_access_keys", {"AccessKeyMetadata": [
            {"UserName": "alice", "AccessKeyId": CANNED_KEY_ID, "Status": "Active"}]},
            {"UserName": "alice"})
        page = lists.list_access_keys(UserName="alice")
        stub.assert_no_pending_responses()
    assert page["AccessKeyMetadata"][0]["AccessKeyId"] == CANNED_KEY_ID


@pytest.mark.parametrize("url, env, host", [
    ("https://iam.amazonaws.com/", {}, "iam.amazonaws.com"),
    ("https://iam.amazonaws.com", {"HTTP_PROXY": "http://127.0.0.1:9"}, "iam.amazonaws.com"),
    ("https://iam.amazonaws.com:443/", {"HTTPS_PROXY": "http://127.0.0.1:9",
                                        "NO_PROXY": "amazonaws.com"}, "iam.amazonaws.com"),
    ("http://127.0.0.1:5000/", {}, "127.0.0.1:5000"),
])
def test_learns_the_endpoint_when_nothing_stands_in_the_way(
        no_proxy_env: None, monkeypatch: pytest.MonkeyPatch, url: str, env: dict[str, str],
        host: str) -> None:
    """The control of the test above: a proxy for the other scheme or a bypassed one
    does not stop the fast path, which takes botocore's URL, host and user agent."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    lists, _ = stubbed_lists(url)
    teach(lists, url)
    assert lists.unusable == ""
    assert lists.endpoint is not None
    scheme = urlsplit(url).scheme
    assert (lists.endpoint.url, lists.endpoint.host, lists.endpoint.user_agent) == (
        f"{scheme}://{urlsplit(url).netloc}/", host, "ua/1")


# -- 9: TLS ------------------------------------------------------------------------------


def test_tls_is_verified_against_the_configured_bundle(
        aws_env: dict[str, str], tls_server: CannedIam, ca_bundle: str) -> None:
    """With the CA bundle botocore was given the fast path talks TLS to the server; with
    certifi's bundle (verify None) it refuses the server's certificate with botocore's
    SSLError and sends nothing."""
    client = boto3.client("iam", endpoint_url=tls_server.url, region_name="us-east-1",
                          verify=ca_bundle,
                          config=BotoConfig(retries={"total_max_attempts": 1}))
    creds = Credentials(ACCESS_KEY, FAKE_ENV["AWS_SECRET_ACCESS_KEY"])
    trusting = query.QueryClient(client, creds, 5, 5, ca_bundle)
    default = query.QueryClient(client, creds, 5, 5, None)
    client.get_account_summary()  # botocore, verifying with the bundle, teaches both
    assert trusting.endpoint is not None and default.endpoint is not None
    sent = tls_server.seen["requests"]
    page = trusting.list_access_keys(UserName="alice")
    assert page["AccessKeyMetadata"][0]["AccessKeyId"] == CANNED_KEY_ID
    assert tls_server.seen["requests"] == sent + 1
    with pytest.raises(BotoSSLError, match="CERTIFICATE_VERIFY_FAILED"):
        default.list_access_keys(UserName="alice")
    assert tls_server.seen["requests"] == sent + 1


# Where botocore reads settings from the environment, the fast path reads the same.


@pytest.mark.parametrize("variable", ["AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE"])
def test_the_fast_path_trusts_the_bundle_botocore_trusts(
        aws_env: dict[str, str], tls_server: CannedIam, ca_bundle: str,
        monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    """A Target whose botocore client verifies the server with a CA bundle from the
    environment gets a fast path that verifies with it too."""
    for var in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE"):  # the machine's own, if any
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(variable, ca_bundle)
    target, stats = make_target(tls_server.url, max_attempts=1)
    lists = learnt(target)  # botocore, verifying with the bundle
    page = lists.list_access_keys(UserName="alice")
    assert page["AccessKeyMetadata"][0]["AccessKeyId"] == CANNED_KEY_ID
    assert counted(stats, "ListAccessKeys") == (1, {}, 0)


def test_a_refused_connection_is_retried_like_botocore(
        aws_env: dict[str, str], backoffs: list[int]) -> None:
    """A connection the endpoint refuses is retried on the fast path as botocore
    retries it: the same error, one counted retry each with max_attempts 2."""
    with CannedIam(close_after_answer=True) as server:
        target, stats = make_target(server.url, max_attempts=2)
        lists = learnt(target)
    # The server is gone: every connection is refused.
    with pytest.raises(EndpointConnectionError):
        target.iam().list_access_keys(UserName="alice")
    assert counted(stats, "ListAccessKeys") == (1, {"EndpointConnectionError": 1}, 1)
    with pytest.raises(EndpointConnectionError):
        lists.list_access_keys(UserName="alice")
    assert counted(stats, "ListAccessKeys") == (2, {"EndpointConnectionError": 2}, 2)
    assert backoffs == [1, 1]
