"""Settings of the transport-policy role (``SCOUT_POLICY_*``); shared settings (NATS, namespace) come from
`scout_runtime.settings.Settings`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from scout.pipeline import DEFAULT_MIXED_PLAN


class PolicyArgs(BaseSettings):
    """What the policy plans with. Without ``table`` it uses the threshold rule (`scout.pipeline.threshold_plan`)."""

    model_config = SettingsConfigDict(env_prefix="SCOUT_POLICY_", extra="ignore")

    table: Path | None = None
    """Operating-point table (JSON, `scout.policy.operating_points.OperatingPointTable`) measured by ``scout eval``."""
    stages: Path | None = None
    """Stage times (JSON, `scout.policy.planner.StageTimes`); without them the planner plans on transfer time."""
    edge_model: str = "smollm2-135m"
    """The edge model whose KV geometry sizes the transfers (read from its spec; no weights are loaded)."""
    mixed_plan: str = DEFAULT_MIXED_PLAN
    """The mixed bit plan: ``mixed:<layer>=<bits>,…`` or a calibrated plan file (``reports/plans/*.json``)."""
    estimator: str = "harmonic:5"
    """Bandwidth estimator per device (`scout.policy.estimators.make_estimator` spec)."""
    prior_bps: float = Field(default=50e6, ge=0)
    """Rate assumed for a device the policy has heard nothing about yet."""
    scout_retention: float = Field(default=0.5, gt=0, le=1)
    transfer_fraction: float = Field(default=0.5, gt=0, le=1)
    max_devices: int = Field(default=10_000, ge=1)
    """Link state is kept for at most this many devices (least recently heard of are forgotten)."""
    concurrency: int = Field(default=16, ge=1)
