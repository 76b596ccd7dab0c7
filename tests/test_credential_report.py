"""The credential-report strategy: fetching (Stubber, fake sleep) and parsing the CSV.

moto's report has no ``<root_account>`` row, never says INPROGRESS and writes names with
commas unquoted, so the report's shapes are scripted here: the fetch loop against
botocore's Stubber on a real client, the parser against fixtures and built CSV text.
"""

from __future__ import annotations

import base64
import csv
import io
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.aws import credential_report
from exporter.aws.credential_report import Report, parse
from exporter.aws.errors import CollectionError, CredentialReportError
from exporter.inventory import AccessKey, User
from tests.helpers import TESTDATA

REPORTS = TESTDATA / "reports"
ACCOUNT = "123456789012"
# The columns of a real AWS report, in AWS's order (the fixture's header line).
HEADER = (REPORTS / "aws.csv").read_text().splitlines()[0].split(",")
NO_KEY = ("false", "N/A", "N/A")


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def row(name: str, path: str = "/", k1: tuple[str, str, str] = NO_KEY,
        k2: tuple[str, str, str] = NO_KEY, arn: str | None = None) -> dict[str, str]:
    """One report row as AWS writes it; k1/k2 are (active, last_rotated, last_used_date)."""
    values = dict.fromkeys(HEADER, "N/A")
    values.update({
        "user": name,
        "arn": arn if arn is not None else f"arn:aws:iam::{ACCOUNT}:user{path}{name}",
        "user_creation_time": "2020-01-01T00:00:00+00:00",
        "password_enabled": "false", "mfa_active": "false",
        "cert_1_active": "false", "cert_2_active": "false",
    })
    for slot, (active, rotated, used) in ((1, k1), (2, k2)):
        values[f"access_key_{slot}_active"] = active
        values[f"access_key_{slot}_last_rotated"] = rotated
        values[f"access_key_{slot}_last_used_date"] = used
    return values


def render(rows: list[dict[str, str]], header: list[str] | None = None) -> str:
    """CSV text, quoted where needed (AWS quotes fields holding commas)."""
    header = header or HEADER
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for r in rows:
        writer.writerow([r[c] for c in header])
    return out.getvalue()


def invalid(content: bytes | str) -> CredentialReportError:
    with pytest.raises(CredentialReportError) as info:
        parse(content)
    assert info.value.code == "CredentialReportInvalid"
    assert isinstance(info.value, CollectionError)
    return info.value


# ---------------------------------------------------------------------------------------
# parse: whole reports


def test_parse_aws_report_fixture() -> None:
    report = parse((REPORTS / "aws.csv").read_bytes(), generated=1714560000.0)
    assert report.generated == 1714560000.0
    assert report.root_keys == 1
    assert [u.name for u in report.users] == ["alice", "bob", "carol", "ci,deploy", "dave",
                                              "erin@example.com"]
    u = {x.name: x for x in report.users}
    assert u["alice"] == User("alice", "/", (
        AccessKey(None, "Active", utc("2023-01-01T00:00:00"), slot=1,
                  last_used=utc("2024-05-01T07:00:00")),
        AccessKey(None, "Active", utc("2024-04-01T00:00:00"), slot=2, last_used=None),
    ))
    assert u["bob"] == User("bob", "/division/team/", (
        AccessKey(None, "Active", utc("2024-03-01T12:30:00"), slot=1,
                  last_used=utc("2024-05-01T08:15:30")),
        AccessKey(None, "Inactive", utc("2022-06-01T00:00:00"), slot=2,
                  last_used=utc("2023-01-15T00:00:00")),
    ))
    assert u["carol"] == User("carol", "/", ())
    # quoted AWS-style: the comma belongs to the name, the path comes from the ARN
    assert u["ci,deploy"].path == "/automation/"
    assert [(k.slot, k.status) for k in u["ci,deploy"].keys] == [(1, "Inactive"),
                                                                 (2, "Inactive")]
    # slot 1 deleted after a rotation: the key lives in slot 2 alone
    assert u["dave"].keys == (AccessKey(None, "Active", utc("2024-02-01T00:00:00"), slot=2),)
    assert u["erin@example.com"].keys[0].last_used is None  # no_information
    counts = {x.name: (x.count("Active"), x.count("Inactive")) for x in report.users}
    assert counts == {"alice": (2, 0), "bob": (1, 1), "carol": (0, 0), "ci,deploy": (0, 2),
                      "dave": (1, 0), "erin@example.com": (1, 0)}


