"""Settings of the selector role (``SCOUT_SELECTOR_*``); NATS, stores, limits and ports come from `Settings`."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SelectorArgs(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCOUT_SELECTOR_", extra="ignore")

    model: str = "smollm2-135m"
    """The edge model (alias, local folder or HF id)."""
    dtype: str = "bf16"
    device: str | None = None
    selector: str = "q2c"
    """Default selection method (registry name); a request may name another."""
    model_pair: str | None = None
    """The model pair the policy's operating-point table knows this deployment as (None: the table's only pair)."""
    concurrency: int = Field(default=8, ge=1)
    """Asks handled at once (model computations still run one at a time)."""
    raw_ttl_s: int = Field(default=120, ge=1)
    """TTL of the raw KV staged in the edge store for the quantizer."""
    plan_timeout_s: float = Field(default=5.0, gt=0)
    encode_timeout_s: float = Field(default=120.0, gt=0)
    warmup: bool = True
