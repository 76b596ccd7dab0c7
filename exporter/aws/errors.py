"""Errors of the reads, each reduced to a short, stable class for metrics and logs."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError


class CollectionError(Exception):
    """A collection problem with a stable code (used as the ``error`` label)."""

    code = "CollectionError"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code:
            self.code = code


class CredentialReportError(CollectionError):
    code = "CredentialReportError"


def error_code(exc: BaseException) -> str:
    """Short class of an error: the AWS error code, or the exception's class name."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "ClientError")
    if isinstance(exc, CollectionError):
        return exc.code
    if isinstance(exc, BotoCoreError):
        return type(exc).__name__
    return type(exc).__name__


def client_error_code(exc: BaseException) -> str | None:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "")
    return None