def test_parse_moto_style_unquoted_commas_are_repaired() -> None:
    report = parse((REPORTS / "moto_commas.csv").read_bytes())
    assert report.root_keys is None  # moto writes no <root_account> row
    u = {x.name: x for x in report.users}
    assert sorted(u) == [",lead", "a,b", "plain", "x,y,z"]
    assert u["a,b"].path == "/division/team/"
    assert [(k.slot, k.status, k.created) for k in u["a,b"].keys] == [
        (1, "Active", utc("2024-01-02T00:00:00")), (2, "Inactive", utc("2024-01-03T00:00:00"))]
    assert [k.status for k in u["x,y,z"].keys] == ["Active", "Active"]
    assert [k.status for k in u[",lead"].keys] == ["Inactive"]
    assert u["plain"].keys == ()


def test_parse_header_only_is_an_empty_account() -> None:
    assert parse(render([])) == Report(users=(), root_keys=None, generated=None)


def test_parse_accepts_str_bom_crlf_and_no_trailing_newline() -> None:
    text = render([row("alice", k1=("true", "2024-01-01T00:00:00+00:00", "N/A"))])
    want = parse(text)
    assert [u.count("Active") for u in want.users] == [1]
    crlf = text.replace("\n", "\r\n")
    assert parse(b"\xef\xbb\xbf" + crlf.encode()) == want  # UTF-8 BOM, Windows newlines
    assert parse(text.rstrip("\n").encode()) == want
    assert parse(text + "\n\n") == want  # blank lines are ignored


# ---------------------------------------------------------------------------------------
# parse: the root row


def test_root_row_is_excluded_and_its_keys_counted() -> None:
    root = row("<root_account>", arn=f"arn:aws:iam::{ACCOUNT}:root",
               k1=("true", "2019-01-01T00:00:00+00:00", "2024-01-01T00:00:00+00:00"),
               k2=("false", "2019-02-01T00:00:00+00:00", "N/A"))
    root.update(password_enabled="not_supported", password_last_changed="not_supported",
                password_next_rotation="not_supported", password_last_used="no_information")
    report = parse(render([root, row("alice")]))
    assert [u.name for u in report.users] == ["alice"]
    assert report.root_keys == 2  # an inactive root key is still a root key


def test_root_row_without_keys_is_zero_not_none() -> None:
    root = row("<root_account>", arn=f"arn:aws:iam::{ACCOUNT}:root",
               k1=("false", "not_supported", "not_supported"),
               k2=("false", "not_supported", "not_supported"))
    report = parse(render([row("alice"), root]))
    assert report.root_keys == 0
    assert [u.name for u in report.users] == ["alice"]


# ---------------------------------------------------------------------------------------
# parse: key slots


@pytest.mark.parametrize(("k1", "k2", "want"), [
    (NO_KEY, NO_KEY, []),
    (("false", "no_information", "N/A"), ("false", "not_supported", "N/A"), []),
    (("false", "", ""), ("FALSE", " N/A ", "N/A"), []),
    (("true", "2024-01-01T00:00:00+00:00", "N/A"), NO_KEY, [(1, "Active")]),
    (("false", "2024-01-01T00:00:00+00:00", "N/A"), NO_KEY, [(1, "Inactive")]),
    (NO_KEY, ("false", "2024-01-01T00:00:00+00:00", "N/A"), [(2, "Inactive")]),
    (("True", "2024-01-01T00:00:00Z", "N/A"), ("false", "2024-02-01T00:00:00+00:00", "N/A"),
     [(1, "Active"), (2, "Inactive")]),
    # an active slot with an unknown rotation date is still an active key
    (("true", "N/A", "N/A"), ("true", "no_information", "N/A"), [(1, "Active"), (2, "Active")]),
])
def test_key_slots(k1: tuple[str, str, str], k2: tuple[str, str, str],
                   want: list[tuple[int, str]]) -> None:
    (user,) = parse(render([row("alice", k1=k1, k2=k2)])).users
    assert [(k.slot, k.status) for k in user.keys] == want
    assert all(k.key_id is None for k in user.keys)


