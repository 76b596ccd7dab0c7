"""IAM's paginated reads (ListAccessKeys once per user; ListUsers and
GetAccountAuthorizationDetails once per page) without botocore's per-call machinery.

Through botocore each call costs about 2 ms of CPU under the GIL (endpoint rules,
urllib3, model-driven parsing), so at 16 calls in flight a cycle is CPU-bound long before
it is latency-bound. This client serializes the request with botocore's own Query
serializer, signs it with SigV4 (Signer: the signing key kept for the day), sends it over
a kept-alive ``http.client`` connection and reads a successful answer with ElementTree
(errors, which are rare, with botocore's own parser): about a quarter of the CPU.

Everything else stays botocore's. The endpoint URL, signing name and region are learnt
from the first botocore call of the same client (its ``before-sign`` event), and every
attempt goes through the client's own ``before-send``, ``needs-retry`` and
``after-call``/``after-call-error`` events, so retry decisions, backoff, the retry
quota, adaptive rate limiting and the exporter's call counting are exactly botocore's.
Errors are botocore's modelled ``ClientError`` classes and connection exceptions.

The client stands aside (every call goes through botocore) until it has learnt the
endpoint, and for good when the endpoint is reached through a proxy, has a path, or is
signed with anything but SigV4.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import os
import ssl
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import botocore.httpsession
import botocore.utils
from botocore.awsrequest import AWSPreparedRequest, AWSResponse, HeadersDict
from botocore.exceptions import (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from botocore.exceptions import SSLError as BotoSSLError
from botocore.hooks import first_non_none_response
from botocore.parsers import ResponseParserError, create_parser
from botocore.serialize import create_serializer
from urllib3.util.wait import wait_for_read

API_VERSION = "2010-05-08"
_FORM = "application/x-www-form-urlencoded; charset=utf-8"
_MAX_BODY = 64 * 1024 * 1024  # a page of 1,000 users with their policies: a few MB


def timestamp(value: str) -> datetime:
    """IAM's timestamps ("2024-01-02T03:04:05Z", with or without fractions) without
    dateutil, which costs a quarter of a cycle's CPU; anything else goes to botocore."""
    try:
        stamp = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        parsed: datetime = botocore.utils.parse_timestamp(value)
        return parsed
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how the client's IAM requests go, as botocore resolved them."""

    url: str  # scheme://host[:port]/
    host: str  # as signed: no default port
    signer: Signer
    user_agent: str


class _Body:
    """The raw-stream side of an AWSResponse, over bytes already read."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Any:
        yield self._data


class _Connections:
    """Kept-alive connections to one endpoint, one per call in flight."""

    def __init__(self, url: str, connect_timeout: float, read_timeout: float,
                 cafile: str | None) -> None:
        parts = urllib.parse.urlsplit(url)
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._context = ssl.create_default_context(cafile=cafile) if self._https else None
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def get(self) -> http.client.HTTPConnection:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not _dropped(conn):
                    return conn
                conn.close()
        conn = (http.client.HTTPSConnection(self._host, self._port,
                                            timeout=self._connect_timeout,
                                            context=self._context)
                if self._https else
                http.client.HTTPConnection(self._host, self._port,
                                           timeout=self._connect_timeout))
        try:
            conn.connect()
        except TimeoutError as e:
            raise ConnectTimeoutError(endpoint_url=self.url, error=e) from e
        except ssl.SSLError as e:
            raise BotoSSLError(endpoint_url=self.url, error=e) from e
        except OSError as e:
            raise EndpointConnectionError(endpoint_url=self.url, error=e) from e
        assert conn.sock is not None
        conn.sock.settimeout(self._read_timeout)
        return conn

    def put(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.append(conn)


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """An idle connection the server has closed (it is readable: EOF or junk)."""
    return conn.sock is None or bool(wait_for_read(conn.sock, timeout=0.0))


def signed_host(url: urllib.parse.SplitResult) -> str:
    """The host header as SigV4 signs it: lower case, no default port."""
    host = url.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if url.port is not None and url.port != {"http": 80, "https": 443}.get(url.scheme):
        host = f"{host}:{url.port}"
    return host


def form(serializer: Any, model: Any, params: Mapping[str, Any]) -> bytes:
    """The request body, by botocore's own Query serializer and encoding."""
    fields = serializer.serialize_to_request(params, model)["body"]
    encoded: str = botocore.utils.percent_encode_sequence(fields)
    return encoded.encode()


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _children(elem: ET.Element) -> dict[str, ET.Element]:
    return {_local(c.tag): c for c in elem}


# Each paginated read this client makes, and the list in its answer.
LISTS = {
    "ListAccessKeys": "AccessKeyMetadata",
    "ListUsers": "Users",
    "GetAccountAuthorizationDetails": "UserDetailList",
}


