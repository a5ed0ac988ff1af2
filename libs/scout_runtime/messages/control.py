"""Typed failures (`ErrorReply`) and liveness beacons (`Health`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from scout_runtime.errors import ErrorCode, ScoutError, error_for_code
from scout_runtime.messages.base import Message
from scout_runtime.subjects import Token


class ErrorReply(Message):
    """A typed failure, sent instead of the expected reply (or on ``scout.v1.errors``)."""

    type: Literal["error"] = "error"
    code: ErrorCode
    message: str = Field(default="", max_length=1024)
    request_id: str | None = Field(default=None, max_length=64)
    retryable: bool = False

    @classmethod
    def from_error(cls, error: ScoutError, request_id: str | None = None) -> ErrorReply:
        """The reply for a local error (``request_id`` wins over the one the error carries)."""
        return cls(
            code=error.code,
            message=error.message,
            request_id=request_id if request_id is not None else error.request_id,
            retryable=error.retryable,
        )

    def to_error(self) -> ScoutError:
        """The local exception this reply stands for (`BlobMissing` for ``blob_missing``, and so on)."""
        return error_for_code(self.code, self.message, request_id=self.request_id)


class Health(Message):
    """A service instance's liveness/readiness beacon."""

    type: Literal["health"] = "health"
    role: Token
    instance: str = Field(max_length=128)
    ready: bool
    checks: dict[Annotated[str, Field(max_length=64)], bool] = Field(default_factory=dict, max_length=32)
    at: float = Field(ge=0, allow_inf_nan=False)