def test_inactive_key_with_rotation_date_is_inactive_not_absent() -> None:
    (user,) = parse(render([row("bob", k1=("false", "2023-05-06T07:08:09+00:00", "N/A"),
                                k2=("false", "2023-06-07T08:09:10+00:00", "N/A"))])).users
    assert (user.count("Active"), user.count("Inactive")) == (0, 2)
    assert [k.created for k in user.keys] == [utc("2023-05-06T07:08:09"),
                                              utc("2023-06-07T08:09:10")]


def test_last_used_parsed_and_absent_values() -> None:
    (user,) = parse(render([row(
        "alice", k1=("true", "2024-01-01T00:00:00+00:00", "2024-05-01T08:15:30+00:00"),
        k2=("true", "2024-02-01T00:00:00+00:00", "N/A"))])).users
    assert [k.last_used for k in user.keys] == [utc("2024-05-01T08:15:30"), None]


def test_last_used_column_is_optional() -> None:
    header = [c for c in HEADER if not c.endswith("_last_used_date")]
    (user,) = parse(render([row("alice", k1=("true", "2024-01-01T00:00:00+00:00",
                                             "2024-05-01T00:00:00+00:00"))],
                           header)).users
    assert user.keys == (AccessKey(None, "Active", utc("2024-01-01T00:00:00"), slot=1),)


