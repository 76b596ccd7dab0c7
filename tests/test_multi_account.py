"""Many accounts end to end on the moto server: Organizations discovery, one role per
account, failure isolation, credential refresh, discovery refresh, sharding, reloads.

In process, a Poller over an AccountSet is driven one pass at a time (tests/passes.py);
its account loops keep running between passes, at the default interval (quiet).

moto keeps fake accounts apart: credentials from sts:AssumeRole into account X act as X
(see tests/test_organizations.py). The server is emptied once before this module and once
after it; the main Organization (management account 123456789012, the exporter's own
credentials) is built once and only read. Tests that change an Organization build their
own in another fake account, and every static-accounts test uses its own account ids, so
no test needs a reset (a reset would also silently move assumed credentials back to
123456789012).

A proxy (tests/awsproxy.py, extended below) sits between the exporter and moto where a
test counts AssumeRole calls per role or injects what moto cannot do (AccessDenied or a
hang on one role's AssumeRole, short-lived credentials, a failing ListAccounts).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter import metrics, sharding
from exporter.aws.accounts import AccountSet
from exporter.aws.session import ApiStats
from exporter.config import Config
from exporter.metrics import RenderInput
from exporter.poller import Poller
from tests import awsproxy
from tests.daemon import Daemon, parse_samples, sample
from tests.helpers import (
    MOTO_ACCOUNT,
    ROOT,
    add_user,
    aws,
    creds_in,
    make_config,
    subprocess_env,
)
from tests.passes import one_pass

Samples = dict[Any, float]
InProcess = Callable[[Config], tuple["Poller", ApiStats]]
# Series that are about the exporter, not an account.
GLOBAL_SERIES = {"iam_exporter_poll_interval_seconds", "iam_exporter_build_info",
                 "iam_exporter_shard_info", "iam_exporter_discovered_accounts",
                 "iam_exporter_discovery_success"}
# Per calling account (the own account lists the Organization; it has a request budget
# even where it is not watched itself).
API_SERIES = ("iam_exporter_aws_api_", "iam_exporter_iam_")
FAST = {"collection": {"last_used": "off"}}  # fewer calls; last-used is tested elsewhere


# --- the proxy: AwsProxy plus JSON-protocol actions, per-role faults and short credentials

@dataclass(frozen=True)
class Call:
    action: str
    role_account: str  # the account of AssumeRole's RoleArn, else ""
    key_id: str  # the access key id that signed the request


class _Handler(awsproxy._Handler):
    """Names JSON-protocol requests (Organizations) by their X-Amz-Target, notes who signed
    each request, and answers injected faults of JSON requests in the JSON shape."""

    server: Proxy

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        amz_target = self.headers.get("X-Amz-Target")
        local = self.server.local
        local.json_action = amz_target.rsplit(".", 1)[-1] if amz_target else None
        m = re.search(r"Credential=(\w+)/", self.headers.get("Authorization", ""))
        local.key_id = m.group(1) if m else ""
        local.fault = None
        rfile, self.rfile = self.rfile, io.BytesIO(body)  # AwsProxy's handler reads it again
        try:
            super().do_POST()
        finally:
            self.rfile = rfile

    def _reply(self, status: int, data: bytes, ctype: str) -> None:
        local = self.server.local
        if local.fault and local.json_action:
            code = {"deny": "AccessDeniedException", "throttle": "TooManyRequestsException"
                    }.get(local.fault, "ServiceException")
            data = json.dumps({"__type": code, "message": f"injected {local.fault}"}).encode()
            ctype = "application/x-amz-json-1.1"
        super()._reply(status, data, ctype)


def _role_account(params: dict[str, list[str]]) -> str:
    arn = params.get("RoleArn", [""])[0].split(":")
    return arn[4] if len(arn) > 5 else ""


class Proxy(awsproxy.AwsProxy):
    """AwsProxy that also names Organizations' actions, faults AssumeRole into chosen
    accounts, records which role and key each call used, and can shorten the lifetime of
    the credentials AssumeRole hands out (moto's are valid for an hour)."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.RequestHandlerClass = _Handler
        self.local = threading.local()
        self.role_faults: dict[str, str] = {}  # account id → fault of AssumeRole into it
        self.credential_lifetime: float | None = None  # seconds; None: moto's
        self.calls: list[Call] = []
        self.rule = self._role_fault
        self.rewrite = self._expiration

    def _role_fault(self, action: str, params: dict[str, list[str]]) -> str | None:
        role_account = _role_account(params)
        self.local.role_account = role_account
        return self.role_faults.get(role_account) if action == "AssumeRole" else None

    def _expiration(self, action: str, data: bytes) -> bytes:
        if action != "AssumeRole" or self.credential_lifetime is None:
            return data
        expires = datetime.now(UTC) + timedelta(seconds=self.credential_lifetime)
        stamp = expires.isoformat().replace("+00:00", "Z").encode()
        return re.sub(rb"<Expiration>[^<]*</Expiration>",
                      b"<Expiration>" + stamp + b"</Expiration>", data)

    def fault_for(self, action: str, params: dict[str, list[str]] | None = None
                  ) -> str | None:
        action = self.local.json_action or action
        fault = super().fault_for(action, params)
        self.local.fault = fault
        return fault

    def record(self, action: str, fault: str | None, service: str = "?") -> None:
        local = self.local
        action = local.json_action or action
        super().record(action, fault, service)
        with self.lock:
            self.calls.append(Call(action, local.role_account, local.key_id))

    def start(self) -> Proxy:
        super().start()
        return self

    def assumed(self) -> Counter[str]:
        """AssumeRole calls by the account of the role."""
        with self.lock:
            return Counter(c.role_account for c in self.calls if c.action == "AssumeRole")


@pytest.fixture
def px(endpoint: str) -> Iterator[Proxy]:
    p = Proxy(endpoint).start()
    yield p
    p.stop()


# --- the moto world --------------------------------------------------------------------



Users = dict[str, tuple[str, ...]]  # user name → statuses of its keys


def seed(endpoint: str, account_id: str, users: Users) -> None:
    iam = aws("iam", endpoint, None if account_id == MOTO_ACCOUNT
              else creds_in(endpoint, account_id))
    for name, statuses in users.items():
        add_user(iam, name, statuses)


def expected_keys(users: Users) -> dict[tuple[str, str], int]:
    return {(name, status): sum(1 for s in statuses if s == status)
            for name, statuses in users.items() for status in ("Active", "Inactive")}


@dataclass
class World:
    """An Organization: its management account, OUs and member accounts by name."""

    endpoint: str
    org: Any  # organizations client of the management account
    root: str
    ids: dict[str, str] = field(default_factory=dict)  # account name → id
    ous: dict[str, str] = field(default_factory=dict)  # OU name → id
    users: dict[str, Users] = field(default_factory=dict)  # account id → users

    def ou(self, name: str, parent: str | None = None) -> str:
        self.ous[name] = str(self.org.create_organizational_unit(
            ParentId=self.ous[parent] if parent else self.root,
            Name=name)["OrganizationalUnit"]["Id"])
        return self.ous[name]

    def account(self, name: str, ou: str | None, users: Users) -> str:
        status = self.org.create_account(AccountName=name, Email=f"{name}@example.com")
        account_id = str(status["CreateAccountStatus"]["AccountId"])  # moto: at once
        if ou is not None:
            self.org.move_account(AccountId=account_id, SourceParentId=self.root,
                                  DestinationParentId=self.ous[ou])
        self.ids[name] = account_id
        self.add_users(account_id, users)
        return account_id

    def add_users(self, account_id: str, users: Users) -> None:
        seed(self.endpoint, account_id, users)
        self.users.setdefault(account_id, {}).update(users)

    def expected(self, *names: str) -> dict[str, dict[tuple[str, str], int]]:
        """account id → {(user, status): keys} of the named accounts."""
        return {self.ids[n]: expected_keys(self.users.get(self.ids[n], {})) for n in names}


def new_world(endpoint: str, owner: str) -> World:
    """An Organization whose management account is ``owner``."""
    creds = None if owner == MOTO_ACCOUNT else creds_in(endpoint, owner)
    org = aws("organizations", endpoint, creds)
    org.create_organization(FeatureSet="ALL")
    w = World(endpoint, org, org.list_roots()["Roots"][0]["Id"])
    w.ids["master"] = owner
    return w


MEMBERS = ("top", "eng1", "plat1", "plat2", "sales1")


@pytest.fixture(scope="module")
def main(endpoint: str) -> World:
    """root ─┬─ master (123456789012, the exporter's own account), top
             ├─ eng ─┬─ eng1
             │       └─ platform ─┬─ plat1, plat2
             │                    └─ closed (SUSPENDED)
             └─ sales ── sales1
    Every account has its own users and keys."""
    w = new_world(endpoint, MOTO_ACCOUNT)
    w.ou("eng")
    w.ou("platform", "eng")
    w.ou("sales")
    w.add_users(MOTO_ACCOUNT, {"ops-admin": ("Active",), "ci-bot": ("Active", "Inactive")})
    w.account("top", None, {"top-user": ("Inactive", "Inactive")})
    w.account("eng1", "eng", {"alice": ("Active", "Active"), "bob": ()})
    w.account("plat1", "platform", {"svc-deploy": ("Active",)})
    w.account("plat2", "platform", {"carol": ("Inactive",), "dan": ("Active", "Inactive"),
                                    "eve": ("Active",)})
    w.account("sales1", "sales", {"frank": ("Active", "Inactive")})
    closed = w.account("closed", "platform", {"ghost": ("Active",)})
    w.org.close_account(AccountId=closed)
    return w


# --- running the exporter --------------------------------------------------------------

def once_all(tmp_path: Path, runs: list[tuple[dict[str, Any], dict[str, str]]]
             ) -> list[subprocess.CompletedProcess[str]]:
    """`iam-key-exporter once` for each (config, env), all at the same time."""
    procs = []
    for i, (cfg, env) in enumerate(runs):
        path = tmp_path / f"config-{i}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "exporter", "once", "--config", str(path)], cwd=ROOT,
            env=subprocess_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=60)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def keys_by_account(s: Samples) -> dict[str, dict[tuple[str, str], int]]:
    out: dict[str, dict[tuple[str, str], int]] = {}
    for (name, labels), value in s.items():
        if name == "iam_user_access_keys":
            lab = dict(labels)
            out.setdefault(lab["account_id"], {})[(lab["user_name"], lab["status"])] = int(value)
    return out


