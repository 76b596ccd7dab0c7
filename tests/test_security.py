"""Security: TLS and basic auth from the web config file, no secrets in logs or metrics,
read-only AWS calls.

TLS is exercised with a real TLS client (requests/ssl) against the real daemon and a
certificate authority made in the test (trustme).
"""

from __future__ import annotations

import base64
import re
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests
import yaml
from werkzeug.test import Client

from exporter import cli, web, webconfig
from exporter.auth import BasicAuth
from exporter.aws.session import ApiCounts
from exporter.config import ConfigError
from exporter.inventory import Snapshot
from exporter.metrics import Exposition, RenderInput
from tests.awsproxy import AwsProxy
from tests.daemon import CONSOLE_SCRIPT, Daemon, sample
from tests.helpers import (
    MOTO_ACCOUNT,
    ROOT,
    add_user,
    daemon_config,
    free_port,
    subprocess_env,
)

A = MOTO_ACCOUNT
PASSWORD = "correct horse battery staple"
# Cost 4 keeps the tests fast; production hashes use 10-12 and the code is the same.
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


# --------------------------------------------------------------------------- fixtures


class Pki:
    def __init__(self, tmp: Path) -> None:
        import trustme

        self.dir = tmp
        self.ca = trustme.CA()
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        server.cert_chain_pems[0].write_to_path(str(tmp / "tls.crt"))
        server.private_key_pem.write_to_path(str(tmp / "tls.key"))
        self.ca.cert_pem.write_to_path(str(tmp / "ca.crt"))
        client = self.ca.issue_cert("prometheus@example.com")
        client.private_key_and_cert_chain_pem.write_to_path(str(tmp / "client.pem"))
        self.ca_file = str(tmp / "ca.crt")
        self.client_pem = str(tmp / "client.pem")

    def web_config(self, name: str = "web.yml", **extra: Any) -> Path:
        doc: dict[str, Any] = {
            # relative paths are relative to the web config file
            "tls_server_config": {"cert_file": "tls.crt", "key_file": "tls.key"},
            "basic_auth_users": {"prometheus": HASH},
        }
        doc.update(extra)
        path = self.dir / name
        path.write_text(yaml.safe_dump(doc))
        return path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
def start(proxy: AwsProxy, daemons: Callable[..., Daemon]) -> Callable[..., Daemon]:
    def run(cfg: dict[str, Any] | None = None, **kw: Any) -> Daemon:
        return daemons({**daemon_config(proxy.url), **(cfg or {})}, **kw)

    return run


def tls_daemon(start: Callable[..., Daemon], pki: Pki, web_file: Path) -> Daemon:
    return start({"web": {"config_file": str(web_file)}}, scheme="https",
                 request_kwargs={"verify": pki.ca_file, "auth": ("prometheus", PASSWORD)})


# --------------------------------------------------------------------------- TLS + auth e2e


def test_tls_and_basic_auth_end_to_end(iam: Any, pki: Pki,
                                       start: Callable[..., Daemon]) -> None:
    add_user(iam, "alice", ("Active",))
    d = tls_daemon(start, pki, pki.web_config())
    d.wait_ready()
    s = d.scrape()
    assert sample(s, "iam_user_access_keys", account_id=A, user_name="alice",
                  status="Active") == 1
    url = d.url
    # Wrong password, unknown user, no credentials, another scheme: 401 with a challenge.
    for auth in (("prometheus", "wrong"), ("nobody", PASSWORD), None):
        r = requests.get(f"{url}/metrics", verify=pki.ca_file, auth=auth, timeout=10)
        assert r.status_code == 401, auth
        assert r.headers["WWW-Authenticate"].startswith('Basic realm="iam-key-exporter"')
        assert "iam_user_access_keys" not in r.text
    r = requests.get(f"{url}/metrics", verify=pki.ca_file, timeout=10,
                     headers={"Authorization": "Bearer abc"})
    assert r.status_code == 401
    for path in ("/", "/nope"):  # the index page shows account ids: not open either
        assert requests.get(url + path, verify=pki.ca_file, timeout=10).status_code == 401
    # Probes stay open for kubelet (they tell nothing but up/ready).
    for path in ("/healthz", "/readyz"):
        assert requests.get(url + path, verify=pki.ca_file, timeout=10).status_code == 200
    # The certificate is checked by the client: an unknown CA fails the handshake.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{url}/healthz", timeout=10)
    # Plain HTTP on the TLS port gets no HTTP answer at all.
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{d.port}/metrics", timeout=10,
                     auth=("prometheus", PASSWORD))
    assert d.get("/metrics").status_code == 200  # still serving
    code, _ = d.terminate()
    assert code == 0, d.logs()
    assert PASSWORD not in d.logs() and HASH not in d.logs()