@pytest.fixture
def tokyo() -> Iterator[None]:
    """The host's zone is UTC+9 (a POSIX TZ string, no zoneinfo needed)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "JST-9"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_timestamps_without_offset_are_utc_whatever_the_host_zone(tokyo: None) -> None:
    assert time.localtime(0).tm_hour == 9  # the zone really is in effect
    (user,) = parse(render([row("alice", k1=("true", "2024-01-01T00:00:00", "N/A"),
                                k2=("true", "2024-01-01T09:00:00+09:00", "N/A"))])).users
    assert [k.created for k in user.keys] == [utc("2024-01-01T00:00:00")] * 2


# ---------------------------------------------------------------------------------------
# parse: paths from the ARN


@pytest.mark.parametrize(("name", "arn", "path"), [
    ("alice", "arn:aws:iam::123456789012:user/alice", "/"),
    ("bob", "arn:aws:iam::123456789012:user/division/team/bob", "/division/team/"),
    ("bob", "arn:aws-us-gov:iam::123456789012:user/gov/bob", "/gov/"),
    ("a,b", "arn:aws:iam::123456789012:user/x/a,b", "/x/"),
    ("bob", "arn:aws:iam::123456789012:user/other", "/"),  # not this user's ARN
    ("bob", "not-an-arn", "/"),
    ("bob", "", "/"),
])
def test_path_from_arn(name: str, arn: str, path: str) -> None:
    (user,) = parse(render([row(name, arn=arn)])).users
    assert (user.name, user.path) == (name, path)


def test_no_arn_column_means_root_path() -> None:
    header = [c for c in HEADER if c != "arn"]
    (user,) = parse(render([row("bob", "/division/")], header)).users
    assert user.path == "/"


# ---------------------------------------------------------------------------------------
# parse: column order


def test_columns_are_found_by_name_in_any_order_with_unknown_extras() -> None:
    rows = [row("alice", "/team/", k1=("true", "2024-01-01T00:00:00+00:00", "N/A"),
                k2=("false", "2024-02-01T00:00:00+00:00", "N/A")),
            row("bob", k2=("true", "2024-03-01T00:00:00+00:00", "N/A"))]
    want = parse(render(rows))
    shuffled = [HEADER[i] for i in (13, 0, 9, 21, 1, 14, 8, 3, 2, 20, 19, 18, 17, 16, 15, 12,
                                    11, 10, 7, 6, 5, 4)]
    assert sorted(shuffled) == sorted(HEADER)
    for r in rows:
        r.update(access_key_3_active="true", future_column="x,y")
    extra = [*shuffled[:5], "access_key_3_active", *shuffled[5:], "future_column"]
    got = parse(render(rows, extra))
    assert got == want
    assert [(u.name, u.path, u.count("Active"), u.count("Inactive")) for u in got.users] == [
        ("alice", "/team/", 1, 1), ("bob", "/", 1, 0)]


def test_header_names_are_stripped() -> None:
    text = render([row("alice", k1=("true", "2024-01-01T00:00:00+00:00", "N/A"))])
    head, _, rest = text.partition("\n")
    padded = ",".join(f" {h} " for h in head.split(","))
    (user,) = parse(padded + "\n" + rest).users
    assert user.count("Active") == 1


@pytest.mark.parametrize("column", credential_report.REQUIRED)
def test_missing_required_column_is_named(column: str) -> None:
    header = [c for c in HEADER if c != column]
    err = invalid(render([row("alice")], header))
    assert column in str(err)
    assert "lacks column" in str(err)


# ---------------------------------------------------------------------------------------
# parse: garbage


@pytest.mark.parametrize(("content", "words"), [
    (b"", "empty"),
    ("", "empty"),
    (b"\xff\xfe\x00\x81garbage\x00\x9f", "not UTF-8"),
    (bytes(range(256)), "not UTF-8"),
    (b"<html><head><title>503 Service Unavailable</title></head>\n<body>busy</body></html>",
     "lacks column"),
    (b"\n", "lacks column"),
    (b'{"users": []}', "lacks column"),
])
def test_garbage_content(content: bytes | str, words: str) -> None:
    assert words in str(invalid(content))


def test_truncated_report_names_the_line() -> None:
    text = render([row("alice"), row("bob"), row("carol")])
    cut = text.rstrip("\n")
    cut = cut[: cut.rindex("carol") + 40]  # the last row stops mid-way
    err = invalid(cut)
    assert "line 4" in str(err)
    assert f"expected {len(HEADER)} fields" in str(err)


def test_row_with_too_few_fields_names_the_line() -> None:
    lines = render([row("alice"), row("bob")]).splitlines()
    lines[1] = ",".join(lines[1].split(",")[:-3])
    assert "line 2" in str(invalid("\n".join(lines)))


@pytest.mark.parametrize("bad_row", [
    # name with a comma whose ARN does not end with the rejoined name
    "a,b,arn:aws:iam::123456789012:user/other,b," + ",".join(["N/A"] * 20),
    # one field too many (odd extra count)
    "alice,arn:aws:iam::123456789012:user/alice,extra," + ",".join(["N/A"] * 20),
    # unquoted commas but the arn is not in the second column
    "a,b,arn:aws:iam::123456789012:user/a,b," + ",".join(["N/A"] * 19),
])
def test_row_that_cannot_be_repaired_names_the_line(bad_row: str) -> None:
    text = render([row("alice")]) + bad_row + "\n"
    err = invalid(text)
    assert "line 3" in str(err)


def test_unrepairable_when_arn_is_not_second_column() -> None:
    header = ["arn", *[c for c in HEADER if c != "arn"]]
    good = row("alice")
    bad = row("a,b")
    text = render([good], header) + ",".join(bad[c] for c in header) + "\n"
    assert "line 3" in str(invalid(text))


@pytest.mark.parametrize("value", ["yes", "1", "", "N/A", "maybe"])
def test_bad_boolean_in_active_column(value: str) -> None:
    err = invalid(render([row("alice"), row("bob", k2=(value, "N/A", "N/A"))]))
    assert "line 3" in str(err)
    assert "access_key_2_active" in str(err)


@pytest.mark.parametrize(("column", "value"), [
    ("access_key_1_last_rotated", "yesterday"),
    ("access_key_2_last_rotated", "2024-13-01T00:00:00+00:00"),
    ("access_key_1_last_used_date", "01/02/2024"),
    ("access_key_1_last_rotated", "2024-01-01T25:00:00+00:00"),
    ("access_key_2_last_used_date", "2024-01-01T00:00:00+25:00"),
])
def test_bad_timestamp(column: str, value: str) -> None:
    r = row("alice", k1=("true", "2024-01-01T00:00:00+00:00", "N/A"),
            k2=("true", "2024-01-01T00:00:00+00:00", "N/A"))
    r[column] = value
    err = invalid(render([r]))
    assert "bad timestamp" in str(err)
    assert value[:10] in str(err)


def test_empty_user_name_is_invalid() -> None:
    assert "line 2" in str(invalid(render([row("", arn="")])))


def test_unterminated_quote_is_invalid() -> None:
    text = render([row("alice")]) + '"bob,arn:aws:iam::123456789012:user/bob'
    invalid(text)


# hypothesis: whatever arrives, the parser answers with a report or CredentialReportError

_cells = st.one_of(
    st.sampled_from(["true", "false", "TRUE", "N/A", "no_information", "not_supported", "",
                     "2014-09-01T22:28:48+00:00", "2024-02-30T00:00:00", "0001-01-01T00:00:00",
                     "9999-12-31T23:59:59-12:00", "<root_account>", ",", '"', "\r", "\x00",
                     f"arn:aws:iam::{ACCOUNT}:user/a,b", "a,b", "user/"]),
    st.text(max_size=12),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=400), st.text(max_size=400)))
def test_parse_random_input_raises_only_credential_report_error(content: bytes | str) -> None:
    try:
        report = parse(content)
    except CredentialReportError as e:
        assert e.code == "CredentialReportInvalid"
    else:
        assert isinstance(report, Report)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from([HEADER, HEADER[:10]]), st.booleans())
def test_parse_random_rows_raise_only_credential_report_error(
        data: st.DataObject, header: list[str], as_bytes: bool) -> None:
    width = len(header)
    # rows of the right width (which may parse) mixed with ragged ones
    rows = data.draw(st.lists(st.one_of(
        st.lists(_cells, min_size=width, max_size=width),
        st.lists(_cells, min_size=1, max_size=width + 4),
    ), max_size=5))
    text = ",".join(header) + "\n" + "\n".join(",".join(r) for r in rows)
    content: bytes | str = text.encode("utf-8", "surrogatepass") if as_bytes else text
    try:
        report = parse(content)
    except CredentialReportError as e:
        assert e.code == "CredentialReportInvalid"
    else:
        for u in report.users:
            assert u.name and u.name != "<root_account>"
            assert u.path.startswith("/") and u.path.endswith("/")
            assert all(k.status in ("Active", "Inactive") and k.slot in (1, 2) for k in u.keys)


# ---------------------------------------------------------------------------------------
# fetch: Generate → poll → Get, with a fake sleep


GENERATED = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
CONTENT = render([row("alice", k1=("true", "2024-01-01T00:00:00+00:00", "N/A"),
                      k2=("true", "2024-02-01T00:00:00+00:00", "N/A")),
                  row("bob", "/ops/", k1=("false", "2024-01-01T00:00:00+00:00", "N/A"))]
                 ).encode()


class Sleeps(list[float]):
    """A sleep that records its delays and returns at once."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def generate(stub: Stubber, state: str) -> None:
    stub.add_response("generate_credential_report", {"State": state}, {})


