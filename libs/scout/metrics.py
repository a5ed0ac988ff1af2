"""Answer metrics: SQuAD (v1/v2) EM/F1, TriviaQA with aliases, HotpotQA answer EM/F1, MMLU accuracy.

Why re-implement them: Scout compares its numbers with the source study's tables, which used the official
scripts' definitions, so each function below follows its official evaluation script exactly (normalisation,
max over gold answers, special cases) and documents the few places where a generative model needs more
(abstention phrases, cleaning a continuation). ``score`` is the one entry point the runner uses.

Normalisations:

* SQuAD (also HotpotQA, which copies it): lower-case; delete ``string.punctuation`` characters; delete the
  articles a/an/the as whole words; collapse whitespace. ``"The Cat!"`` -> ``"cat"``.
* TriviaQA (``triviaqa_evaluation.py``): underscores become spaces; lower-case; punctuation *and* the quote
  marks ``‘ ’ ´ ``` become spaces (SQuAD deletes them); articles removed; whitespace collapsed. So
  ``"O'Neill"`` is ``"o neill"`` under TriviaQA but ``"oneill"`` under SQuAD, and ``"Rock_music"`` matches
  ``"rock music"``.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from scout.datasets import Example

_PUNCT = frozenset(string.punctuation)
_TRIVIA_PUNCT = frozenset(string.punctuation + "‘’´`")
_ARTICLES = re.compile(r"\b(a|an|the)\b")

Normalizer = Callable[[str], str]


def normalize_answer(text: str) -> str:
    """SQuAD's official normalisation: lower, drop punctuation, drop articles, fix whitespace (in order)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def normalize_triviaqa(text: str) -> str:
    """TriviaQA's official normalisation: as SQuAD, but underscores and punctuation become spaces."""
    text = text.replace("_", " ").lower()
    text = "".join(" " if ch in _TRIVIA_PUNCT else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _em_one(prediction: str, gold: str, norm: Normalizer) -> float:
    return float(norm(prediction) == norm(gold))


def _overlap_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    """Harmonic mean of token precision and recall over the multiset overlap; 0 when nothing overlaps. The SQuAD
    and HotpotQA scripts share this core and differ only in how they treat empty and yes/no answers first."""
    common = Counter(pred_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _f1_one(prediction: str, gold: str, norm: Normalizer) -> float:
    """Token-level F1 as in the SQuAD v2 script: if either side has no tokens, 1 iff both have none."""
    pred_tokens = norm(prediction).split()
    gold_tokens = norm(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    return _overlap_f1(pred_tokens, gold_tokens)


ABSTENTIONS: frozenset[str] = frozenset(
    normalize_answer(phrase)
    for phrase in (
        "",
        "unanswerable",
        "no answer",
        "noanswer",
        "none",
        "unknown",
        "n/a",
        "not answerable",
        "cannot be answered",
        "cannot answer",
        "can't answer",
        "not mentioned",
        "not stated",
        "not given",
        "not in the context",
        "there is no answer",
    )
)
"""Predictions that count as "no answer" for SQuAD v2 (compared after SQuAD normalisation, whole string only).

The official script knows only the empty string; a generative model says "unanswerable" or "None" instead, and
scoring that as a wrong span would penalise correct abstentions. Only the whole normalised prediction is
matched, so "none of the above" or "unknown soldier" are answers, not abstentions."""


def is_abstention(prediction: str) -> bool:
    """Whether a prediction abstains (see ``ABSTENTIONS``)."""
    return normalize_answer(prediction) in ABSTENTIONS


def exact_match(prediction: str, answers: Sequence[str], *, norm: Normalizer = normalize_answer) -> float:
    """Max EM over the gold answers. With no gold answers (unanswerable), 1.0 iff the prediction abstains."""
    if not answers:
        return float(is_abstention(prediction))
    return max(_em_one(prediction, gold, norm) for gold in answers)


def f1(prediction: str, answers: Sequence[str], *, norm: Normalizer = normalize_answer) -> float:
    """Max token-level F1 over the gold answers. With no gold answers, 1.0 iff the prediction abstains."""
    if not answers:
        return float(is_abstention(prediction))
    return max(_f1_one(prediction, gold, norm) for gold in answers)


def squad_scores(prediction: str, answers: Sequence[str], is_impossible: bool = False) -> dict[str, float]:
    """SQuAD v2 EM/F1 of one prediction, plus ``abstained`` (1.0/0.0) for HasAns/NoAns breakdowns.

    Unanswerable (``is_impossible`` or no gold): EM = F1 = 1 iff the prediction abstains. Answerable: the
    official max over golds, except that an abstention phrase scores 0 unless it literally equals a gold
    answer (SQuAD dev has golds such as "None"); without that rule "no answer" would earn partial F1 against
    the gold "no".
    """
    abstained = is_abstention(prediction)
    if is_impossible or not answers:
        hit = float(abstained)
        return {"em": hit, "f1": hit, "abstained": float(abstained)}
    if abstained:
        norm_pred = normalize_answer(prediction)
        if all(normalize_answer(gold) != norm_pred for gold in answers):
            return {"em": 0.0, "f1": 0.0, "abstained": 1.0}
    return {
        "em": exact_match(prediction, answers),
        "f1": f1(prediction, answers),
        "abstained": float(abstained),
    }


def triviaqa_scores(prediction: str, aliases: Sequence[str]) -> dict[str, float]:
    """TriviaQA EM/F1: max over all aliases, TriviaQA normalisation. No aliases is a data error
    (ValueError)."""
    if not aliases:
        raise ValueError("TriviaQA example without gold aliases")
    return {
        "em": exact_match(prediction, aliases, norm=normalize_triviaqa),
        "f1": f1(prediction, aliases, norm=normalize_triviaqa),
    }


_HOTPOT_SPECIAL = frozenset({"yes", "no", "noanswer"})


def _hotpot_f1_one(prediction: str, gold: str) -> float:
    """HotpotQA's f1_score: yes/no/noanswer on either side must match exactly, else F1 is 0."""
    norm_pred = normalize_answer(prediction)
    norm_gold = normalize_answer(gold)
    if (norm_pred in _HOTPOT_SPECIAL or norm_gold in _HOTPOT_SPECIAL) and norm_pred != norm_gold:
        return 0.0
    pred_tokens = norm_pred.split()
    gold_tokens = norm_gold.split()
    return _overlap_f1(pred_tokens, gold_tokens)


def hotpot_scores(prediction: str, answers: Sequence[str]) -> dict[str, float]:
    """HotpotQA answer EM/F1 (official hotpot_evaluate_v1 answer metrics), max over golds.

    Unlike SQuAD v2's F1, empty prediction vs empty gold is 0 here (the official script has no such case).
    """
    if not answers:
        raise ValueError("HotpotQA example without a gold answer")
    return {
        "em": max(_em_one(prediction, gold, normalize_answer) for gold in answers),
        "f1": max(_hotpot_f1_one(prediction, gold) for gold in answers),
    }


def mmlu_predict(choice_logits: Sequence[float] | np.ndarray) -> int:
    """Index of the highest-scoring choice (ties: the first). Any array-like, e.g. a CPU torch tensor, works.

    NaN scores raise: an argmax over NaN would silently pick index 0 and look like a real answer.
    """
    scores = np.asarray(choice_logits, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise ValueError("no choice scores")
    if np.isnan(scores).any():
        raise ValueError("NaN in choice scores")
    return int(np.argmax(scores))


def mmlu_accuracy(predictions: Iterable[int], answer_indices: Iterable[int]) -> float:
    """Fraction of predictions equal to the gold index; lengths must match and be non-zero."""
    preds = list(predictions)
    golds = list(answer_indices)
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold answers")
    if not preds:
        raise ValueError("no predictions")
    return sum(int(p == g) for p, g in zip(preds, golds, strict=True)) / len(preds)


_LETTER = re.compile(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])")


def parse_choice(text: str, n_choices: int = 4) -> int | None:
    """Index of the choice letter a generated MMLU answer names ("B", "(b)", "Answer: C."), or None.

    Takes the first stand-alone capital letter among the first ``n_choices`` letters (so the article "A" in
    "A cell ..." could be read as a choice; generation prompts should ask for the letter alone). A lone
    lower-case letter ("b") is accepted too.
    """
    valid = string.ascii_uppercase[:n_choices]
    stripped = clean_generation(text)
    stripped = re.sub(r"^(the\s+)?answer\s*(is)?\s*:?\s*", "", stripped, flags=re.IGNORECASE)
    stripped = stripped.strip("()[] ")
    if len(stripped) == 1 and stripped.upper() in valid:
        return valid.index(stripped.upper())
    for match in _LETTER.finditer(stripped):
        if match.group(1) in valid:
            return valid.index(match.group(1))
    return None


DEFAULT_STOPS: tuple[str, ...] = (
    "\n",
    "Question:",
    "Context:",
    "</s>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
)
"""Where a generated answer ends. Base models do not stop after the answer: they go on with a new line,
"Question: ..." or another few-shot block, and that tail would dilute token F1. (A bare "Q:" is not a stop:
it would cut answers such as "IQ: 140".)"""

_QUOTES = "\"'`“”‘’«»"


def clean_generation(text: str, stops: Sequence[str] = DEFAULT_STOPS) -> str:
    """Reduce a raw continuation to the answer span.

    Leading whitespace goes first (many models start with a space or a newline after "Answer:"), then the text
    is cut at the first stop sequence, a repeated "Answer:" cue is removed, and surrounding quotes and one
    trailing period are stripped, since a model writes "Paris." or "\\"Paris\\"" for the span "Paris" and EM
    would count the decoration as an error.
    """
    text = text.lstrip()
    cut = len(text)
    for stop in stops:
        pos = text.find(stop)
        if pos != -1:
            cut = min(cut, pos)
    text = text[:cut].strip()
    text = re.sub(r"^answer\s*:\s*", "", text, flags=re.IGNORECASE)
    text = text.strip().strip(_QUOTES).strip()
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1].rstrip()
    return text.strip(_QUOTES).strip()


PRIMARY_METRIC: dict[str, str] = {
    "squad_v2": "f1",
    "triviaqa": "f1",
    "triviaqa_longbench": "f1",
    "hotpotqa": "f1",
    "mmlu": "acc",
}
"""The number the study's tables report per dataset (F1 for the extractive sets, accuracy for MMLU)."""


def score(example: Example, prediction: str | int) -> dict[str, float]:
    """Score one prediction with the metric of the example's dataset.

    Extractive sets return ``em`` and ``f1`` (SQuAD v2 also ``abstained``); MMLU returns ``acc`` and accepts a
    choice index or generated text (parsed with ``parse_choice``; an unparsable answer is wrong). Text is
    scored as given: clean raw continuations with ``clean_generation`` first.
    """
    dataset = example.dataset
    if dataset == "mmlu":
        if example.answer_index is None:
            raise ValueError(f"MMLU example {example.id} has no answer_index")
        if isinstance(prediction, str):
            n_choices = len(example.choices) if example.choices else 4
            index = parse_choice(prediction, n_choices)
        else:
            index = int(prediction)
        return {"acc": float(index is not None and index == example.answer_index)}
    if not isinstance(prediction, str):
        raise TypeError(f"{dataset} expects a text prediction, got {type(prediction).__name__}")
    if dataset == "squad_v2":
        return squad_scores(prediction, example.answers, example.is_impossible)
    if dataset in ("triviaqa", "triviaqa_longbench"):
        return triviaqa_scores(prediction, example.answers)
    if dataset == "hotpotqa":
        return hotpot_scores(prediction, example.answers)
    known = ", ".join(sorted(PRIMARY_METRIC))
    raise ValueError(f"no metric for dataset {dataset!r}; known: {known}")


def mean_scores(rows: Iterable[dict[str, float]]) -> dict[str, float]:
    """Average per-example score dicts key by key (keys missing from some rows average over those present)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for row in rows:
        for key, value in row.items():
            sums[key] = sums.get(key, 0.0) + value
            counts[key] = counts.get(key, 0) + 1
    return {key: sums[key] / counts[key] for key in sums}
