"""Hostile input: user names, paths and tag values that stress the exposition format, and
random config documents. The exposition must always parse (prometheus_client's parser and
`promtool check metrics`), every label value must come back exactly (escaped, never
truncated), and a bad config must always be exit 2 with a message, never a traceback."""

from __future__ import annotations

import random
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from exporter import cli
from exporter.aws.session import ApiCounts
from exporter.inventory import AccessKey, AccountInventory, AccountState, Snapshot, User
from exporter.metrics import Exposition, RenderInput
from tests.helpers import MOTO_ACCOUNT, ROOT, add_user, make_config, promtool_check_metrics

A = MOTO_ACCOUNT
IAM_NAME_CHARS = string.ascii_letters + string.digits + "+=,.@_-"


def hostile_names() -> list[str]:
    rng = random.Random(64)
    names = [
        "+=,.@_-" + "a" * 57,  # 64 characters, every punctuation IAM allows, first
        "a" * 57 + "+=,.@_-",  # ... and last
        "A" * 64,
        "0" * 64,
        "user@example.com",
        "first.last+ops=1,2",
        "_", "-", "@", "=",
    ]
    names += ["".join(rng.choice(IAM_NAME_CHARS) for _ in range(64)) for _ in range(20)]
    assert all(1 <= len(n) <= 64 for n in names)
    return names


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def label_values(text: str, metric: str, label: str) -> list[str]:
    fam = families(text)[metric]
    return [s.labels[label] for s in fam.samples]


def assert_valid(body: bytes) -> str:
    text = body.decode("utf-8")
    families(text)  # parses
    check = promtool_check_metrics(text)
    assert (check.returncode, check.stdout, check.stderr) == (0, "", ""), check
    return text


# --------------------------------------------------------------------------- names via moto


def test_iam_names_at_the_limit_through_a_real_collection(
        iam: Any, moto: str, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    names = hostile_names()
    for i, name in enumerate(names):
        add_user(iam, name, ("Active",) * (i % 3), path="/a+b=c,d.e@f_g-h/" + "p" * 40 + "/",
                 tags={"Team": "t" * 256, "Cost.Center": "x+-=._:/@ 1"})
    cfg = tmp_path / "c.yml"
    cfg.write_text(yaml.safe_dump({
        "aws": {"endpoint_url": moto}, "collection": {"last_used": "off"},
        "metrics": {"user_tags": {"Team": "team", "Cost.Center": "cost_center"}}}))
    assert cli.main(["once", "--config", str(cfg)]) == 0
    text = assert_valid(capsysbinary.readouterr().out)
    got = label_values(text, "iam_user_access_keys", "user_name")
    assert sorted(set(got)) == sorted(names)  # exactly, none truncated or mangled
    fam = families(text)
    for s in fam["iam_user_access_keys"].samples:
        if s.labels["status"] == "Active":
            assert s.value == names.index(s.labels["user_name"]) % 3
    info = fam["iam_user_info"].samples
    assert len(info) == len(names)
    assert {s.labels["team"] for s in info} == {"t" * 256}
    assert {s.labels["cost_center"] for s in info} == {"x+-=._:/@ 1"}
    assert {s.labels["path"] for s in info} == {"/a+b=c,d.e@f_g-h/" + "p" * 40 + "/"}


# --------------------------------------------------------------------------- rendered directly

NASTY = [
    'say "hi"',
    "back\\slash\\",
    "\\n is not a newline",
    "line1\nline2\n",
    "nul\x00inside",
    "tab\tand\rcr",
    "emoji 🙂🔑 and ünïcödé",
    '"\\\n"',
    "} 1\nfake_metric 1\n# TYPE x",  # an injection attempt
    "=,{}",
    "v" * 256,
    "",
    " ",
]


def render(users: tuple[User, ...], **metrics_cfg: Any) -> bytes:
    cfg = make_config(metrics=metrics_cfg) if metrics_cfg else make_config()
    inv = AccountInventory(A, "list", users)
    snap = Snapshot(accounts=(AccountState("self", A, 'acct "name"\n', inv, True, 1.0,
                                           1.7e9),), completed_at=1.7e9)
    return Exposition.of(RenderInput(snap, ApiCounts({}, {}, {}), 300, cfg.metrics)).body


def test_hostile_tag_values_paths_and_names_are_escaped_not_truncated() -> None:
    users = tuple(
        User(name=f"u{i}-{v}", path=f"/{v}/", tags=(("Team", v), ("Other", v[::-1])),
             keys=(AccessKey(f"AKIA{i:016d}", "Active", 1.7e9, last_used=1.7e9 + i),))
        for i, v in enumerate(NASTY))
    body = render(users, user_tags={"Team": "team", "Other": "other"})
    text = assert_valid(body)
    fam = families(text)
    info = {s.labels["user_name"]: s.labels for s in fam["iam_user_info"].samples}
    for i, v in enumerate(NASTY):
        labels = info[f"u{i}-{v}"]
        assert (labels["team"], labels["other"], labels["path"]) == (v, v[::-1], f"/{v}/")
    assert "fake_metric" not in fam
    # Every sample line is one line: nothing a value holds can start a new one.
    # (\n is the only line separator of the format; a raw \r in a value is allowed.)
    samples = [ln for ln in text.split("\n") if ln and not ln.startswith("#")]
    assert len(samples) == sum(len(f.samples) for f in fam.values())
    names = {s.labels["user_name"] for s in fam["iam_access_key_last_used_timestamp_seconds"]
             .samples}
    assert names == {f"u{i}-{v}" for i, v in enumerate(NASTY)}
    accounts = {s.labels["account_name"] for s in fam["iam_account_info"].samples}
    assert accounts == {'acct "name"\n'}


def test_a_thousand_tags() -> None:
    tags = tuple((f"tag{i:04d}", f"value {i} \"q\" \\ 🙂 " + "z" * 200) for i in range(1000))
    mapped = {f"tag{i:04d}": f"tag_{i:04d}" for i in range(0, 1000, 50)}  # 20 labels
    users = (User("many-tags", tags=tags), User("no-tags"))
    text = assert_valid(render(users, user_tags=mapped))
    info = {s.labels["user_name"]: s.labels for s in families(text)["iam_user_info"].samples}
    for key, label in mapped.items():
        assert info["many-tags"][label] == dict(tags)[key]
        assert info["no-tags"][label] == ""


@pytest.mark.parametrize("mode", ["full", "suffix", "none"])
def test_access_key_id_modes_never_leak_the_full_id(mode: str) -> None:
    keys = (AccessKey("AKIAIOSFODNN7EXAMPLE", "Active", 1.7e9),
            AccessKey("AKIAI44QH8DHBEXAMPLE", "Inactive", 1.6e9))
    text = assert_valid(render((User("alice", keys=keys),), access_key_id=mode))
    ids = sorted(label_values(text, "iam_access_key_created_timestamp_seconds",
                              "access_key_id"))
    want = {"full": ["AKIAI44QH8DHBEXAMPLE", "AKIAIOSFODNN7EXAMPLE"], "suffix": ["MPLE", "MPLE"],
            "none": ["key1", "key2"]}[mode]
    assert ids == want
    if mode != "full":
        assert "AKIAI" not in text


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.text(min_size=1, max_size=64), st.text(max_size=256),
                          st.text(max_size=80)), min_size=1, max_size=5, unique_by=lambda t: t[0]))
