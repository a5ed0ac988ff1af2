"""Typed errors: every failure that can cross a process boundary has one code, one class, one reply.

Why one hierarchy: a service that receives hostile or broken input must answer with a typed `ErrorReply`
(issue 10), never crash and never leak a stack trace. If every layer (message parsing, bus, store, limits)
raises a `ScoutError` carrying its `ErrorCode`, a request handler needs exactly one ``except ScoutError`` to turn
any expected failure into a reply, and anything else is by definition a bug (answered as ``internal``, logged).
The client side reverses the mapping (`error_for_code`), so a remote ``blob_missing`` is raised locally as
`BlobMissing` and callers can ``except`` the same class whether the failure happened here or in another process.

Input errors (`BadRequest` and its subclasses) also derive from `ValueError`: pydantic wraps a ``ValueError``
raised in a validator into its ``ValidationError``, so the same validation helpers serve models and plain calls.
"""

from __future__ import annotations

import enum
from typing import ClassVar

__all__ = [
    "BadRequest",
    "BlobCorrupt",
    "BlobError",
    "BlobMissing",
    "BlobTooLarge",
    "BusClosed",
    "ErrorCode",
    "Forbidden",
    "InternalError",
    "NoResponders",
    "Overloaded",
    "PayloadTooLarge",
    "ScoutError",
    "Timeout",
    "TooLarge",
    "UnknownModel",
    "UnsupportedVersion",
    "error_for_code",
]

MAX_ERROR_MESSAGE_CHARS = 1024
"""Error messages are truncated to this length: they travel in replies and logs, and must stay small."""


class ErrorCode(enum.StrEnum):
    """The closed set of error codes an `ErrorReply` may carry."""

    BAD_REQUEST = "bad_request"
    UNSUPPORTED_VERSION = "unsupported_version"
    TOO_LARGE = "too_large"
    UNKNOWN_MODEL = "unknown_model"
    BLOB_MISSING = "blob_missing"
    BLOB_CORRUPT = "blob_corrupt"
    TIMEOUT = "timeout"
    OVERLOADED = "overloaded"
    INTERNAL = "internal"
    FORBIDDEN = "forbidden"


class ScoutError(Exception):
    """Base of every expected failure; `code` says which `ErrorReply` it becomes, `retryable` whether a client
    may try the same request again (later, or on another replica) with a chance of success."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        text = str(message)
        if len(text) > MAX_ERROR_MESSAGE_CHARS:
            text = text[: MAX_ERROR_MESSAGE_CHARS - 3] + "..."
        super().__init__(text)
        self.message = text
        self.request_id = request_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code.value!r})"


class BadRequest(ScoutError, ValueError):
    """The input is malformed or violates a limit: retrying the same bytes can never succeed."""

    code = ErrorCode.BAD_REQUEST


class UnsupportedVersion(BadRequest):
    """A message's ``schema_version`` is missing or one this reader does not know."""

    code = ErrorCode.UNSUPPORTED_VERSION


class TooLarge(BadRequest):
    """Something (a message, a field, a blob) exceeds a configured size limit; checked before allocation."""

    code = ErrorCode.TOO_LARGE


class PayloadTooLarge(TooLarge):
    """A bus message (headers + body) exceeds the bus's max payload; refused before anything is sent."""


class UnknownModel(ScoutError):
    """The request names a model (or fingerprint) this service does not serve."""

    code = ErrorCode.UNKNOWN_MODEL


class Forbidden(ScoutError):
    """The caller may not do this (e.g. a device reading another device's staged blob)."""

    code = ErrorCode.FORBIDDEN


class BlobError(ScoutError):
    """Base of blob-store failures."""


class BlobMissing(BlobError):
    """No (complete) entry under the key: never written, half-written, expired or deleted."""

    code = ErrorCode.BLOB_MISSING


class BlobCorrupt(BlobError):
    """The entry exists but its size or SHA-256 does not match its metadata (or its metadata is unreadable)."""

    code = ErrorCode.BLOB_CORRUPT


class BlobTooLarge(BlobError):
    """The stored entry is larger than the reader accepts; detected from metadata, before the content is read."""

    code = ErrorCode.TOO_LARGE


class Timeout(ScoutError):
    """No answer in time (a request/reply, a JetStream publish ack, a deadline)."""

    code = ErrorCode.TIMEOUT
    retryable = True


class Overloaded(ScoutError):
    """Too much work in flight (per device or per service): try again later."""

    code = ErrorCode.OVERLOADED
    retryable = True


class NoResponders(Overloaded):
    """Nobody serves the subject right now (NATS 503 / no stream for a work-queue subject)."""


class BusClosed(ScoutError):
    """The bus connection is closed (or was never opened)."""

    code = ErrorCode.INTERNAL
    retryable = True


class InternalError(ScoutError):
    """An unexpected failure; the message says nothing about internals (those go to the log only)."""

    code = ErrorCode.INTERNAL


_BY_CODE: dict[ErrorCode, type[ScoutError]] = {
    ErrorCode.BAD_REQUEST: BadRequest,
    ErrorCode.UNSUPPORTED_VERSION: UnsupportedVersion,
    ErrorCode.TOO_LARGE: TooLarge,
    ErrorCode.UNKNOWN_MODEL: UnknownModel,
    ErrorCode.BLOB_MISSING: BlobMissing,
    ErrorCode.BLOB_CORRUPT: BlobCorrupt,
    ErrorCode.TIMEOUT: Timeout,
    ErrorCode.OVERLOADED: Overloaded,
    ErrorCode.INTERNAL: InternalError,
    ErrorCode.FORBIDDEN: Forbidden,
}


def error_for_code(code: ErrorCode, message: str, *, request_id: str | None = None) -> ScoutError:
    """The local exception for a remote error code (the inverse of ``ScoutError.code``)."""
    return _BY_CODE[ErrorCode(code)](message, request_id=request_id)
