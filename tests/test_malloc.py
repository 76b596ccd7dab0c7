"""exporter.malloc: glibc tuning takes effect here and is a no-op without glibc."""

from __future__ import annotations

import ctypes
from typing import Any

import pytest

from exporter import malloc


def test_tune_is_taken_by_glibc() -> None:
    # This machine (and the container image) run glibc.
    assert malloc.tune() is True
    malloc.trim()


def test_without_glibc_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_libc(*_: Any, **__: Any) -> Any:
        raise OSError("no such library")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert malloc.tune() is False
    malloc.trim()  # does not raise


def test_a_libc_without_mallopt_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    class Musl:
        pass

    monkeypatch.setattr(ctypes, "CDLL", lambda *_: Musl())
    assert malloc.tune() is False
    malloc.trim()