def test_any_unicode_label_value_round_trips(users: list[tuple[str, str, str]]) -> None:
    # Surrogates cannot be encoded as UTF-8 and never come out of AWS's JSON/XML.
    users = [(n, t, p) for n, t, p in users
             if not any(0xD800 <= ord(c) <= 0xDFFF for c in n + t + p)]
    if not users:
        return
    body = render(tuple(User(n, path=p, tags=(("Team", t),)) for n, t, p in users),
                  user_tags={"Team": "team"})
    info = {s.labels["user_name"]: s.labels
            for s in families(body.decode())["iam_user_info"].samples}
    assert {n: (info[n]["team"], info[n]["path"]) for n, _, _ in users} == {
        n: (t, p) for n, t, p in users}


# --------------------------------------------------------------------------- config fuzz

SCALARS = (st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats()
           | st.text(max_size=20) | st.sampled_from(["", "~", "null", ".nan", "-.inf", "0x1F",
                                                    "1e400", "on", "yes", "127.0.0.1:99999"]))
KEYS = st.sampled_from([
    "listen", "interval_seconds", "log_format", "log_level", "aws", "collection", "accounts",
    "organizations", "metrics", "web", "sharding", "include_self", "strategy", "role_arn",
    "user_tags", "config_file", "threads", "access_key_id", "users", "include_names",
    "exempt_tag", "key", "value", "bogus",
]) | st.text(max_size=8)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(KEYS, inner, max_size=4), max_leaves=12)
DOCUMENTS = st.dictionaries(KEYS, VALUES, max_size=6)


def _dump(doc: Any) -> str:
    try:
        return yaml.safe_dump(doc, allow_unicode=True)
    except (yaml.YAMLError, UnicodeEncodeError):
        return "interval_seconds: [\n"


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(DOCUMENTS)
def test_any_config_document_is_valid_or_exit_2_with_a_message(
        tmp_path: Path, doc: Any) -> None:
    path = tmp_path / "fuzz.yml"
    path.write_text(_dump(doc), encoding="utf-8")
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["check-config", "--config", str(path)])
    assert code in (0, 2)
    if code == 2:
        message = err.getvalue()
        assert message.startswith("iam-key-exporter: invalid config: ")
        assert message.count("\n") == 1 and "Traceback" not in message
        body = message.removeprefix("iam-key-exporter: invalid config: ")
        # "<key path or file>: <what was expected>" (a key may be "" or any YAML scalar)
        _where, sep, what = body.partition(": ")
        assert sep and what.strip(), body
    else:
        assert yaml.safe_load(out.getvalue())["interval_seconds"] > 0


@pytest.mark.parametrize("text", [
    "web:\n  config_file: /nonexistent/web.yml\n",
    "metrics:\n  user_tags: {Team: 'bad label'}\n",
    "accounts:\n  - role_arn: 5\n",
    "\x00\x01",
    "a: &a [*a]\n",
    "[" * 5000,
    "interval_seconds: !!python/object/apply:os.system ['echo pwned']\n",
])
def test_hostile_config_files_through_the_real_cli(tmp_path: Path, text: str) -> None:
    path = tmp_path / "hostile.yml"
    path.write_text(text, encoding="utf-8")
    for command in ("check-config", "once"):
        r = subprocess.run([sys.executable, "-m", "exporter", command, "--config", str(path)],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (text, r.stderr)
        assert r.stderr.startswith("iam-key-exporter: invalid config: "), r.stderr
        assert "Traceback" not in r.stderr and "pwned" not in r.stdout + r.stderr
