"""Settings of the cloud-decoder role (``SCOUT_DECODER_*``); the work queue's ack wait, max deliveries and
in-flight count come from `Settings` (``SCOUT_ACK_WAIT_S``, ``SCOUT_MAX_DELIVER``, ``SCOUT_MAX_INFLIGHT_DECODES``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DecoderArgs(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCOUT_DECODER_", extra="ignore")

    model: str = "smollm2-135m"
    """The cloud model (alias, local folder or HF id)."""
    dtype: str = "bf16"
    device: str | None = None
    """cpu, cuda, cuda:1 … (default: CUDA when present)."""
    edge_models: list[str] = Field(default_factory=list)
    """Edge models whose position sets this decoder accepts in scout mode besides its own (aligned by character
    spans when their tokenizer differs). Anything else is refused as ``unknown_model``: a request never makes the
    decoder load an arbitrary tokenizer."""
    heartbeat_s: float | None = Field(default=None, gt=0)
    """How often a long decode tells JetStream it is alive (default: a third of ``SCOUT_ACK_WAIT_S``)."""
    result_ttl_s: int = Field(default=600, ge=1)
    """How long a sent reply is remembered (redeliveries within it are acked without a second reply)."""
    lag_interval_s: float = Field(default=5.0, gt=0)
    """How often the decode queue's lag is read into the ``scout_decode_queue_lag`` gauge."""
    warmup: bool = True
