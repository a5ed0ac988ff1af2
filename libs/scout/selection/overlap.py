"""How much two selections agree: the study's Scout overlap (edge-selected vs cloud-selected positions)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def overlap_at_k(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> float:
    """|A ∩ B| / |A| for two selections of the same size k (the study's overlap at a retention level)."""
    sa, sb = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    if len(sa) != len(sb):
        raise ValueError(f"overlap_at_k compares selections of one size, got {len(sa)} and {len(sb)}")
    return 1.0 if not sa else len(sa & sb) / len(sa)


def jaccard(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> float:
    """|A ∩ B| / |A ∪ B|; 1.0 for two empty sets."""
    sa, sb = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    union = sa | sb
    return 1.0 if not union else len(sa & sb) / len(union)