def test_mutual_tls_requires_a_client_certificate(iam: Any, pki: Pki,
                                                  start: Callable[..., Daemon]) -> None:
    web_file = pki.web_config(tls_server_config={
        "cert_file": "tls.crt", "key_file": "tls.key", "client_ca_file": "ca.crt",
        "client_auth_type": "RequireAndVerifyClientCert", "min_version": "TLS13"},
        basic_auth_users=None)
    d = start({"web": {"config_file": str(web_file)}}, scheme="https",
              request_kwargs={"verify": pki.ca_file, "cert": pki.client_pem})
    d.wait_ready()
    assert d.get("/metrics").status_code == 200
    with pytest.raises(requests.exceptions.ConnectionError):  # SSLError is one
        requests.get(f"{d.url}/healthz", verify=pki.ca_file, timeout=10)
    # min_version TLS13: a TLS 1.2 client is refused in the handshake.
    ctx = ssl.create_default_context(cafile=pki.ca_file)
    ctx.load_cert_chain(pki.client_pem)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with (pytest.raises(ssl.SSLError),
          socket.create_connection(("127.0.0.1", d.port), timeout=10) as raw,
          ctx.wrap_socket(raw, server_hostname="127.0.0.1")):
        pass


def test_basic_auth_without_tls(iam: Any, tmp_path: Path,
                                start: Callable[..., Daemon]) -> None:
    web_file = tmp_path / "web.yml"
    web_file.write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": HASH}}))
    d = start({"web": {"config_file": str(web_file)}},
              request_kwargs={"auth": ("prometheus", PASSWORD)})
    d.wait_ready()
    assert d.get("/metrics").status_code == 200
    assert d.get("/metrics", auth=("prometheus", "nope")).status_code == 401
    assert requests.get(f"{d.url}/readyz", timeout=10).status_code == 200


def test_bad_web_config_exits_2_before_serving(tmp_path: Path) -> None:
    web_file = tmp_path / "web.yml"
    web_file.write_text("tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n")
    cfg = tmp_path / "config.yml"
    cfg.write_text(yaml.safe_dump({"web": {"config_file": str(web_file)}}))
    for args in (["serve", "--listen", f"127.0.0.1:{free_port()}"], ["check-config"]):
        r = subprocess.run([str(CONSOLE_SCRIPT), *args, "--config", str(cfg)], cwd=ROOT,
                           capture_output=True, text=True, timeout=30, env=subprocess_env())
        assert r.returncode == 2, r.stderr
        assert "tls_server_config.cert_file: file not found" in r.stderr
        assert "Traceback" not in r.stderr


# --------------------------------------------------------------------------- web config parsing


def write(tmp: Path, text: str) -> str:
    path = tmp / "web.yml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(("text", "message"), [
    ("tls_server_config:\n  cert_fle: x\n", "tls_server_config.cert_fle: unknown key"),
    ("tls_config: {}\n", "tls_config: unknown key (known keys: tls_server_config, "
                         "basic_auth_users)"),
    ("http_server_config: {http2: true}\n", "http_server_config: unknown key"),
    ("tls_server_config:\n  key_file: tls.key\n", "tls_server_config.cert_file: required"),
    ("tls_server_config:\n  cert_file: tls.crt\n", "tls_server_config.key_file: required"),
    ("tls_server_config:\n  cert_file: missing.crt\n  key_file: tls.key\n",
     "tls_server_config.cert_file: file not found"),
    ("tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  min_version: TLS14\n",
     "tls_server_config.min_version: expected one of TLS10, TLS11, TLS12, TLS13"),
    ("tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  min_version: TLS13\n"
     "  max_version: TLS12\n", "tls_server_config.min_version: TLS13 is above"),
    ("tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
     "  client_auth_type: RequireAnyClientCert\n", "tls_server_config.client_auth_type: "
                                                   "expected one of"),
    ("tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
     "  client_ca_file: ca.crt\n", "tls_server_config.client_auth_type: client_ca_file is set"),
    ("tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
     "  client_auth_type: RequireAndVerifyClientCert\n", "tls_server_config.client_ca_file: "
                                                         "required"),
    ("tls_server_config:\n  cert_file: tls.key\n  key_file: tls.crt\n",
     "tls_server_config: cannot use the certificate"),
    ("tls_server_config:\n  cert_file: ca.crt\n  key_file: tls.key\n",
     "tls_server_config: cannot use the certificate"),
    ("tls_server_config: [a]\n", "tls_server_config: expected a mapping"),
    ("basic_auth_users:\n  prometheus: hunter2\n", "basic_auth_users.prometheus: expected a "
                                                   "bcrypt hash"),
    ("basic_auth_users:\n  prometheus: 12\n", "basic_auth_users.prometheus: expected a bcrypt"),
    ("basic_auth_users:\n  'a:b': x\n", "basic_auth_users: user names must be"),
    ("basic_auth_users: [x]\n", "basic_auth_users: expected a mapping"),
    ("basic_auth_users:\n  a: x\n  a: y\n", "basic_auth_users.a: duplicate key"),
    ("- 1\n", "expected a mapping"),
    ("a: [\n", "invalid YAML at line"),
])
def test_bad_web_config_names_file_and_key(pki: Pki, text: str, message: str) -> None:
    path = write(pki.dir, text)
    with pytest.raises(ConfigError) as info:
        webconfig.load(path)
    assert str(info.value).startswith(f"web.config_file {path}: "), str(info.value)
    assert message in str(info.value)