def _member(member: ET.Element) -> dict[str, Any]:
    """One list member: its text fields (CreateDate as a datetime) and its Tags; other
    nested structures (a user's policies and groups) are not read."""
    out: dict[str, Any] = {}
    for f in member:
        name = _local(f.tag)
        if name == "Tags":
            out["Tags"] = [{_local(t.tag): t.text or "" for t in tag} for tag in f]
        elif len(f) == 0 and f.text is not None:
            out[name] = timestamp(f.text) if name == "CreateDate" else f.text
    return out


def parse_page(operation: str, body: bytes) -> dict[str, Any]:
    """A page of one of LISTS as botocore would return it (the fields the exporter
    reads): {<list>: [...], "IsTruncated": bool, "Marker": str}."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        raise _invalid(f"{operation} answer is not XML: {e}") from None
    result = next((e for e in root if _local(e.tag) == f"{operation}Result"), None)
    if result is None:
        raise _invalid(f"{operation} answer has no {operation}Result")
    fields = _children(result)
    listed = fields.get(LISTS[operation])
    page: dict[str, Any] = {
        LISTS[operation]: [_member(m) for m in listed] if listed is not None else []}
    truncated = fields.get("IsTruncated")
    page["IsTruncated"] = truncated is not None and (truncated.text or "").strip() == "true"
    marker = fields.get("Marker")
    if marker is not None and marker.text:
        page["Marker"] = marker.text
    return page


def _invalid(message: str) -> Exception:
    return ResponseParserError(message)  # what botocore raises for the same answer


class Signer:
    """SigV4 for the one request shape this module sends (POST, form body, path "/").

    botocore's SigV4Auth re-derives the signing key and re-parses the URL on every
    request, a third of a call's CPU; this keeps the key for the day. It signs the same
    headers as botocore does (content-type, host, x-amz-date, x-amz-security-token), and
    tests/test_query.py checks that both give the same Authorization header.
    """

    def __init__(self, signing_name: str, region: str) -> None:
        self._service = signing_name
        self._region = region
        self._key: tuple[str, str, bytes] = ("", "", b"")  # (secret, day, key)

    def _signing_key(self, secret: str, day: str) -> bytes:
        cached = self._key
        if cached[0] == secret and cached[1] == day:
            return cached[2]
        key = hmac.new(f"AWS4{secret}".encode(), day.encode(), hashlib.sha256).digest()
        for part in (self._region, self._service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        self._key = (secret, day, key)
        return key

    def headers(self, credentials: Any, host: str, body: bytes,
                now: datetime | None = None) -> dict[str, str]:
        """The signed request's headers (without User-Agent, which is not signed)."""
        stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        signed = {"content-type": _FORM, "host": host, "x-amz-date": stamp}
        if credentials.token:
            signed["x-amz-security-token"] = credentials.token
        names = ";".join(signed)  # already in sorted order
        canonical = "\n".join((
            "POST", "/", "",
            "".join(f"{k}:{' '.join(v.split())}\n" for k, v in signed.items()),
            names, hashlib.sha256(body).hexdigest()))
        scope = f"{day}/{self._region}/{self._service}/aws4_request"
        to_sign = "\n".join(("AWS4-HMAC-SHA256", stamp, scope,
                              hashlib.sha256(canonical.encode()).hexdigest()))
        signature = hmac.new(self._signing_key(credentials.secret_key, day),
                             to_sign.encode(), hashlib.sha256).hexdigest()
        headers = {"Content-Type": _FORM, "Host": host, "X-Amz-Date": stamp}
        if credentials.token:
            headers["X-Amz-Security-Token"] = credentials.token
        headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
            f"SignedHeaders={names}, Signature={signature}")
        return headers