def get(stub: Stubber, content: bytes = CONTENT, generated: datetime | None = GENERATED) -> None:
    resp: dict[str, Any] = {"Content": content, "ReportFormat": "text/csv"}
    if generated is not None:
        resp["GeneratedTime"] = generated
    stub.add_response("get_credential_report", resp, {})


def error(stub: Stubber, method: str, code: str, status: int) -> None:
    stub.add_client_error(method, service_error_code=code, http_status_code=status,
                          expected_params={})


def check_content(report: Report) -> None:
    assert [(u.name, u.path, u.count("Active"), u.count("Inactive")) for u in report.users] == [
        ("alice", "/", 2, 0), ("bob", "/ops/", 0, 1)]


def test_fetch_polls_until_complete(client: Any, stub: Stubber) -> None:
    generate(stub, "STARTED")
    generate(stub, "INPROGRESS")
    generate(stub, "INPROGRESS")
    generate(stub, "COMPLETE")
    get(stub)
    sleeps = Sleeps()
    report = credential_report.fetch(client, 120, sleep=sleeps)
    stub.assert_no_pending_responses()
    assert sleeps == [1.0, 2.0, 4.0]  # exponential back-off
    check_content(report)
    assert report.generated == GENERATED.timestamp() == 1714564800.0


def test_fetch_complete_at_once_does_not_sleep(client: Any, stub: Stubber) -> None:
    generate(stub, "COMPLETE")
    get(stub, generated=datetime(2015, 2, 2, 20, 2, 2, tzinfo=UTC))
    sleeps = Sleeps()
    report = credential_report.fetch(client, 120, sleep=sleeps)
    assert sleeps == []
    assert report.generated == 1422907322.0
    stub.assert_no_pending_responses()


