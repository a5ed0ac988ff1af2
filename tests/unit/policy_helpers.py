"""Constructed operating points for the planner and policy tests (`test_policy.py`, `test_planner_choices.py`).

Why a helper: every planner test builds points whose sizes and qualities make the expected choice computable by
hand, and a point needs a dozen fields of which those tests vary four. Qualities carry no spread (``lo = mean =
hi``) so that a choice never hinges on a CI the test did not mean to set.
"""

from __future__ import annotations

from typing import Any

from scout.policy.operating_points import OperatingPoint

PAIR = "edge->cloud"
"""The model pair points belong to unless a test names another."""


def point(
    mode: str,
    q: float,
    per_token: float = 0.0,
    *,
    fixed: int = 0,
    basis: str = "kept",
    pair: str = PAIR,
    n: int = 100,
    plan: str | None = None,
    **fields: Any,
) -> OperatingPoint:
    """A point of `mode` at quality `q` costing ``fixed + per_token`` bytes per context token (``basis``: per kept
    or per context token); its bit-plan name is the mode unless `plan` says otherwise; `fields` (``retention`` …)
    pass through."""
    return OperatingPoint(
        mode=mode,
        plan=mode if plan is None else plan,
        size_basis=basis,  # type: ignore[arg-type]
        bytes_per_context_token=per_token,
        fixed_bytes=fixed,
        quality_mean=q,
        quality_lo=q,
        quality_hi=q,
        n=n,
        model_pair=pair,
        **fields,
    )
