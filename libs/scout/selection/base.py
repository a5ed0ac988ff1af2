"""The selector interface and its registry (`SELECTORS`, filled by `register`; look-ups go through the package,
`scout.selection.get_selector`, which imports every method first).

A selector turns what one prefill produced (`ScoringContext`) into one score per *context* position
(`score()`), and `select(scores, retention)` keeps the top fraction. As in NVIDIA kvpress, each method is one
small dataclass in its own module, registered by name, so a new method touches one file and nothing else.

Scores may also be 2-D, [voters, n_context] (e.g. one row per layer x head for SnapKV's per-head selection);
`select` then lets every row pick its own top-k and keeps the positions with the most votes, so per-head methods
still yield the single position set that Scout transmits.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from scout.kvcache import KVCache
from scout.prompts import Prompt

#: What a selector may read from the prefill.
NEEDS = frozenset({"queries", "attentions", "keys"})


@dataclass
class ScoringContext:
    """Everything a selector may read, from one prefill of the full prompt.

    `queries[l]` are post-RoPE query states [heads, rows, head_dim] of prompt rows `query_rows` (captured under
    SDPA); `attentions[l]` are eager attention rows [heads, rows, seq] of the same rows, present only when a
    selector asked for eager attention. `kv` covers every prompt token.
    """

    prompt: Prompt
    kv: KVCache
    num_heads: int
    head_dim: int
    scaling: float
    query_rows: slice
    queries: list[torch.Tensor] | None = None
    attentions: list[torch.Tensor] | None = None

    @property
    def context(self) -> slice:
        return slice(self.prompt.context.start, self.prompt.context.end)

    def captured(self, rows: slice) -> slice:
        """Where prompt ``rows`` sit within the captured ``queries``/``attentions``.

        One prefill serves several selectors, so the captured rows are the union of what they need (H2O needs
        every row); a selector must read its own rows through this, never ``query_rows`` whole.
        """
        if rows.start < self.query_rows.start or rows.stop > self.query_rows.stop:
            raise ValueError(
                f"rows {rows.start}:{rows.stop} were not captured ({self.query_rows.start}:{self.query_rows.stop})"
            )
        offset = rows.start - self.query_rows.start
        return slice(offset, offset + (rows.stop - rows.start))

    @property
    def n_context(self) -> int:
        return len(self.prompt.context)


class Selector(ABC):
    """Base class: subclasses are dataclasses with a `name`, what they `needs`, and a `score()`."""

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()

    def rows_needed(self, prompt: Prompt) -> slice | None:
        """Prompt rows whose queries (or attention rows) this selector reads; None if it reads none."""
        if "queries" in self.needs or "attentions" in self.needs:
            return slice(prompt.query_side.start, prompt.query_side.end)
        return None

    @abstractmethod
    def score(self, ctx: ScoringContext) -> torch.Tensor:
        """One float score per context position ([n_context]), or per voter ([voters, n_context])."""

    def select(self, scores: torch.Tensor, retention: float) -> np.ndarray:
        return select_top(scores, retention)


def keep_count(n: int, retention: float) -> int:
    """How many of n positions a retention keeps: ceil, at least one when n > 0 and retention > 0."""
    if not 0.0 <= retention <= 1.0:
        raise ValueError(f"retention must be in [0, 1], got {retention}")
    if n == 0 or retention == 0.0:
        return 0
    return min(n, max(1, math.ceil(round(retention * n, 9))))


def _rank(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score; equal scores keep ascending index order (deterministic tie-break)."""
    return np.argsort(-scores, kind="stable")


def select_top(scores: torch.Tensor, retention: float) -> np.ndarray:
    """Sorted indices of the top `retention` fraction of positions.

    1-D scores: the highest k. 2-D [voters, n] scores: every voter picks its own top-k, positions are ranked by
    votes, then by summed score, then by index.
    """
    s = scores.detach().to(torch.float64).cpu().numpy()
    if s.ndim not in (1, 2):
        raise ValueError(f"scores must be 1-D or 2-D, got shape {s.shape}")
    n = s.shape[-1]
    k = keep_count(n, retention)
    if k == n:
        return np.arange(n, dtype=np.int64)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if s.ndim == 1:
        return np.sort(_rank(s)[:k]).astype(np.int64)
    votes = np.zeros(n, dtype=np.float64)
    for row in s:
        votes[_rank(row)[:k]] += 1.0
    total = s.sum(axis=0)
    # lexicographic: votes first, then summed score (scaled below one vote), then index via the stable sort
    span = np.ptp(total) if n > 1 else 0.0
    tiebreak = (total - total.min()) / (span * 2.0) if span > 0 else np.zeros(n)
    return np.sort(_rank(votes + tiebreak)[:k]).astype(np.int64)


# ----------------------------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------------------------
SELECTORS: dict[str, type[Selector]] = {}


def register(cls: type[Selector]) -> type[Selector]:
    """Class decorator: make a selector available by its `name`."""
    name = getattr(cls, "name", None)
    if not name:
        raise ValueError(f"{cls.__name__} has no name")
    if name in SELECTORS and SELECTORS[name] is not cls:
        raise ValueError(f"selector name {name!r} registered twice")
    SELECTORS[name] = cls
    return cls