def account_names(s: Samples) -> dict[str, str]:
    return {dict(labels)["account_id"]: dict(labels)["account_name"]
            for (name, labels), _ in s.items() if name == "iam_account_info"}


def account_ids_on_series(s: Samples) -> set[str]:
    """The account_id of every series about a watched account; fails on one without the
    label. The API call counters are left out: they count by the account whose credentials
    made the call, and the exporter's own account lists the Organization even where it is
    not watched itself."""
    ids = set()
    for name, labels in s:
        if (name.startswith("iam_") and name not in GLOBAL_SERIES
                and not name.startswith(API_SERIES)):
            lab = dict(labels)
            assert "account_id" in lab, (name, labels)
            ids.add(lab["account_id"])
    return ids


def render(poller: Poller, stats: ApiStats) -> Samples:
    data = RenderInput(poller.snapshot, stats.counts(), poller.cfg.interval_seconds,
                       poller.cfg.metrics)
    return parse_samples(metrics.render(data).decode())


@pytest.fixture
def in_process() -> Iterator[Callable[[Config], tuple[Poller, ApiStats]]]:
    """Makes a Poller over an AccountSet of cfg (and its API counts); stopped afterwards."""
    made: list[Poller] = []

    def make(cfg: Config) -> tuple[Poller, ApiStats]:
        stats = ApiStats()
        made.append(Poller(cfg, AccountSet(cfg, stats)))
        return made[-1], stats

    yield make
    for poller in made:
        poller.stop()


