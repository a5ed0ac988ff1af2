"""Which context positions matter: one small module per method, one registry (`SELECTORS`, `get_selector`).

Importing this package registers every method: each module below registers its class in `base.SELECTORS` when it
is imported, so the look-up lives here, after those imports, rather than in `base` (which the methods import).
"""

from typing import Any

from scout.selection import h2o, knorm, q2c, random, snapkv, streaming  # noqa: F401  (registration)
from scout.selection.apply import apply_selection, score_prompt
from scout.selection.base import SELECTORS, ScoringContext, Selector, keep_count, select_top
from scout.selection.overlap import jaccard, overlap_at_k

__all__ = [
    "SELECTORS",
    "ScoringContext",
    "Selector",
    "apply_selection",
    "get_selector",
    "jaccard",
    "keep_count",
    "overlap_at_k",
    "score_prompt",
    "select_top",
]


def get_selector(name: str, **options: Any) -> Selector:
    """An instance of the selector called `name` (options are its dataclass fields)."""
    if name not in SELECTORS:
        raise KeyError(f"unknown selector {name!r}; known: {', '.join(sorted(SELECTORS))}")
    return SELECTORS[name](**options)
