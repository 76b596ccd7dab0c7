"""boto3 sessions and clients for each watched account, and accounting of every API call.

A target is one account: either the account of the default credential chain, or an
account reached through ``sts:AssumeRole``. Its clients are built once and reused; the
assumed-role credentials refresh themselves before they expire (botocore's refreshable
credentials), so no read pays for an AssumeRole it does not need.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import xml.parsers.expat
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
import botocore.session
from botocore.config import Config as BotoConfig
from botocore.credentials import AssumeRoleCredentialFetcher, DeferredRefreshableCredentials
from botocore.exceptions import ConnectionClosedError

from exporter import __version__
from exporter.aws.budget import THROTTLING_CODES, Budget
from exporter.aws.errors import CollectionError
from exporter.aws.last_used import LastUsedCache
from exporter.config import AccountConfig, Config

if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient
    from mypy_boto3_sts import STSClient

UNKNOWN_ACCOUNT = "unknown"


@dataclass(frozen=True, slots=True)
class ApiCounts:
    calls: dict[tuple[str, str, str], int]  # (account_id, service, operation)
    errors: dict[tuple[str, str, str, str], int]  # (..., code)
    retries: dict[tuple[str, str, str], int]
    # IAM HTTP requests (every attempt) and throttled answers, by (account_id, operation).
    requests: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    throttles: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    # The IAM request budget in effect, requests per second, by account id.
    budget: dict[str, float] = dataclasses.field(default_factory=dict)


class ApiStats:
    """Thread-safe counters of AWS API calls, errors (by code) and retries, and of the
    IAM requests each account's budget let through."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: Counter[tuple[str, str, str]] = Counter()
        self._errors: Counter[tuple[str, str, str, str]] = Counter()
        self._retries: Counter[tuple[str, str, str]] = Counter()
        self._requests: Counter[tuple[str, str]] = Counter()
        self._throttles: Counter[tuple[str, str]] = Counter()
        self._budgets: dict[str, Budget] = {}

    def request(self, account_id: str, operation: str, throttled: bool) -> None:
        with self._lock:
            self._requests[(account_id, operation)] += 1
            if throttled:
                self._throttles[(account_id, operation)] += 1

    def track_budget(self, account_id: str, budget: Budget) -> None:
        with self._lock:
            self._budgets[account_id] = budget

    def record(self, account_id: str, service: str, operation: str,
               error: str | None, retries: int) -> None:
        key = (account_id, service, operation)
        with self._lock:
            self._calls[key] += 1
            if error:
                self._errors[(*key, error)] += 1
            if retries:
                self._retries[key] += retries

    def counts(self) -> ApiCounts:
        with self._lock:
            budgets = dict(self._budgets)
            counts = ApiCounts(dict(self._calls), dict(self._errors), dict(self._retries),
                               dict(self._requests), dict(self._throttles))
        counts.budget.update({acct: b.rate() for acct, b in budgets.items()})
        return counts

    def _counters(self) -> tuple[Counter[Any], ...]:
        return (self._calls, self._errors, self._retries, self._requests, self._throttles)

    def forget(self, keep: set[str]) -> None:
        """Drops the counts of every account not in keep."""
        with self._lock:
            for counter in self._counters():
                for key in [k for k in counter if k[0] not in keep]:
                    del counter[key]
            for acct in [a for a in self._budgets if a not in keep]:
                del self._budgets[acct]

    def relabel(self, old: str, new: str) -> None:
        """Moves counts recorded before the account id was known to the real id."""
        with self._lock:
            for counter in self._counters():
                for key in [k for k in counter if k[0] == old]:
                    counter[(new, *key[1:])] += counter.pop(key)
            if old in self._budgets:
                self._budgets[new] = self._budgets.pop(old)


