"""Which context positions matter: one small module per method, one registry (`SELECTORS`, `get_selector`).

Importing this package registers every method.
"""

from scout.selection import h2o, knorm, q2c, random, snapkv, streaming  # noqa: F401  (registration)
from scout.selection.apply import apply_selection, score_prompt
from scout.selection.base import SELECTORS, ScoringContext, Selector, get_selector, keep_count, select_top
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
