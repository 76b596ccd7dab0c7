"""Parsing one SQS message body: hints, ignored events and invalid (hostile) bodies."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.events.message import Hint, Ignored, InvalidEvent, parse
from tests.events_helpers import body, event
from tests.helpers import MOTO_ACCOUNT

A = MOTO_ACCOUNT
WHEN = datetime(2024, 5, 1, 12, 34, 56, tzinfo=UTC).timestamp()


def with_(ev: dict[str, Any], path: str, value: Any) -> str:
    """The event with the value at a dotted path set (a missing value: removed)."""
    *parents, leaf = path.split(".")
    node = ev
    for p in parents:
        node = node[p]
    if value is _MISSING:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return json.dumps(ev)


_MISSING = object()


# (id, body, expected hint as (account, user, event)) — every handled kind and shape.
HINTS = [
    ("create-key", body("CreateAccessKey", "alice", when=WHEN), ("alice", "CreateAccessKey")),
    ("update-key", body("UpdateAccessKey", "alice", key_id="AKIA1", status="Inactive"),
     ("alice", "UpdateAccessKey")),
    ("delete-key", body("DeleteAccessKey", "alice", key_id="AKIA1"),
     ("alice", "DeleteAccessKey")),
    ("create-user", body("CreateUser", "bob"), ("bob", "CreateUser")),
    ("delete-user", body("DeleteUser", "bob"), ("bob", "DeleteUser")),
    ("tag-user", body("TagUser", "bob", requestParameters={
        "userName": "bob", "tags": [{"key": "Team", "value": "x"}]}), ("bob", "TagUser")),
    ("untag-user", body("UntagUser", "bob", requestParameters={
        "userName": "bob", "tagKeys": ["Team"]}), ("bob", "UntagUser")),
    # A user acting on its own keys: the request names no user.
    ("self-create", body("CreateAccessKey", "carol", self_service=True),
     ("carol", "CreateAccessKey")),
    ("self-update", body("UpdateAccessKey", "carol", self_service=True, key_id="AKIA1",
                         status="Inactive"), ("carol", "UpdateAccessKey")),
    ("self-delete", body("DeleteAccessKey", "carol", self_service=True, key_id="AKIA1"),
     ("carol", "DeleteAccessKey")),
    # The request's user wins over the caller's.
    ("admin-names-user", body("DeleteAccessKey", "dave", caller="admin", key_id="AKIA1"),
     ("dave", "DeleteAccessKey")),
    ("odd-but-valid-name", body("CreateAccessKey", "frank.o+ops=1,2@x-y_z"),
     ("frank.o+ops=1,2@x-y_z", "CreateAccessKey")),
    # Wrapped once in an SNS notification (an SNS fan-out without raw delivery).
    ("sns-wrapped", json.dumps({"Type": "Notification", "MessageId": "m",
                                "Message": body("CreateAccessKey", "alice")}),
     ("alice", "CreateAccessKey")),
]


@pytest.mark.parametrize(("text", "want"), [h[1:] for h in HINTS], ids=[h[0] for h in HINTS])
def test_handled_events_name_the_account_and_user(text: str, want: tuple[str, str]) -> None:
    got = parse(text)
    assert isinstance(got, Hint)
    assert (got.account_id, got.user_name, got.event_name) == (A, *want)
    assert got.event_time is not None


def test_event_time_is_cloudtrails_else_the_envelopes() -> None:
    got = parse(body("CreateAccessKey", "alice", when=WHEN))
    assert isinstance(got, Hint) and got.event_time == WHEN
    ev = event("CreateAccessKey", "alice", eventTime=None)
    ev["time"] = "2024-05-01T12:34:57Z"
    got = parse(json.dumps(ev))
    assert isinstance(got, Hint) and got.event_time == WHEN + 1
    ev["time"] = None
    got = parse(json.dumps(ev))
    assert isinstance(got, Hint) and got.event_time is None  # SQS SentTimestamp then
    got = parse(body("CreateAccessKey", "alice", eventTime="2024-05-01T14:34:56.5+02:00"))
    assert isinstance(got, Hint) and got.event_time == WHEN + 0.5


IGNORED = [
    ("other-source", with_(event("CreateAccessKey", "a"), "source", "aws.s3"), "source"),
    ("other-detail-type", with_(event("CreateAccessKey", "a"), "detail-type",
                                "AWS Console Sign In via CloudTrail"), "detail-type"),
    ("unhandled-event", body("AttachUserPolicy", "a"), "event"),
    ("read-only-event", body("ListAccessKeys", "a"), "event"),
    ("failed-call", body("CreateAccessKey", "a", error="AccessDenied"), "failed call"),
    ("failed-call-no-user", body("DeleteUser", None, error="NoSuchEntity"), "failed call"),
    ("root-own-key", body("CreateAccessKey", None, userIdentity={
        "type": "Root", "arn": f"arn:aws:iam::{A}:root", "accountId": A},
        responseElements={"accessKey": {"accessKeyId": "AKIA1", "status": "Active"}}),
     "root"),
]


@pytest.mark.parametrize(("text", "reason"), [i[1:] for i in IGNORED],
                         ids=[i[0] for i in IGNORED])
def test_events_that_need_nothing_are_ignored(text: str, reason: str) -> None:
    assert parse(text) == Ignored(reason)


DEEP = "[" * 100_000 + "]" * 100_000
INVALID = [
    ("not-json", "not json"),
    ("empty", ""),
    ("none", None),
    ("bytes", b'{"source": "aws.iam"}'),
    ("json-list", "[1, 2]"),
    ("json-string", '"aws.iam"'),
    ("deeply-nested", DEEP),
    ("huge-body", json.dumps({"source": "aws.iam", "pad": "x" * (1024 * 1024 + 1)})),
    ("huge-number", '{"source": "aws.iam", "n": ' + "9" * 5000 + "}"),
    ("no-source", json.dumps({"detail": {}})),
    ("source-not-string", with_(event("CreateAccessKey", "a"), "source", 7)),
    ("no-account", with_(event("CreateAccessKey", "a"), "account", _MISSING)),
    ("account-number", with_(event("CreateAccessKey", "a"), "account", 123456789012)),
    ("account-short", with_(event("CreateAccessKey", "a"), "account", "12345")),
    ("account-unicode-digits", with_(event("CreateAccessKey", "a"), "account", "١" * 12)),
    ("no-detail", with_(event("CreateAccessKey", "a"), "detail", _MISSING)),
    ("detail-string", with_(event("CreateAccessKey", "a"), "detail", "{}")),
    ("no-event-name", with_(event("CreateAccessKey", "a"), "detail.eventName", _MISSING)),
    ("event-name-list", with_(event("CreateAccessKey", "a"), "detail.eventName",
                              ["CreateAccessKey"])),
    ("user-name-number", with_(event("CreateAccessKey", "a"),
                               "detail.requestParameters.userName", 42)),
    ("user-name-bool", with_(event("CreateAccessKey", "a"),
                             "detail.requestParameters.userName", True)),
    ("user-name-object", with_(event("CreateAccessKey", "a"),
                               "detail.requestParameters.userName", {"x": 1})),
    ("user-name-too-long", body("CreateAccessKey", "a" * 65)),
    ("user-name-bad-chars", body("CreateAccessKey", "a/b")),
    ("user-name-newline", body("CreateAccessKey", "alice\n")),
    ("user-name-empty", body("CreateAccessKey", "")),
    ("params-list", with_(event("CreateAccessKey", "a"), "detail.requestParameters", [])),
    ("response-string", with_(event("CreateAccessKey", "a"), "detail.responseElements", "x")),
    ("identity-type-number", body("UpdateAccessKey", "a", self_service=True,
                                  userIdentity={"type": 1, "userName": "a"})),
    ("error-code-number", with_(event("CreateAccessKey", "a"), "detail.errorCode", 403)),
    ("time-number", with_(event("CreateAccessKey", "a"), "detail.eventTime", 1714566896)),
    ("time-garbage", with_(event("CreateAccessKey", "a"), "detail.eventTime", "yesterday")),
    ("time-month-13", with_(event("CreateAccessKey", "a"), "detail.eventTime",
                            "2024-13-01T00:00:00Z")),
    ("time-year-0", with_(event("CreateAccessKey", "a"), "detail.eventTime",
                          "0000-01-01T00:00:00Z")),
    ("time-overflow", with_(event("CreateAccessKey", "a"), "detail.eventTime",
                            "9999-12-31T23:59:59-12:00")),
    # A handled event that names no user anywhere.
    ("no-user", body("DeleteUser", None)),
    ("self-service-role", body("UpdateAccessKey", None, key_id="AKIA1", userIdentity={
        "type": "AssumedRole", "arn": f"arn:aws:sts::{A}:assumed-role/x/y"})),
    ("sns-message-not-string", json.dumps({"Type": "Notification", "Message": {"a": 1}})),
    ("sns-message-garbage", json.dumps({"Type": "Notification", "Message": "{"})),
]


@pytest.mark.parametrize("text", [i[1] for i in INVALID], ids=[i[0] for i in INVALID])
def test_unreadable_bodies_are_invalid_never_a_crash(text: Any) -> None:
    with pytest.raises(InvalidEvent) as e:
        parse(text)
    # The reason is short and never quotes the body.
    assert len(str(e.value)) < 200


def test_the_reason_never_repeats_the_body() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    for text in (f'{{"source": "aws.iam", "x": "{secret}"', secret,
                 body("CreateAccessKey", secret)):
        with pytest.raises(InvalidEvent) as e:
            parse(text)
        assert secret not in str(e.value) and "EXAMPLEKEY" not in str(e.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["source", "detail-type", "account", "detail",
                                        "time", "Type", "Message"]), json_values))
def test_any_json_object_parses_or_is_invalid(envelope: dict[str, Any]) -> None:
    with contextlib.suppress(InvalidEvent):
        parse(json.dumps(envelope))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["eventName", "eventTime", "errorCode",
                                        "requestParameters", "responseElements",
                                        "userIdentity"]), json_values),
       st.sampled_from(["CreateAccessKey", "UpdateAccessKey", "DeleteUser", "TagUser"]))
def test_any_detail_parses_or_is_invalid(detail: dict[str, Any], name: str) -> None:
    ev = event(name, "alice")
    ev["detail"].update(detail)
    try:
        got = parse(json.dumps(ev))
    except InvalidEvent:
        return
    assert isinstance(got, Hint | Ignored)
    if isinstance(got, Hint):
        assert got.account_id == A and 1 <= len(got.user_name) <= 64