def test_fetch_without_generated_time(client: Any, stub: Stubber) -> None:
    generate(stub, "COMPLETE")
    get(stub, generated=None)
    report = credential_report.fetch(client, 120, sleep=Sleeps())
    assert report.generated is None
    check_content(report)


def test_fetch_retries_limit_exceeded_on_generate(client: Any, stub: Stubber) -> None:
    error(stub, "generate_credential_report", "LimitExceeded", 409)
    error(stub, "generate_credential_report", "LimitExceeded", 409)
    generate(stub, "COMPLETE")
    get(stub)
    sleeps = Sleeps()
    check_content(credential_report.fetch(client, 120, sleep=sleeps,
                                          first_delay=0.5))
    assert sleeps == [0.5, 1.0]
    stub.assert_no_pending_responses()


@pytest.mark.parametrize(("code", "status"), [("ReportNotPresent", 410),
                                              ("ReportExpired", 410),
                                              ("ReportInProgress", 404)])
def test_fetch_retries_get_errors_by_generating_again(client: Any, stub: Stubber, code: str,
                                                      status: int) -> None:
    generate(stub, "COMPLETE")
    error(stub, "get_credential_report", code, status)
    generate(stub, "COMPLETE")
    get(stub)
    sleeps = Sleeps()
    check_content(credential_report.fetch(client, 120, sleep=sleeps))
    assert sleeps == [1.0]
    stub.assert_no_pending_responses()


@pytest.mark.parametrize(("wait", "delays"), [
    (0.5, []),
    (3.5, [1.0, 2.0]),
    (30, [1.0, 2.0, 4.0, 8.0, 10.0]),  # the back-off is capped at 10 s
    (60, [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0]),
])
def test_fetch_times_out_within_wait_seconds(client: Any, stub: Stubber, wait: float,
                                             delays: list[float]) -> None:
    # exactly the calls the budget allows: one more would hit the Stubber's empty queue
    for _ in range(len(delays) + 1):
        generate(stub, "INPROGRESS")
    sleeps = Sleeps()
    with pytest.raises(CredentialReportError) as info:
        credential_report.fetch(client, wait, sleep=sleeps)
    assert info.value.code == "CredentialReportTimeout"
    assert "INPROGRESS" in str(info.value)
    assert f"{wait:g}s" in str(info.value)
    assert sleeps == delays
    assert sum(sleeps) <= wait
    stub.assert_no_pending_responses()


def test_fetch_timeout_names_the_last_error(client: Any, stub: Stubber) -> None:
    for _ in range(3):
        error(stub, "generate_credential_report", "LimitExceeded", 409)
    with pytest.raises(CredentialReportError) as info:
        credential_report.fetch(client, 3.5, sleep=Sleeps())
    assert info.value.code == "CredentialReportTimeout"
    assert "LimitExceeded" in str(info.value)
    stub.assert_no_pending_responses()


@pytest.mark.parametrize("method", ["generate_credential_report", "get_credential_report"])
def test_fetch_raises_non_retryable_errors_at_once(client: Any, stub: Stubber,
                                                   method: str) -> None:
    if method == "get_credential_report":
        generate(stub, "COMPLETE")
    error(stub, method, "AccessDenied", 403)
    sleeps = Sleeps()
    with pytest.raises(ClientError) as info:
        credential_report.fetch(client, 120, sleep=sleeps)
    assert info.value.response["Error"]["Code"] == "AccessDenied"
    assert sleeps == []
    stub.assert_no_pending_responses()


