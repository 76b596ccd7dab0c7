"""HTTP basic auth against bcrypt hashes, for the exporter's endpoints."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Mapping

import bcrypt


class BasicAuth:
    """HTTP basic auth against bcrypt hashes; with no users every request is let through.

    bcrypt is slow on purpose (tens of milliseconds a check), so a successful check is
    remembered by an HMAC of the credentials under a per-process random key: a scrape
    with the right password costs one hash, not one bcrypt. Failures are never
    remembered, and an unknown user costs a bcrypt check too, so timing tells nothing.
    """

    MAX_CACHED = 256

    def __init__(self, users: Mapping[str, str] | None = None) -> None:
        self._key = os.urandom(32)
        self.set_users(users or {})

    def set_users(self, users: Mapping[str, str]) -> None:
        table = {name.encode(): hashed.encode() for name, hashed in users.items()}
        dummy = b""
        if table:
            cost = min(int(h[4:6]) for h in table.values())
            dummy = bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds=cost))
        # One reference, swapped whole: a check in flight sees the old or the new table.
        self._state: tuple[dict[bytes, bytes], set[bytes], bytes] = (table, set(), dummy)

    @property
    def enabled(self) -> bool:
        return bool(self._state[0])

    def check(self, header: str) -> bool:
        """Whether an Authorization header holds valid credentials."""
        table, cache, dummy = self._state
        if not table:
            return True
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            raw = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = raw.partition(b":")
        if not sep:
            return False
        digest = hmac.new(self._key, raw, hashlib.sha256).digest()
        if digest in cache:
            return True
        hashed = table.get(user)
        try:
            ok = bcrypt.checkpw(password, hashed or dummy) and hashed is not None
        except ValueError:  # e.g. a password over bcrypt's 72 bytes
            ok = False
        if ok:
            if len(cache) >= self.MAX_CACHED:
                cache.clear()
            cache.add(digest)
        return ok