def reconfigured(poller: Poller, cfg: Config) -> None:
    """Reconfigures, and waits until the resolver thread resolved the accounts with cfg."""
    before = poller.targets
    poller.reconfigure(cfg)
    end = time.monotonic() + 20
    while poller.targets is before:
        assert time.monotonic() < end, "the accounts were not resolved again"
        time.sleep(0.02)


def role(account_id: str, name: str = "iam-key-exporter") -> str:
    return f"arn:aws:iam::{account_id}:role/{name}"


# --- 1. Organizations end to end -------------------------------------------------------

def test_organization_end_to_end(main: World, px: Proxy, tmp_path: Path) -> None:
    [r] = once_all(tmp_path, [({"aws": {"endpoint_url": px.url},
                                "organizations": {"enabled": True}, **FAST}, {})])
    assert r.returncode == 0, r.stderr
    s = parse_samples(r.stdout)
    everyone = ("master", *MEMBERS)
    # Exact keys of every user in every ACTIVE account; nothing of the closed one.
    assert keys_by_account(s) == main.expected(*everyone)
    assert account_ids_on_series(s) == {main.ids[n] for n in everyone}
    assert account_names(s) == {main.ids[n]: n for n in everyone}  # Organizations' names
    for name in everyone:
        assert sample(s, "iam_exporter_collection_success", account_id=main.ids[name]) == 1
    assert sample(s, "iam_exporter_discovered_accounts") == len(everyone)
    assert sample(s, "iam_exporter_discovery_success") == 1
    # One AssumeRole per member account; the management account is read with the
    # exporter's own credentials (it has no OrganizationAccountAccessRole to assume).
    assert px.assumed() == Counter({main.ids[n]: 1 for n in MEMBERS})
    assert px.counts()["ListAccounts"] == 1
    assert px.counts()["GetCallerIdentity"] == 1  # the own account id, once


