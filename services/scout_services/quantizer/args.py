"""Settings of the quantizer role (``SCOUT_QUANTIZER_*``); stores, NATS and limits come from `Settings`."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class QuantizerArgs(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCOUT_QUANTIZER_", extra="ignore")

    concurrency: int = Field(default=2, ge=1)
    """Encode requests handled at once (encoding runs in worker threads, one at a time per CPU-bound step)."""
    min_goodput_bytes: int = Field(default=64 * 1024, ge=0)
    """Uploads smaller than this report no goodput: their time is latency, not rate."""
    blob_ttl_s: int | None = Field(default=None, ge=1)
    """TTL of uploaded blobs in the cloud store (default: ``SCOUT_STORE_TTL_S``)."""
