"""Re-reading one user from IAM, for an event: what a listing and a poll would find.

At most two IAM calls: GetUser (existence, path and tags) only when the user is not
already known or the user itself changed (CreateUser, DeleteUser, a tag change when tags
are wanted), then ListAccessKeys. A key event on a known user costs one call. Last-used
dates come from the user as last known; a key not known then was just created and has
none yet.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from typing import Final, Literal

from exporter.aws.collect import DENIED, owner_of
from exporter.aws.errors import client_error_code
from exporter.aws.last_used import take_slot
from exporter.aws.list_strategy import NO_OWNER, IamLists, Owner, UserRef, list_keys
from exporter.config import Config
from exporter.inventory import AccessKey, User

# A user outside collection.users: not exported, whatever IAM says.
OUTSIDE: Final = "outside"
_GONE: Final = "gone"
# The user (None: gone, or OUTSIDE), and whether its path and tags were read now.
ReadResult = tuple[User | Literal["outside"] | None, bool]

# Events after which the user's path or existence may differ from what is known.
_RECREATE = frozenset({"CreateUser", "DeleteUser"})
_TAGS = frozenset({"TagUser", "UntagUser"})


def tags_wanted(cfg: Config, strategy: str) -> bool:
    """Whether the strategy's inventory carries tags (and the exemption): the list
    strategy always reads them, the credential report only for tag labels."""
    return strategy == "list" or bool(cfg.metrics.user_tags)


def read_user(iam: IamLists, cfg: Config, strategy: str, name: str, known: User | None,
              events: Collection[str]) -> ReadResult:
    """The user as IAM has it now (named as IAM spells it: names are unique whatever
    their case), None if it no longer exists, or OUTSIDE."""
    wanted = tags_wanted(cfg, strategy)
    changed = _RECREATE & set(events) or (wanted and _TAGS & set(events))
    found = (_identity(iam, cfg, name, wanted, known is not None)
             if known is None or changed else None)
    if found == _GONE:
        return None, True
    if isinstance(found, tuple):
        name, path, owner = found
    else:
        assert known is not None, "_identity raises for an unknown user"
        name, path, owner = known.name, known.path, (known.tags, known.exempt)
    filters = cfg.collection.users
    if filters.active and not filters.matches(name, path):
        return OUTSIDE, True
    keys = list_keys(iam, name)
    if keys is None:
        return None, True
    return User(name=name, path=path, keys=_finish(keys, known, strategy),
                tags=owner[0], exempt=owner[1]), isinstance(found, tuple)


def _identity(iam: IamLists, cfg: Config, name: str, wanted: bool,
              known: bool) -> tuple[str, str, Owner] | Literal["gone"] | None:
    """GetUser: the user's name, path and owner tags, or "gone". When the call is denied,
    None for a known user (a role without iam:GetUser still gets its keys; its path and
    tags follow at the next listing), else the error."""
    try:
        got = iam.get_user(UserName=name)["User"]
    except Exception as e:
        code = client_error_code(e)
        if code == "NoSuchEntity":
            return _GONE
        if code in DENIED and known:
            return None
        raise
    spelt = got.get("UserName")
    name = spelt if isinstance(spelt, str) and spelt.lower() == name.lower() else name
    path = str(got.get("Path") or "/")
    tags = {t["Key"]: t["Value"] for t in got.get("Tags") or ()}
    return name, path, (owner_of(cfg)(UserRef(name, path, tags)) if wanted else NO_OWNER)


def _finish(keys: tuple[AccessKey, ...], known: User | None,
            strategy: str) -> tuple[AccessKey, ...]:
    """Last-used dates (and report slots) carried over from the keys as last known,
    matched by key id, or by creation time where the inventory has no ids (credential
    report). With the credential-report strategy the keys stay as the report shows them
    (slots, no ids, whole-second creation times), so the series do not change between
    events and polls."""
    old = list(known.keys) if known is not None else []
    matched: list[AccessKey | None] = [_take(old, k) for k in keys]
    out = [replace(k, last_used=m.last_used if m is not None else None)
           for k, m in zip(keys, matched, strict=True)]
    if strategy != "credential-report":
        return tuple(out)
    used = {m.slot for m in matched if m is not None and m.slot}
    free = (s for s in range(1, len(keys) + len(used) + 1) if s not in used)
    return tuple(replace(k, key_id=None, slot=m.slot if m.slot else next(free),
                         created=m.created) if m is not None
                 else replace(k, key_id=None, slot=next(free),
                              created=None if k.created is None else float(int(k.created)))
                 for k, m in zip(out, matched, strict=True))


def _take(old: list[AccessKey], key: AccessKey) -> AccessKey | None:
    for i, k in enumerate(old):
        if k.key_id is not None and k.key_id == key.key_id:
            return old.pop(i)
    # No id (credential report): the report's own matching, by creation time.
    slot = take_slot([k for k in old if k.key_id is None], key.created)
    if slot is not None:
        old.remove(slot)
    return slot