def _instrument(client: Any, service: str, stats: ApiStats, target: Target) -> None:
    """Counts every logical call (after botocore's retries) and each retry attempt."""

    def before_send(request: Any, **_: Any) -> None:
        ctx = request.context
        ctx["iamx_attempts"] = ctx.get("iamx_attempts", 0) + 1
        if service == "iam":
            target.budget.acquire()

    def after_attempt(response: Any, operation: Any, **_: Any) -> None:
        # needs-retry: once per attempt, with the answer (or None after a network error).
        code = None
        if response is not None:
            code = response[1].get("Error", {}).get("Code")
        throttled = code in THROTTLING_CODES
        if throttled:
            target.budget.throttled()
        stats.request(target.account_id, operation.name, throttled)

    def after_call(http_response: Any, parsed: dict[str, Any], model: Any,
                   context: dict[str, Any], **_: Any) -> None:
        code = None
        if http_response.status_code >= 300:
            code = str(parsed.get("Error", {}).get("Code") or f"HTTP{http_response.status_code}")
        attempts = context.get("iamx_attempts", 1)
        stats.record(target.account_id, service, model.name, code, max(attempts - 1, 0))

    def after_call_error(exception: BaseException, context: dict[str, Any],
                         event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        attempts = context.get("iamx_attempts", 1)
        stats.record(target.account_id, service, operation, type(exception).__name__,
                     max(attempts - 1, 0))

    events = client.meta.events
    events.register(f"before-send.{service}", before_send)
    if service == "iam":
        events.register_first(f"needs-retry.{service}", after_attempt)
    events.register(f"after-call.{service}", after_call)
    events.register(f"after-call-error.{service}", after_call_error)


def _unparsable(body: bytes, protocol: str) -> bool:
    """Whether a 2xx answer's body cannot be what the protocol promises: empty, or not
    well-formed XML or JSON."""
    if not body.strip():
        return True
    try:
        if "json" in protocol:
            json.loads(body)
        else:
            xml.parsers.expat.ParserCreate().Parse(body, True)
    except (ValueError, xml.parsers.expat.ExpatError):
        return True
    return False


class UnusableResponseError(ConnectionClosedError):
    """A 2xx answer that cannot be what the protocol promises: retried like the dropped
    connection it amounts to, but named for what it is (not a network fault)."""

    fmt = ("Unusable response (empty, cut short or not well-formed) from endpoint URL: "
           '"{endpoint_url}".')


def harden(client: Any) -> None:
    """Every answer that cannot be used is retried, like a dropped connection.

    botocore reads bodies with urllib3's ``enforce_content_length`` off, and parses them
    outside its retry loop: a body cut short, an empty 200 or truncated XML with a
    matching Content-Length raise ResponseParserError at once, never retried and never
    seen by ``needs-retry``. Checked right after the send, each is raised as the
    ConnectionClosedError it amounts to (UnusableResponseError, so that its error code
    says what happened), which every retry mode retries (and the request accounting
    counts as an attempt)."""
    http = client._endpoint.http_session
    send = http.send
    protocol = str(client.meta.service_model.protocol)

    def checked(request: Any) -> Any:
        response = send(request)
        if request.stream_output:
            return response
        expected = response.headers.get("content-length")
        body = response.content
        if ((expected is not None and expected.isdigit() and len(body) < int(expected))
                or (200 <= response.status_code < 300 and _unparsable(body, protocol))):
            raise UnusableResponseError(endpoint_url=request.url)
        return response

    http.send = checked


_loader_lock = threading.Lock()
_shared_loader: Any = None


def core_session() -> botocore.session.Session:
    """A botocore session that shares one data loader (the parsed service models, a few
    MB each) with every other session, uses the regional STS endpoint, and parses
    timestamps without dateutil."""
    global _shared_loader
    core = botocore.session.get_session()
    with _loader_lock:
        if _shared_loader is None:
            _shared_loader = core.get_component("data_loader")
        else:
            core.register_component("data_loader", _shared_loader)
    core.set_config_variable("sts_regional_endpoints", "regional")
    return core


def client_settings(cfg: Config, account: AccountConfig | None) -> tuple[Any, ...]:
    """What a target's sessions and clients are built from. The account's alias and
    strategy are not: renaming an account must not cost a new AssumeRole."""
    if account is not None:
        account = dataclasses.replace(account, name=None, strategy=None)
    return (account, cfg.aws, cfg.region, cfg.endpoint_url, cfg.collection.concurrency)


class Target:
    """One watched account and its lazily built, cached clients."""

    def __init__(self, cfg: Config, stats: ApiStats,
                 account: AccountConfig | None = None,
                 account_id: str = UNKNOWN_ACCOUNT) -> None:
        self._cfg = cfg
        self._stats = stats
        self.account = account
        self.key = account.role_arn if account else "self"
        self.name = (account.name or "") if account else ""
        self.account_id = account.account_id if account else account_id
        self.strategy = account.strategy if account else None
        self.last_used_cache = LastUsedCache()
        self.budget = Budget(cfg.aws.max_requests_per_second)
        stats.track_budget(self.account_id, self.budget)
        self._base: boto3.Session | None = None
        self._lock = threading.Lock()
        self._session_obj: boto3.Session | None = None
        self._clients: dict[str, Any] = {}

    def settings(self) -> tuple[Any, ...]:
        return client_settings(self._cfg, self.account)

    def adopt(self, cfg: Config, account: AccountConfig | None = None) -> None:
        """Takes a new config (and account entry) with the same client settings: the
        sessions and caches are kept."""
        self._cfg = cfg
        if account is not None:
            self.account, self.name, self.strategy = account, account.name or "", account.strategy

    def _boto_config(self) -> BotoConfig:
        aws = self._cfg.aws
        return BotoConfig(
            region_name=self._cfg.region,
            # total_max_attempts counts the first attempt; botocore's max_attempts would not.
            retries={"mode": aws.retry_mode, "total_max_attempts": aws.max_attempts},
            connect_timeout=aws.connect_timeout_seconds,
            read_timeout=aws.read_timeout_seconds,
            max_pool_connections=self._cfg.collection.concurrency + 2,
            user_agent_extra=f"iam-key-exporter/{__version__}",
        )

    def _base_session(self) -> boto3.Session:
        if self._base is None:
            self._base = boto3.Session(botocore_session=core_session(),
                                       region_name=self._cfg.region)
        return self._base

    def _session(self) -> boto3.Session:
        base = self._base_session()
        if self.account is None:
            return base
        acct = self.account
        extra: dict[str, Any] = {"RoleSessionName": acct.session_name}
        if acct.external_id:
            extra["ExternalId"] = acct.external_id
        source = base.get_credentials()
        if source is None:
            raise CollectionError("no AWS credentials found to assume the role with",
                                  code="NoCredentialsError")
        source_sts = self._make_client(base, "sts")

        def client_creator(*_: Any, **__: Any) -> Any:
            return source_sts

        fetcher = AssumeRoleCredentialFetcher(
            client_creator=client_creator, source_credentials=source,
            role_arn=acct.role_arn, extra_args=extra,
        )
        creds = DeferredRefreshableCredentials(
            method="assume-role", refresh_using=fetcher.fetch_credentials
        )
        core = core_session()
        core._credentials = creds  # type: ignore[attr-defined]  # botocore has no setter
        return boto3.Session(botocore_session=core, region_name=self._cfg.region)

    def _make_client(self, session: boto3.Session, service: str) -> Any:
        client = session.client(
            service,  # type: ignore[call-overload]
            endpoint_url=self._cfg.endpoint_url,
            config=self._boto_config(),
        )
        _instrument(client, service, self._stats, self)
        harden(client)
        return client

    def client(self, service: str) -> Any:
        """A cached, instrumented client of this account's session."""
        with self._lock:
            client = self._clients.get(service)
            if client is None:
                if self._session_obj is None:
                    self._session_obj = self._session()
                client = self._clients[service] = self._make_client(self._session_obj, service)
            return client

    def iam(self) -> IAMClient:
        return self.client("iam")  # type: ignore[no-any-return]

    def fresh_iam(self) -> None:
        """A new IAM client from the next call on (the session and its credentials stay):
        botocore's retry quota lives in the client, and one drained by a throttling storm
        must not outlive the interval it happened in."""
        with self._lock:
            self._clients.pop("iam", None)

    def resolve_account_id(self) -> str:
        """The account id, from sts:GetCallerIdentity the first time it is not known."""
        if self.account_id == UNKNOWN_ACCOUNT:
            sts: STSClient = self.client("sts")
            self.account_id = sts.get_caller_identity()["Account"]
            self._stats.relabel(UNKNOWN_ACCOUNT, self.account_id)
        return self.account_id