def test_fetch_invalid_content_is_not_retried(client: Any, stub: Stubber) -> None:
    generate(stub, "COMPLETE")
    get(stub, content=b"<html><body>Rate exceeded</body></html>")
    sleeps = Sleeps()
    with pytest.raises(CredentialReportError) as info:
        credential_report.fetch(client, 120, sleep=sleeps)
    assert info.value.code == "CredentialReportInvalid"
    assert sleeps == []
    stub.assert_no_pending_responses()


# ---------------------------------------------------------------------------------------
# The download through botocore's own HTTP answer parsing (a real client, canned bodies)


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


def _http_client(report_xml: bytes) -> Any:
    """An IAM client whose GenerateCredentialReport answers COMPLETE and whose
    GetCredentialReport answers report_xml, parsed by botocore as a real answer."""
    iam = boto3.client("iam", region_name="us-east-1", aws_access_key_id="x",
                       aws_secret_access_key="x")

    def send(request: Any, event_name: str, **_: Any) -> AWSResponse:
        if event_name.endswith(".GenerateCredentialReport"):
            body = (b'<GenerateCredentialReportResponse xmlns="https://iam.amazonaws.com/'
                    b'doc/2010-05-08/"><GenerateCredentialReportResult><State>COMPLETE'
                    b"</State></GenerateCredentialReportResult>"
                    b"</GenerateCredentialReportResponse>")
        else:
            body = report_xml
        return AWSResponse(request.url, 200, {"Content-Type": "text/xml"}, _Raw(body))

    iam.meta.events.register("before-send.iam", send)
    return iam


def _xml(content_b64: bytes | None) -> bytes:
    content = b"" if content_b64 is None else b"<Content>" + content_b64 + b"</Content>"
    return (b'<GetCredentialReportResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">'
            b"<GetCredentialReportResult>" + content +
            b"<ReportFormat>text/csv</ReportFormat>"
            b"<GeneratedTime>2026-11-28T01:00:00Z</GeneratedTime>"
            b"</GetCredentialReportResult></GetCredentialReportResponse>")


def _big_csv(users: int) -> bytes:
    rows = [",".join(HEADER)]
    width = len(HEADER)
    for i in range(users):
        row = dict.fromkeys(HEADER, "N/A")
        row.update({"user": f"user-{i:05d}", "arn": f"arn:aws:iam::1:user/team/user-{i:05d}",
                    "access_key_1_active": "true",
                    "access_key_1_last_rotated": "2026-01-02T03:04:05+00:00",
                    "access_key_1_last_used_date": "2026-02-03T04:05:06+00:00",
                    "access_key_2_active": "false"})
        rows.append(",".join(row[h] for h in HEADER))
        assert len(row) == width
    return ("\ufeff" + "\n".join(rows) + "\n").encode()


@pytest.mark.parametrize("wrap", [False, True])
def test_report_is_parsed_from_botocores_answer(wrap: bool) -> None:
    raw = _big_csv(3000)
    b64 = base64.encodebytes(raw) if wrap else base64.b64encode(raw)  # line breaks or not
    report = credential_report.fetch(_http_client(_xml(b64)), 120)
    assert report == parse(raw, report.generated)
    assert len(report.users) == 3000 and report.users[0].path == "/team/"
    assert report.generated == utc("2026-11-28T01:00:00+00:00")


@pytest.mark.parametrize("content", [b"", None, b"QUJD!!"], ids=["empty", "missing", "bad"])
def test_report_without_readable_content_is_invalid(content: bytes | None) -> None:
    """AWS always sends at least the header row: an answer without a readable report
    must fail loudly, never read as an account without users."""
    with pytest.raises(CredentialReportError) as info:
        credential_report.fetch(_http_client(_xml(content)), 120)
    assert info.value.code == "CredentialReportInvalid"


def test_report_without_content_from_the_stub_is_invalid(client: Any, stub: Stubber) -> None:
    generate(stub, "COMPLETE")
    stub.add_response("get_credential_report", {"ReportFormat": "text/csv"}, {})
    with pytest.raises(CredentialReportError) as info:
        credential_report.fetch(client, 120, sleep=Sleeps())
    assert info.value.code == "CredentialReportInvalid"