class QueryClient:
    """The paginated reads of a botocore IAM client (LISTS), on the fast path when it
    can be (see the module docstring); each returns a page as botocore would."""

    def __init__(self, client: Any, credentials: Any, connect_timeout: float,
                 read_timeout: float, verify: str | None) -> None:
        self._client = client
        self._credentials = credentials
        self._timeouts = (connect_timeout, read_timeout)
        # botocore's choice: the configured bundle (ca_bundle, AWS_CA_BUNDLE), else
        # REQUESTS_CA_BUNDLE, else certifi's.
        verify = verify or os.environ.get("REQUESTS_CA_BUNDLE")
        self._cafile = (verify if isinstance(verify, str) and verify.strip()
                        else botocore.httpsession.get_cert_path(True))
        self._events = client.meta.events
        self._models = {op: client.meta.service_model.operation_model(op) for op in LISTS}
        self._service_id = client.meta.service_model.service_id.hyphenize()
        protocol = client.meta.service_model.protocol
        self._serializer = create_serializer(protocol)
        self._error_parser = create_parser(protocol)  # errors are rare: botocore's own
        self._lock = threading.Lock()
        self.endpoint: Endpoint | None = None
        self._connections: _Connections | None = None
        # Why every call goes through botocore ("" while the fast path may be used).
        self.unusable = ""
        self._events.register(f"before-sign.{self._service_id}", self._learn)

    def _learn(self, request: Any, signing_name: str, region_name: str,
               signature_version: Any, **_: Any) -> None:
        """Takes the endpoint botocore resolved for a call of this client."""
        if self.endpoint is not None or self.unusable:
            return
        signing = request.context.get("signing") or {}
        url = urllib.parse.urlsplit(request.url)
        base = f"{url.scheme}://{url.netloc}/"
        with self._lock:
            if self.endpoint is not None or self.unusable:
                return
            if signature_version not in ("v4", "s3v4") or signing.get("request_credentials"):
                self.unusable = f"signature {signature_version}"
            elif botocore.utils.get_environ_proxies(base).get(url.scheme):
                self.unusable = "proxy"
            elif request.method != "POST" or url.query or url.path not in ("", "/"):
                self.unusable = "request shape"
            else:
                self._connections = _Connections(base, *self._timeouts, self._cafile)
                self.endpoint = Endpoint(
                    url=base,
                    host=signed_host(url),
                    signer=Signer(signing.get("signing_name") or signing_name,
                                  signing.get("region") or region_name),
                    user_agent=str(request.headers.get("User-Agent", "")),
                )

    def list_access_keys(self, **params: Any) -> Any:
        return self._read("ListAccessKeys", self._client.list_access_keys, params)

    def list_users(self, **params: Any) -> Any:
        return self._read("ListUsers", self._client.list_users, params)

    def get_account_authorization_details(self, **params: Any) -> Any:
        return self._read("GetAccountAuthorizationDetails",
                          self._client.get_account_authorization_details, params)

    def _read(self, operation: str, botocore_call: Any, params: Mapping[str, Any]) -> Any:
        if self.endpoint is None or self._connections is None:
            return botocore_call(**params)
        return self._call(operation, self.endpoint, self._connections, params)

    # -- one logical call, as botocore's client and endpoint make it ----------------------

    def _call(self, operation: str, endpoint: Endpoint, conns: _Connections,
              params: Mapping[str, Any]) -> Any:
        event = f"{self._service_id}.{operation}"
        model = self._models[operation]
        body = form(self._serializer, model, params)
        context: dict[str, Any] = {}
        attempts = 0
        while True:
            attempts += 1
            request = self._signed(endpoint, body, context)
            http_response: AWSResponse | None = None
            parsed: dict[str, Any] | None = None
            caught: Exception | None = None
            try:
                http_response = first_non_none_response(
                    self._events.emit(f"before-send.{event}", request=request))
                if http_response is None:
                    http_response = self._send(conns, request)
                parsed = (parse_page(operation, http_response.content)
                          if http_response.status_code < 300 else
                          self._error_parser.parse({"status_code": http_response.status_code,
                                                    "headers": http_response.headers,
                                                    "body": http_response.content},
                                                   model.output_shape))
            except Exception as e:  # as botocore's endpoint: the retry handler decides
                caught = e
            delay = first_non_none_response(self._events.emit(
                f"needs-retry.{event}",
                response=None if caught is not None else (http_response, parsed),
                endpoint=None, operation=model, attempts=attempts,
                caught_exception=caught, request_dict={"context": context}))
            if delay is None or delay is False:
                break
            time.sleep(delay)
        if caught is not None:
            self._events.emit(f"after-call-error.{event}", exception=caught, context=context)
            raise caught
        assert http_response is not None and parsed is not None
        parsed.setdefault("ResponseMetadata", {})["RetryAttempts"] = attempts - 1
        self._events.emit(f"after-call.{event}", http_response=http_response, parsed=parsed,
                          model=model, context=context)
        if http_response.status_code >= 300:
            code = parsed.get("Error", {}).get("Code")
            raise self._client.exceptions.from_code(code)(parsed, operation)
        return parsed

    def _signed(self, endpoint: Endpoint, body: bytes,
                context: dict[str, Any]) -> AWSPreparedRequest:
        headers = endpoint.signer.headers(self._credentials.get_frozen_credentials(),
                                          endpoint.host, body)
        headers["User-Agent"] = endpoint.user_agent
        return AWSPreparedRequest("POST", endpoint.url,
                                  HeadersDict(headers),  # type: ignore[arg-type]
                                  body, stream_output=False, context=context)

    @staticmethod
    def _send(conns: _Connections, request: AWSPreparedRequest) -> AWSResponse:
        conn = conns.get()
        try:
            conn.request("POST", "/", body=cast(bytes, request.body),
                         headers=cast(Mapping[str, str], request.headers))
            response = conn.getresponse()
            data = response.read(_MAX_BODY + 1)
            if len(data) > _MAX_BODY:
                raise http.client.HTTPException("answer larger than 64 MiB")
        except TimeoutError as e:
            conn.close()
            raise ReadTimeoutError(endpoint_url=conns.url, error=e) from e
        except ssl.SSLError as e:
            conn.close()
            raise BotoSSLError(endpoint_url=conns.url, error=e) from e
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise ConnectionClosedError(endpoint_url=conns.url, error=e) from e
        if response.will_close:
            conn.close()
        else:
            conns.put(conn)
        # AWSResponse copies the headers into its own case-insensitive dict.
        return AWSResponse(request.url, response.status, response.msg,  # type: ignore[arg-type]
                           _Body(data))

