"""Shared fixtures. Model fixtures load real weights (SmolLM2-135M in CI) once per session.

Async tests need no marker: coroutine test functions are marked ``asyncio`` at collection (the project's pytest
config is shared, so the mode is set here, per test, not in pyproject).
"""

from __future__ import annotations

import inspect

import pytest

from scout.datasets import Example, load_examples


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    if inspect.iscoroutinefunction(obj) and collector.funcnamefilter(name):
        pytest.mark.asyncio(obj)


def _load(alias: str, dtype: str):
    from scout.models import ModelNotAvailable, installed, load_model

    try:
        if not installed(alias):
            pytest.skip(f"{alias} is not installed")
        return load_model(alias, dtype=dtype, device="cpu")
    except ModelNotAvailable as exc:  # pragma: no cover - depends on the machine
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def smol():
    """SmolLM2-135M-Instruct in bf16 (the default dtype). Required in CI: a missing package fails loudly."""
    from scout.models import load_model

    return load_model("smollm2-135m", dtype="bf16", device="cpu")


@pytest.fixture(scope="session")
def smol_fp32():
    from scout.models import load_model

    return load_model("smollm2-135m", dtype="fp32", device="cpu")


@pytest.fixture(scope="session")
def squad_answerable() -> list[Example]:
    """A fixed, seeded sample of answerable SQuAD v2 questions with short contexts (fast prefill on CPU)."""
    return load_examples("squad_v2", n=8, seed=7, answerable_only=True, max_context_chars=700)