@pytest.mark.parametrize(("organizations", "include_self", "names"), [
    # the OU subtree, nested OU included; the management account is not in it
    ({"include_ous": ["eng"]}, None, ("eng1", "plat1", "plat2")),
    ({"exclude_ous": ["platform"], "exclude_accounts": ["master"]}, None,
     ("top", "eng1", "sales1")),
    ({"include_accounts": ["sales1", "master"]}, None, ("master", "sales1")),
    ({"include_ous": ["eng", "sales"], "exclude_accounts": ["plat2"]}, None,
     ("eng1", "plat1", "sales1")),
    # include_self: false leaves the management account out although Organizations lists it
    ({}, False, MEMBERS),
], ids=["include-ou", "exclude-ou-and-id", "include-ids", "include-ous-exclude-id",
        "include-self-false"])
def test_organization_include_and_exclude(main: World, aws_env: dict[str, str], px: Proxy,
                                          in_process: InProcess,
                                          organizations: dict[str, list[str]],
                                          include_self: bool | None,
                                          names: tuple[str, ...]) -> None:
    """In process (the subprocess path is test_organization_end_to_end's)."""
    org: dict[str, Any] = {"enabled": True}
    for key, values in organizations.items():
        ids = main.ous if key.endswith("_ous") else main.ids
        org[key] = [ids[v] for v in values]
    poller, stats = in_process(make_config(aws={"endpoint_url": px.url}, organizations=org,
                                           include_self=include_self, **FAST))
    snap = one_pass(poller)
    assert all(a.success for a in snap.accounts)
    s = render(poller, stats)
    assert keys_by_account(s) == main.expected(*names)
    assert account_ids_on_series(s) == {main.ids[n] for n in names}
    assert account_names(s) == {main.ids[n]: n for n in names}
    # Discovery counts what Organizations listed after its own filters; include_self:
    # false drops the management account only afterwards.
    assert sample(s, "iam_exporter_discovered_accounts") == len(names) + (
        include_self is False)
    # Roles are assumed only in the member accounts asked for.
    assert set(px.assumed()) == {main.ids[n] for n in names if n != "master"}


