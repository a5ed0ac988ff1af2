"""Tests for scout.metrics: official normalisations, hand-computed F1, no-answer and yes/no rules,
aliases, MMLU argmax and parsing, generation cleaning, and the score() dispatcher."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scout.datasets import Example
from scout.metrics import (
    clean_generation,
    exact_match,
    f1,
    hotpot_scores,
    is_abstention,
    mean_scores,
    mmlu_accuracy,
    mmlu_predict,
    normalize_answer,
    normalize_triviaqa,
    parse_choice,
    score,
    squad_scores,
    triviaqa_scores,
)

# ---- normalisation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The Cat!", "cat"),
        ("  A  quick, brown   fox. ", "quick brown fox"),
        ("an apple and THE pear", "apple and pear"),
        ("theater", "theater"),  # articles only as whole words
        ("O'Neill", "oneill"),
        ("Rock_music", "rockmusic"),
        ("", ""),
    ],
)
def test_squad_normalisation(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The Cat!", "cat"),
        ("O'Neill", "o neill"),
        ("Rock_music", "rock music"),
        ("‘Quoted’ `word´", "quoted word"),
        ("U.S.A.", "u s"),  # punctuation becomes spaces, then the lone "a" is an article
    ],
)
def test_triviaqa_normalisation(raw: str, expected: str) -> None:
    assert normalize_triviaqa(raw) == expected


# ---- EM / F1 -----------------------------------------------------------------------------------------------


def test_official_example_matches() -> None:
    assert exact_match("The Cat!", ["cat"]) == 1.0
    assert f1("The Cat!", ["cat"]) == 1.0
    assert exact_match("cats", ["cat"]) == 0.0


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("the quick brown fox", "quick fox jumps", 2 / 3),  # P = R = 2/3
        ("red blue green", "blue", 0.5),  # P = 1/3, R = 1
        ("new new york", "new york", 0.8),  # counts clip: overlap 2, P = 2/3, R = 1
        ("Denver Broncos", "Broncos", 2 / 3),
        ("completely different", "answer", 0.0),
    ],
)
def test_f1_hand_computed(prediction: str, gold: str, expected: float) -> None:
    assert f1(prediction, [gold]) == pytest.approx(expected)


def test_max_over_golds() -> None:
    golds = ["Denver Broncos", "Broncos", "the Denver Broncos team"]
    assert f1("Broncos", golds) == 1.0
    assert exact_match("denver broncos", golds) == 1.0
    assert f1("Denver", golds) == pytest.approx(2 / 3)


# ---- SQuAD v2 no-answer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "  ", "unanswerable", "Unanswerable.", "No answer", "None", "N/A", "unknown"])
def test_abstention_phrases(text: str) -> None:
    assert is_abstention(text)


@pytest.mark.parametrize("text", ["France", "none of the above", "unknown soldier", "no"])
def test_non_abstentions(text: str) -> None:
    assert not is_abstention(text)


def test_unanswerable_scoring() -> None:
    assert squad_scores("", [], True) == {"em": 1.0, "f1": 1.0, "abstained": 1.0}
    assert squad_scores("Unanswerable", [], True)["f1"] == 1.0
    assert squad_scores("France", [], True) == {"em": 0.0, "f1": 0.0, "abstained": 0.0}
    assert exact_match("no answer", []) == 1.0
    assert f1("Paris", []) == 0.0


def test_abstaining_on_answerable_is_wrong() -> None:
    # Without the rule, "no answer" would get token credit against the gold "no".
    assert f1("no answer", ["no"]) == pytest.approx(2 / 3)
    assert squad_scores("no answer", ["no"], False) == {"em": 0.0, "f1": 0.0, "abstained": 1.0}
    assert squad_scores("", ["France"], False)["f1"] == 0.0


def test_abstention_phrase_that_is_the_gold_scores() -> None:
    # SQuAD dev has answerable questions whose gold is literally "None".
    assert squad_scores("None", ["None"], False)["em"] == 1.0
    # Official quirk kept: a gold that normalises to nothing (".") matches an empty prediction.
    assert squad_scores("", ["."], False)["f1"] == 1.0


def test_answerable_normal_scores() -> None:
    result = squad_scores("in France", ["France", "Normandy, France"], False)
    assert result["em"] == 0.0
    assert result["f1"] == pytest.approx(max(2 * (1 / 2) * 1 / (1 / 2 + 1), 2 * (1 / 2) * (1 / 2) / 1))
    assert result["abstained"] == 0.0


# ---- TriviaQA ----------------------------------------------------------------------------------------------


def test_triviaqa_aliases() -> None:
    aliases = ["gambia", "THE GAMBIA", "Republic of The Gambia"]
    assert triviaqa_scores("The Gambia", aliases) == {"em": 1.0, "f1": 1.0}
    assert triviaqa_scores("Republic of Gambia", aliases)["em"] == 1.0  # "the" is dropped on both sides
    partial = triviaqa_scores("Gambia River", aliases)
    assert partial["em"] == 0.0
    assert partial["f1"] == pytest.approx(2 / 3)  # best alias "gambia": P = 1/2, R = 1


def test_triviaqa_normalisation_differs_from_squad() -> None:
    assert triviaqa_scores("O'Neill", ["o neill"])["em"] == 1.0
    assert exact_match("O'Neill", ["o neill"]) == 0.0
    assert triviaqa_scores("rock music", ["Rock_music"])["em"] == 1.0
    with pytest.raises(ValueError):
        triviaqa_scores("x", [])


# ---- HotpotQA ----------------------------------------------------------------------------------------------


def test_hotpot_yes_no() -> None:
    assert hotpot_scores("yes", ["yes"]) == {"em": 1.0, "f1": 1.0}
    assert hotpot_scores("Yes.", ["no"]) == {"em": 0.0, "f1": 0.0}
    # SQuAD F1 would give 0.4 here; HotpotQA demands the bare yes/no.
    assert f1("no, he did not", ["no"]) == pytest.approx(0.4)
    assert hotpot_scores("no, he did not", ["no"])["f1"] == 0.0
    assert hotpot_scores("yes", ["yes it is"])["f1"] == 0.0
    assert hotpot_scores("noanswer", ["Paris"])["f1"] == 0.0


def test_hotpot_regular_answers() -> None:
    result = hotpot_scores("Scott Derrickson", ["Derrickson"])
    assert result["em"] == 0.0
    assert result["f1"] == pytest.approx(2 / 3)
    assert hotpot_scores("", ["Paris"]) == {"em": 0.0, "f1": 0.0}


# ---- MMLU --------------------------------------------------------------------------------------------------


def test_mmlu_predict_argmax() -> None:
    torch = pytest.importorskip("torch")
    assert mmlu_predict([0.1, 2.0, -1.0, 1.9]) == 1
    assert mmlu_predict(np.array([-3.0, -2.0, -1.0, -4.0])) == 2
    assert mmlu_predict(torch.tensor([0.0, 0.0, 5.0, 5.0])) == 2  # ties: first
    with pytest.raises(ValueError):
        mmlu_predict([0.0, math.nan, 1.0, 2.0])
    with pytest.raises(ValueError):
        mmlu_predict([])


def test_mmlu_accuracy() -> None:
    assert mmlu_accuracy([0, 1, 2, 3], [0, 1, 3, 3]) == 0.75
    with pytest.raises(ValueError):
        mmlu_accuracy([0], [0, 1])
    with pytest.raises(ValueError):
        mmlu_accuracy([], [])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", 1),
        (" C.", 2),
        ("(d)", 3),
        ("Answer: A", 0),
        ("The answer is C", 2),
        ("I think D is right", 3),
        ("E", None),
        ("no idea", None),
    ],
)
def test_parse_choice(text: str, expected: int | None) -> None:
    assert parse_choice(text) == expected


# ---- clean_generation --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (" Paris.\nQuestion: What is the capital of Spain?", "Paris"),
        ('"Denver Broncos"', "Denver Broncos"),
        ("\n  Saint Bernadette Soubirous Question: who", "Saint Bernadette Soubirous"),
        ("Answer: 1066.", "1066"),
        ("the Normans<|endoftext|>junk", "the Normans"),
        ("“It”", "It"),
        ("U.S.", "U.S"),
        ("IQ: 140\nQ: next", "IQ: 140"),
        ("", ""),
    ],
)
def test_clean_generation(raw: str, expected: str) -> None:
    assert clean_generation(raw) == expected


def test_clean_generation_custom_stops() -> None:
    assert clean_generation("Paris ### more", stops=("###",)) == "Paris"


# ---- score() dispatch --------------------------------------------------------------------------------------


def _ex(dataset: str, answers: list[str], **kw: object) -> Example:
    return Example.model_validate(
        {"id": "e", "dataset": dataset, "context": "", "question": "q?", "answers": answers, **kw}
    )


def test_score_dispatch() -> None:
    assert score(_ex("squad_v2", ["France"]), "France")["f1"] == 1.0
    assert score(_ex("squad_v2", [], is_impossible=True), "unanswerable")["em"] == 1.0
    assert score(_ex("triviaqa", ["gambia", "The Gambia"]), "Gambia")["em"] == 1.0
    assert score(_ex("triviaqa_longbench", ["Pie man"]), "pieman")["em"] == 0.0
    assert score(_ex("hotpotqa", ["no"]), "yes")["f1"] == 0.0
    mmlu = _ex("mmlu", ["C"], choices=["a", "b", "c", "d"], answer_index=2)
    assert score(mmlu, 2) == {"acc": 1.0}
    assert score(mmlu, "C.") == {"acc": 1.0}
    assert score(mmlu, "B") == {"acc": 0.0}
    assert score(mmlu, "gibberish") == {"acc": 0.0}
    with pytest.raises(ValueError, match="squad_v2"):
        score(_ex("xsum", ["x"]), "x")
    with pytest.raises(TypeError):
        score(_ex("squad_v2", ["x"]), 3)


def test_mean_scores() -> None:
    rows = [{"em": 1.0, "f1": 1.0}, {"em": 0.0, "f1": 0.5}, {"f1": 0.0}]
    assert mean_scores(rows) == {"em": 0.5, "f1": pytest.approx(0.5)}


# ---- properties --------------------------------------------------------------------------------------------

_pieces = st.sampled_from(["the", "an", "a", "Cat", "dog", "yes", "no", "_", "'s", "!", ".", ",", " ", "é", "x"])
_text = st.one_of(st.text(max_size=20), st.lists(_pieces, max_size=12).map("".join))


@settings(max_examples=200, deadline=None)
@given(prediction=_text, golds=st.lists(_text, min_size=1, max_size=3))
def test_f1_bounds_and_em_le_f1(prediction: str, golds: list[str]) -> None:
    for norm in (normalize_answer, normalize_triviaqa):
        em_value = exact_match(prediction, golds, norm=norm)
        f1_value = f1(prediction, golds, norm=norm)
        assert 0.0 <= f1_value <= 1.0
        assert em_value in (0.0, 1.0)
        assert em_value <= f1_value
    hot = hotpot_scores(prediction, golds)
    assert 0.0 <= hot["f1"] <= 1.0


@settings(max_examples=200, deadline=None)
@given(text=_text)
def test_f1_of_itself_is_one(text: str) -> None:
    if normalize_answer(text):
        assert f1(text, [text]) == 1.0
        assert exact_match(text, [text]) == 1.0
        assert hotpot_scores(text, [text]) == {"em": 1.0, "f1": 1.0}
    if normalize_triviaqa(text):
        assert triviaqa_scores(text, [text]) == {"em": 1.0, "f1": 1.0}
