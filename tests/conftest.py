"""Fixtures: a real moto server on loopback, reset between tests, and AWS env for it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from exporter.aws.accounts import AccountSet
from exporter.aws.session import ApiStats
from exporter.config import Config
from exporter.poller import Poller
from tests.awsproxy import AwsProxy
from tests.daemon import Daemon
from tests.helpers import FAKE_ENV, ISOLATED_ENV, free_port, iam_client, reset_moto
from tests.passes import PollerFor


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def moto(moto_server: str) -> str:
    """Endpoint of the shared moto server, emptied for this test."""
    reset_moto(moto_server)
    return moto_server


@pytest.fixture(scope="module")
def endpoint(moto_server: str) -> Iterator[str]:
    """The shared moto server, emptied for this module, and again after it."""
    reset_moto(moto_server)
    yield moto_server
    reset_moto(moto_server)


@pytest.fixture
def proxy(moto: str) -> Iterator[AwsProxy]:
    """A counting, fault-injecting proxy in front of the (emptied) moto server."""
    p = AwsProxy(moto).start()
    yield p
    p.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Fake credentials in the environment, and nothing that points at real AWS."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE",
                "AWS_SHARED_CREDENTIALS_FILE", "IAM_KEY_EXPORTER_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    for k, v in ISOLATED_ENV.items():
        monkeypatch.setenv(k, v)
    return dict(FAKE_ENV)


@pytest.fixture
def iam(moto: str, aws_env: dict[str, str]) -> Any:
    """A boto3 IAM client on the (emptied) moto server, for seeding."""
    return iam_client(moto)


@pytest.fixture
def client() -> Any:
    """An IAM client for botocore's Stubber (no server behind it)."""
    return boto3.client("iam", region_name="us-east-1", aws_access_key_id="x",
                        aws_secret_access_key="x")


@pytest.fixture
def stub(client: Any) -> Iterator[Stubber]:
    with Stubber(client) as stubber:
        yield stubber


@pytest.fixture
def poller_for() -> Iterator[PollerFor]:
    """Builds pollers on the real AccountSet (keyword arguments passed on); each is
    stopped after the test (its account loops keep reading between passes)."""
    started: list[Poller] = []

    def build(cfg: Config, **kw: Any) -> tuple[Poller, ApiStats]:
        stats = ApiStats()
        p = Poller(cfg, AccountSet(cfg, stats), **kw)
        started.append(p)
        return p, stats

    yield build
    for p in started:
        p.stop()


@pytest.fixture
def daemons() -> Iterator[Callable[..., Daemon]]:
    """Starts exporter daemons (Daemon(cfg, **kw)); every one is stopped after the test."""
    started: list[Daemon] = []

    def run(cfg: dict[str, Any], **kw: Any) -> Daemon:
        d = Daemon(cfg, **kw)
        started.append(d)
        return d

    yield run
    for d in started:
        d.stop()