def test_once_fails_when_discovery_fails(endpoint: str, tmp_path: Path) -> None:
    own = creds_in(endpoint, "555500000000")  # an account in no Organization
    [r] = once_all(tmp_path, [({"aws": {"endpoint_url": endpoint},
                                "organizations": {"enabled": True}}, {
        "AWS_ACCESS_KEY_ID": own["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": own["aws_secret_access_key"],
        "AWS_SESSION_TOKEN": own["aws_session_token"]})])
    s = parse_samples(r.stdout)
    assert sample(s, "iam_exporter_discovery_success") == 0
    assert "AWSOrganizationsNotInUseException" in r.stderr
    assert r.returncode == 1


# --- 2. one bad role -------------------------------------------------------------------

GOOD1, GOOD2, BAD = "311111111111", "322222222222", "399999999999"
GOOD_USERS: dict[str, Users] = {GOOD1: {"g1-alice": ("Active", "Active")},
              GOOD2: {"g2-bob": ("Inactive",), "g2-carol": ("Active",)}}


@pytest.fixture(scope="module")
def good_accounts(endpoint: str) -> dict[str, Users]:
    for account_id, users in GOOD_USERS.items():
        seed(endpoint, account_id, users)
    return GOOD_USERS


def static_config(url: str, **extra: Any) -> dict[str, Any]:
    return {"aws": {"endpoint_url": url, "max_attempts": 1},
            "accounts": [{"role_arn": role(GOOD1), "name": "good1"},
                         {"role_arn": role(BAD), "name": "bad"},
                         {"role_arn": role(GOOD2), "name": "good2"}],
            **FAST, **extra}


def test_one_denied_role_fails_only_its_account(good_accounts: dict[str, Users], px: Proxy,
                                                tmp_path: Path) -> None:
    px.role_faults[BAD] = "deny"  # moto itself lets anyone assume anything
    [r] = once_all(tmp_path, [(static_config(px.url), {})])
    assert r.returncode == 1, r.stderr
    s = parse_samples(r.stdout)
    assert keys_by_account(s) == {a: expected_keys(u) for a, u in good_accounts.items()}
    assert sample(s, "iam_exporter_collection_success", account_id=GOOD1) == 1
    assert sample(s, "iam_exporter_collection_success", account_id=GOOD2) == 1
    assert sample(s, "iam_exporter_collection_success", account_id=BAD) == 0
    assert sample(s, "iam_exporter_collection_errors_total", account_id=BAD,
                  error="AccessDenied") == 1
    assert sample(s, "iam_account_info", account_id=BAD, account_name="bad") == 1
    # One clear log line naming the account and the error code.
    [line] = [ln for ln in r.stderr.splitlines() if "the last known data is kept" in ln]
    assert BAD in line and "AccessDenied" in line, r.stderr
    print("\n[denied] " + line)
    # A denied AssumeRole fails the account at once (it is not taken for a missing
    # GetAccountAuthorizationDetails permission and retried with ListUsers).
    assert px.faults["AssumeRole"] == 1


def test_a_hanging_role_does_not_hold_back_the_others(good_accounts: dict[str, Users],
                                                      px: Proxy) -> None:
    hang = 30.0
    px.hang_seconds = hang
    px.role_faults[BAD] = "hang"  # AssumeRole into BAD never answers
    cfg = static_config(px.url, interval_seconds=3)
    cfg["aws"]["read_timeout_seconds"] = hang + 10
    started = time.monotonic()
    d = Daemon(cfg)
    try:
        d.wait_listening(timeout=30)
        listening = time.monotonic() - started
        want = {a: expected_keys(u) for a, u in good_accounts.items()}
        # The good accounts are served as they are read, while BAD is still hanging.
        s = d.wait_for(lambda x: keys_by_account(x) == want, timeout=30)
        served = time.monotonic() - started
        # Not ready: BAD has been neither listed nor failed yet.
        assert d.get("/readyz").status_code == 503
        assert sample(s, "iam_exporter_collection_success", account_id=BAD) == 0
        assert sample(s, "iam_exporter_last_success_timestamp_seconds", account_id=BAD) is None
        own = {a: sample(s, "iam_exporter_collection_duration_seconds", account_id=a)
               for a in (GOOD1, GOOD2)}
        first = sample(s, "iam_exporter_last_success_timestamp_seconds", account_id=GOOD1)
        assert first is not None

        # Later passes: BAD is still stuck in its AssumeRole, which is not tried a second
        # time meanwhile; the good accounts are read on time all the same.
        def later_pass(x: Samples) -> bool:
            last = sample(x, "iam_exporter_last_success_timestamp_seconds", account_id=GOOD1)
            return (last or 0) > first
        s2 = d.wait_for(later_pass, timeout=15)
        s2 = d.wait_for(lambda x: (sample(x, "iam_exporter_last_success_timestamp_seconds",
                                          account_id=GOOD2) or 0) > first, timeout=15)
        later = time.monotonic() - started
        assert sample(s2, "iam_exporter_collection_success", account_id=GOOD1) == 1
        assert sample(s2, "iam_exporter_collection_success", account_id=GOOD2) == 1
        assert sample(s2, "iam_exporter_collection_success", account_id=BAD) == 0
        assert px.faults["AssumeRole"] == 1  # one hanging AssumeRole, never a second one
        print(f"\n[isolation] good accounts' own passes: "
              f"{', '.join(f'{a} {v:.3f}s' for a, v in own.items() if v is not None)}; "
              f"exporter listening {listening:.2f}s, good data served {served:.2f}s after "
              f"start; later passes with BAD still stuck served at {later:.2f}s; BAD's "
              f"AssumeRole hangs for {hang:g}s")
        # The good data was out long before BAD's AssumeRole could have ended.
        assert served < hang / 2
        assert later < hang
    finally:
        d.stop()


# --- 3. credentials ----------------------------------------------------------------------

def test_assumed_role_session_is_reused_across_passes(aws_env: dict[str, str], px: Proxy,
                                                      in_process: InProcess) -> None:
    account = "331111111111"
    seed(px.url, account, {"reuse": ("Active",)})
    px.calls.clear()
    cfg = make_config(aws={"endpoint_url": px.url}, accounts=[{"role_arn": role(account)}],
                      **FAST)
    poller, stats = in_process(cfg)
    targets = []
    for _ in range(4):
        snap = one_pass(poller)
        assert [a.success for a in snap.accounts] == [True]
        targets.append(poller.targets[0])
    assert all(t is targets[0] for t in targets)
    assert px.assumed() == Counter({account: 1})  # once, not once per pass
    assert not stats.counts().errors


def test_short_lived_credentials_are_refreshed_without_a_failed_pass(
        aws_env: dict[str, str], px: Proxy, in_process: InProcess) -> None:
    """Credentials that enter botocore's mandatory refresh window (10 min before expiry)
    a moment after they are issued: every pass must assume the role again before its
    calls, and no call may go out with the old credentials."""
    account = "332222222222"
    seed(px.url, account, {"short": ("Active", "Inactive")})
    px.calls.clear()
    lifetime = 600 + 1.5
    px.credential_lifetime = lifetime
    cfg = make_config(aws={"endpoint_url": px.url, "max_attempts": 1},
                      accounts=[{"role_arn": role(account)}], **FAST)
    poller, stats = in_process(cfg)
    passes = 3
    for i in range(passes):
        if i:
            time.sleep(lifetime - 600 + 0.2)  # the credentials are now "about to expire"
        snap = one_pass(poller)
        [st] = snap.accounts
        assert st.success, st.error
        assert st.inventory is not None
        assert [(u.name, len(u.keys)) for u in st.inventory.users] == [("short", 2)]
    assert px.assumed()[account] >= passes
    assert not stats.counts().errors
    with px.lock:
        issued = [c for c in px.calls if c.action != "AssumeRole"]
    # The IAM calls of each pass were signed with that pass's fresh credentials.
    assert len({c.key_id for c in issued}) >= passes
    assert all(c.key_id.startswith("ASIA") for c in issued)


# --- 4. discovery refresh ----------------------------------------------------------------

def test_discovery_every_refresh_cycles_and_failure_keeps_accounts(
        endpoint: str, aws_env: dict[str, str], px: Proxy, in_process: InProcess,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """organizations.refresh_cycles counts intervals: each interval the accounts are
    resolved again (here: Poller.resolve, as the resolver thread does once per interval),
    and Organizations is asked again every refresh_cycles of them."""
    owner = "444444444444"
    w = new_world(endpoint, owner)
    w.ou("team")
    w.add_users(owner, {"root-ops": ("Active",)})
    w.account("m1", None, {"m1-user": ("Active",)})
    w.account("m2", "team", {"m2-user": ("Inactive", "Active")})
    # The exporter runs with the management account's own credentials.
    own = creds_in(endpoint, owner)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", own["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", own["aws_secret_access_key"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", own["aws_session_token"])
    cfg = make_config(aws={"endpoint_url": px.url, "max_attempts": 1},
                      organizations={"enabled": True, "refresh_cycles": 3}, **FAST)
    poller, stats = in_process(cfg)

    def list_accounts() -> int:
        return stats.counts().calls.get((owner, "organizations", "ListAccounts"), 0)

    def passed() -> Samples:
        one_pass(poller)
        return render(poller, stats)

    def cycle() -> Samples:
        """One interval: the accounts resolved again, then a pass."""
        poller.resolve()
        return passed()

    s = passed()  # the resolve at start (interval 0) discovers
    assert keys_by_account(s) == w.expected("master", "m1", "m2")
    assert list_accounts() == 1
    m3 = w.account("m3", "team", {"m3-user": ("Active", "Active")})
    for _ in (1, 2):  # not rediscovered yet
        s = cycle()
        assert m3 not in keys_by_account(s)
    assert list_accounts() == 1
    s = cycle()  # interval 3: rediscovered, m3 is in
    assert list_accounts() == 2
    assert keys_by_account(s) == w.expected("master", "m1", "m2", "m3")
    assert account_names(s)[m3] == "m3"
    assert sample(s, "iam_exporter_discovered_accounts") == 4

    # Discovery now fails: the accounts found before are kept and still collected.
    px.modes["ListAccounts"] = "http500"
    for _ in (4, 5, 6):
        s = cycle()
    assert list_accounts() == 3  # tried again at interval 6 only
    assert stats.counts().errors == {
        (owner, "organizations", "ListAccounts", "ServiceException"): 1}
    assert sample(s, "iam_exporter_discovery_success") == 0
    assert sample(s, "iam_exporter_discovered_accounts") == 4
    assert keys_by_account(s) == w.expected("master", "m1", "m2", "m3")
    assert all(a.success for a in poller.snapshot.accounts)

    # A reload rediscovers at once (interval 7); when that fails too, the accounts are
    # still kept.
    reconfigured(poller, make_config(
        aws={"endpoint_url": px.url, "max_attempts": 1},
        organizations={"enabled": True, "refresh_cycles": 5}, **FAST))
    s = passed()
    assert list_accounts() == 4
    assert sample(s, "iam_exporter_discovery_success") == 0
    assert keys_by_account(s) == w.expected("master", "m1", "m2", "m3")
    px.modes.clear()
    w.org.close_account(AccountId=m3)  # gone from the next successful discovery
    for _ in range(5):  # intervals 8 to 12
        s = cycle()
    assert list_accounts() == 5
    assert sample(s, "iam_exporter_discovery_success") == 1
    assert keys_by_account(s) == w.expected("master", "m1", "m2")
    assert m3 not in account_ids_on_series(s)
    assert px.assumed() == Counter({w.ids["m1"]: 1, w.ids["m2"]: 1, m3: 1})

    # Organizations turned off by a reload: no discovery series any more.
    reconfigured(poller, make_config(aws={"endpoint_url": px.url}, include_self=True, **FAST))
    s = passed()
    assert keys_by_account(s) == w.expected("master")
    assert sample(s, "iam_exporter_discovery_success") is None
    assert sample(s, "iam_exporter_discovered_accounts") is None


# --- 5. sharding -------------------------------------------------------------------------

def test_three_shards_split_the_organization(main: World, tmp_path: Path) -> None:
    total = 3
    proxies = [Proxy(main.endpoint).start() for _ in range(total)]
    try:
        results = once_all(tmp_path, [
            ({"aws": {"endpoint_url": p.url}, "organizations": {"enabled": True},
              "sharding": {"total": total}, **FAST},
             {"IAM_KEY_EXPORTER_SHARD_INDEX": str(i)}) for i, p in enumerate(proxies)])
    finally:
        for p in proxies:
            p.stop()
    everyone = {main.ids[n] for n in ("master", *MEMBERS)}
    expected = main.expected("master", *MEMBERS)
    shards = []
    for i, (p, r) in enumerate(zip(proxies, results, strict=True)):
        assert r.returncode == 0, r.stderr
        s = parse_samples(r.stdout)
        assert sample(s, "iam_exporter_shard_info", shard_index=str(i),
                      shard_total=str(total)) == 1
        assert sample(s, "iam_exporter_discovered_accounts") == len(everyone)
        mine = account_ids_on_series(s)
        assert mine == {a for a in everyone if sharding.shard_of(a, total) == i}
        assert keys_by_account(s) == {a: expected[a] for a in mine if expected[a]}
        # A replica assumes roles only in its own accounts.
        assert set(p.assumed()) == mine - {MOTO_ACCOUNT}
        shards.append(mine)
    print(f"\n[sharding] accounts per shard: {[len(x) for x in shards]}")
    assert set().union(*shards) == everyone
    assert sum(len(x) for x in shards) == len(everyone)  # no account twice


# --- 6. reconfigure ----------------------------------------------------------------------

def test_reconfigure_changes_accounts_at_once(aws_env: dict[str, str], px: Proxy,
                                              in_process: InProcess) -> None:
    a, b, c, d = "361111111111", "362222222222", "363333333333", "364444444444"
    for account, keys in ((a, 1), (b, 2), (c, 1), (d, 2)):
        seed(px.url, account, {f"u-{account[:3]}": ("Active",) * keys})
    px.calls.clear()

    def cfg(*accounts: dict[str, Any]) -> Config:
        return make_config(aws={"endpoint_url": px.url}, accounts=list(accounts), **FAST)

    poller, stats = in_process(cfg({"role_arn": role(a), "name": "a"},
                                   {"role_arn": role(b), "name": "b"},
                                   {"role_arn": role(c), "name": "c"}))
    one_pass(poller)
    before = {t.account_id: t for t in poller.targets}
    s = render(poller, stats)
    assert account_ids_on_series(s) == {a, b, c}

    # c removed, b renamed, d added.
    reconfigured(poller, cfg({"role_arn": role(a), "name": "a"},
                             {"role_arn": role(b), "name": "b-renamed"},
                             {"role_arn": role(d), "name": "d"}))
    one_pass(poller)
    after = {t.account_id: t for t in poller.targets}
    s = render(poller, stats)
    assert account_ids_on_series(s) == {a, b, d}  # every series of c is gone
    assert account_names(s) == {a: "a", b: "b-renamed", d: "d"}
    assert keys_by_account(s)[d] == {("u-364", "Active"): 2, ("u-364", "Inactive"): 0}
    # Same settings, same target: its warm session is kept, no second AssumeRole.
    assert after[a] is before[a] and after[b] is before[b]
    assert px.assumed() == Counter({a: 1, b: 1, c: 1, d: 1})

    # A changed ExternalId is a new session.
    reconfigured(poller, cfg({"role_arn": role(a), "name": "a", "external_id": "xid-2"},
                             {"role_arn": role(b), "name": "b-renamed"},
                             {"role_arn": role(d), "name": "d"}))
    snap = one_pass(poller)
    assert all(st.success for st in snap.accounts)
    assert {t.account_id: t for t in poller.targets}[a] is not before[a]
    assert px.assumed() == Counter({a: 2, b: 1, c: 1, d: 1})


def test_static_accounts_are_sharded_without_asking_for_the_own_account(
        aws_env: dict[str, str], px: Proxy) -> None:
    accounts = [f"37{i:010d}" for i in range(8)]
    owned: list[set[str]] = []
    for index in range(2):
        cfg = make_config(
            aws={"endpoint_url": px.url}, accounts=[{"role_arn": role(a)} for a in accounts],
            sharding={"total": 2, "index": index}, **FAST)
        owned.append({t.account_id for t in AccountSet(cfg, ApiStats()).resolve(0)})
    assert owned[0] | owned[1] == set(accounts) and not owned[0] & owned[1]
    assert owned[1] == {a for a in accounts if sharding.shard_of(a, 2) == 1}
    assert px.counts()["GetCallerIdentity"] == 0  # the own account is not watched
    assert not px.assumed()  # resolving targets assumes no role; collecting does


@pytest.mark.parametrize(("region", "partition"), [
    ("us-east-1", "aws"), ("cn-north-1", "aws-cn"), ("us-gov-west-1", "aws-us-gov"),
    ("nowhere-1", "aws")])
def test_member_role_arn_is_in_the_region_partition(region: str, partition: str) -> None:
    from exporter.aws.accounts import _partition
    assert _partition(region) == partition