def test_web_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^web.config_file: cannot read .*nope.yml"):
        webconfig.load(str(tmp_path / "nope.yml"))


def test_web_config_valid(pki: Pki) -> None:
    assert webconfig.load(None) is None
    empty = webconfig.load(write(pki.dir, ""))
    assert empty is not None and empty.tls is None and not empty.basic_auth_users
    wc = webconfig.load(str(pki.web_config()))
    assert wc is not None and wc.tls is not None
    assert wc.tls.cert_file == str(pki.dir / "tls.crt")  # resolved next to the file
    assert wc.tls.min_version == "TLS12" and wc.tls.verify_mode == ssl.CERT_NONE
    assert dict(wc.basic_auth_users) == {"prometheus": HASH}
    # $2a$ and $2y$ hashes (htpasswd -B writes $2y$) are accepted as well.
    for prefix in ("$2a$", "$2y$"):
        text = yaml.safe_dump({"basic_auth_users": {"u": prefix + HASH[4:]}})
        got = webconfig.load(write(pki.dir, text))
        assert got is not None and got.basic_auth_users["u"].startswith(prefix)


def test_bad_web_config_through_the_cli_in_process(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    web_file = write(tmp_path, "basic_auth_users:\n  prometheus: plain\n")
    cfg = tmp_path / "c.yml"
    cfg.write_text(yaml.safe_dump({"web": {"config_file": web_file}}))
    assert cli.main(["check-config", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("iam-key-exporter: invalid config: web.config_file ")
    assert "basic_auth_users.prometheus: expected a bcrypt hash" in err


# --------------------------------------------------------------------------- basic auth unit


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def app_client(users: dict[str, str]) -> Client:
    store = web.Store(Exposition.of(RenderInput(Snapshot(), ApiCounts({}, {}, {}), 300)))
    wc = webconfig.WebConfig(path="x", basic_auth_users=users)
    return Client(web.App(store, web_config=wc))


@pytest.mark.parametrize("headers", [
    {},
    basic("prometheus", "wrong"),
    basic("prometheus", PASSWORD + "x"),
    basic("Prometheus", PASSWORD),
    basic("nobody", PASSWORD),
    basic("prometheus", "x" * 100),  # over bcrypt's 72 bytes
    {"Authorization": "Basic !!!notbase64"},
    {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
    {"Authorization": "Basic " + base64.b64encode(b"prometheus:\xff\xfe").decode()},
    {"Authorization": "Digest abc"},
    {"Authorization": "Basic"},
])
def test_basic_auth_rejects(headers: dict[str, str]) -> None:
    c = app_client({"prometheus": HASH})
    r = c.get("/metrics", headers=headers)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Basic realm="iam-key-exporter", charset="UTF-8"'
    assert int(r.headers["Content-Length"]) == len(r.get_data())
    assert c.head("/metrics", headers=headers).status_code == 401


def test_basic_auth_accepts_and_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    c = app_client({"prometheus": HASH, "other": HASH})
    calls = 0
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        nonlocal calls
        calls += 1
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    ok = basic("prometheus", PASSWORD)
    results = []

    def scrape() -> None:
        results.append(c.get("/metrics", headers=ok).status_code)

    scrape()
    assert calls == 1
    threads = [threading.Thread(target=scrape) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 51
    assert calls == 1  # remembered: a scrape with the right password costs no bcrypt
    # Failures are never remembered, and cost a bcrypt check each (unknown users too).
    for _ in range(3):
        assert c.get("/metrics", headers=basic("nobody", PASSWORD)).status_code == 401
    assert calls == 4
    # Probes are open; other paths are not.
    assert c.get("/healthz").status_code == 200
    assert c.get("/readyz").status_code == 503  # no data yet, but not 401
    assert c.get("/").status_code == 401
    assert c.get("/", headers=ok).status_code == 200


def test_basic_auth_user_change_forgets_remembered_logins() -> None:
    basic_auth = BasicAuth({"prometheus": HASH})
    header = basic("prometheus", PASSWORD)["Authorization"]
    assert basic_auth.check(header)
    other = bcrypt.hashpw(b"new", bcrypt.gensalt(rounds=4)).decode()
    basic_auth.set_users({"prometheus": other})
    assert not basic_auth.check(header)
    assert basic_auth.check(basic("prometheus", "new")["Authorization"])
    basic_auth.set_users({})
    assert not basic_auth.enabled and basic_auth.check("")


# --------------------------------------------------------------------------- secrets


SECRET = "q7Zf0yXUPvtW4bG2mRk9Lc8sNa1Hd3Je5TiO6uVw"  # 40 characters, like a real secret key
SESSION_TOKEN = ("IQoJb3JpZ2luX2VjEHYaCXVzLWVhc3QtMSJHMEUCIQD" + "x" * 40
                 + "FwoGZXIvYXdzEBYaDEXAMPLETOKENzZXNzaW9u")
ACCESS_KEY = "ASIAQWERTYUIOPASDFGH"
ROLE_ACCOUNT = "111111111111"
# Anything that looks like a secret access key: 40 base64 characters standing alone.
SECRET_LIKE = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")


def test_no_secret_in_logs_or_metrics(iam: Any, proxy: AwsProxy,
                                      start: Callable[..., Daemon]) -> None:
    """A full run at debug level, with failing and working passes, both strategies, an
    assumed role (whose temporary credentials come from STS): neither the configured
    secret nor the session token nor anything shaped like a secret key shows up."""
    add_user(iam, "alice", ("Active", "Inactive"))
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_SESSION_TOKEN": SESSION_TOKEN}
    texts = []
    for strategy in ("list", "credential-report"):
        d = start({"log_level": "debug", "collection": {"strategy": strategy},
                   "accounts": [{"role_arn": f"arn:aws:iam::{ROLE_ACCOUNT}:role/exporter"}]},
                  env=env)
        d.wait_ready()
        proxy.mode = "deny"  # a failing pass logs its error
        d.wait_for(lambda s: sample(s, "iam_exporter_collection_success",
                                    account_id=ROLE_ACCOUNT) == 0)
        proxy.mode = None
        d.wait_for(lambda s: sample(s, "iam_exporter_collection_success",
                                    account_id=ROLE_ACCOUNT) == 1)
        texts += [d.get("/metrics").text, d.get("/").text,
                  d.get("/metrics", headers={"Accept-Encoding": "gzip"}).text]
        d.terminate()
        texts.append(d.logs())
        assert "the last known data is kept" in d.logs() and "pass done" in d.logs()
    everything = "\n".join(texts)
    assert "debug" in everything  # the debug level really was on
    for secret in (SECRET, SESSION_TOKEN, SESSION_TOKEN[:24], SECRET[:16]):
        assert secret not in everything
    assert SECRET_LIKE.findall(everything) == []
    # The access key *id* is an identifier, not a secret; still, the exporter's own id
    # is nowhere either.
    assert ACCESS_KEY not in everything


# --------------------------------------------------------------------------- read-only calls


def test_every_call_of_a_full_run_is_read_only_and_in_the_policy(
        iam: Any, proxy: AwsProxy, tmp_path: Path) -> None:
    """Both strategies, last-used from the API, tags on, an assumed role: every operation
    the exporter makes is in deploy/aws/iam-policy.json and none of them writes."""
    from tests.test_policy import WRITE_PREFIXES, policy_actions

    add_user(iam, "alice", ("Active", "Inactive"), tags={"Team": "a"})
    add_user(iam, "bob", ("Active",))
    proxy.actions.clear()
    runs = [
        {"collection": {"strategy": "list", "last_used": "api"},
         "metrics": {"user_tags": {"Team": "team"}}},
        {"collection": {"strategy": "list", "last_used": "credential-report"}},
        {"collection": {"strategy": "credential-report"},
         "metrics": {"user_tags": {"Team": "team"}}},
        {"accounts": [{"role_arn": "arn:aws:iam::111111111111:role/x"}]},
    ]
    for i, extra in enumerate(runs):
        cfg = tmp_path / f"{i}.yaml"
        cfg.write_text(yaml.safe_dump({"aws": {"endpoint_url": proxy.url}, **extra}))
        r = subprocess.run([sys.executable, "-m", "exporter", "once", "--config", str(cfg)],
                           cwd=ROOT, capture_output=True, text=True, timeout=60,
                           env=subprocess_env())
        assert r.returncode == 0, (extra, r.stderr)
    called = set(proxy.counts())
    assert called, "no AWS call went through the proxy"
    for action in called:
        assert not action.startswith(WRITE_PREFIXES), action
    sts = {"GetCallerIdentity", "AssumeRole"}
    named = {f"{'sts' if a in sts else 'iam'}:{a}" for a in called}
    # AssumeRole is granted by the member roles' trust policies, not by this policy.
    missing = named - policy_actions() - {"sts:AssumeRole"}
    assert not missing, f"called but not in {ROOT / 'deploy/aws/iam-policy.json'}: {missing}"
