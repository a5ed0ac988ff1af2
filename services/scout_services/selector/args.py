"""Settings of the selector role (``SCOUT_SELECTOR_*``); NATS, stores, limits and ports come from `Settings`."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from scout_runtime.subjects import DeviceId


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
    device_id: DeviceId | None = None
    """``SCOUT_SELECTOR_DEVICE_ID``: bind this selector to one device (an edge device pod runs one per device). Set,
    it serves only ``<root>.ask.<device_id>`` (`Subjects.ask_device`), not the shared ``<root>.ask``, and refuses
    an ask for any other device with ``forbidden`` (HTTP 403), so a device's KV is only ever staged under its own
    link and its own store user. Unset or empty (the embedded/dev default): the shared subject, any device."""

    @field_validator("device_id", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # A chart renders an unset value as "" more often than it leaves the variable out.
        return None if value == "" else value
