"""`scout_eval.hub`: hub rows convert to exactly the local records they mirror (real records: the packaged samples).

HOME and SCOUT_DATA point at empty tmp folders, so the records are the packaged ones whatever this machine holds."""

from __future__ import annotations

import importlib.util
import itertools
import json
from typing import Any

import pytest

from scout.datasets import dataset_path, load_jsonl, to_example
from scout_eval.hub import CONVERTERS, HubUnavailable, hub_records
from scout_eval.runner import RunConfig
from scout_eval.sources import load_from_source

pytestmark = pytest.mark.usefixtures("no_data_dir")
"""The records are the packaged ones (tests/unit/conftest.py): an empty HOME, no data directory variables."""


def _local(name: str, k: int, where: Any = None) -> list[dict[str, Any]]:
    rows = (r for r in load_jsonl(dataset_path(name)) if where is None or where(r))
    return list(itertools.islice(rows, k))


def test_squad_v2_rows_become_the_local_records() -> None:
    answerable = _local("squad_v2", 6, lambda r: r["answers"])
    impossible = _local("squad_v2", 4, lambda r: not r["answers"])
    assert any(len(set(r["answers"])) < len(r["answers"]) for r in answerable)  # duplicates are kept
    for local in answerable + impossible:
        row = {
            "id": local["id"],
            "title": local["title"],
            "context": local["context"],
            "question": local["question"],
            "answers": {"text": list(local["answers"]), "answer_start": [0] * len(local["answers"])},
        }
        (converted,) = CONVERTERS["squad_v2"]([row])
        assert converted == local
        assert to_example(converted, default_dataset="squad_v2") == to_example(local, default_dataset="squad_v2")


def test_hotpotqa_rows_rebuild_the_local_context_exactly() -> None:
    for local in _local("hotpotqa", 8):
        paragraphs = local["paragraphs"]
        row = {
            "id": local["id"],
            "question": local["question"],
            "answer": local["answers"][0],
            "type": local["type"],
            "level": local["level"],
            "supporting_facts": {
                "title": [t for t, _ in local["supporting_facts"]],
                "sent_id": [i for _, i in local["supporting_facts"]],
            },
            "context": {"title": [p["title"] for p in paragraphs], "sentences": [p["sentences"] for p in paragraphs]},
        }
        (converted,) = CONVERTERS["hotpotqa"]([row])
        assert converted["context"] == local["context"]
        assert converted == local


def test_mmlu_rows_are_numbered_per_subject_like_the_local_file() -> None:
    # The packaged dev pool holds every row of its subjects, in subject order as the hub's "all" config, so the
    # per-subject numbering is checked end to end (the test sample holds a few rows per subject only).
    local = _local("mmlu_dev", 300)
    assert len({r["subject"] for r in local}) >= 2
    rows = [
        {"question": r["question"], "subject": r["subject"], "choices": r["choices"], "answer": r["answer_index"]}
        for r in local
    ]
    assert list(CONVERTERS["mmlu_dev"](rows)) == local
    with pytest.raises(ValueError, match="outside its choices"):
        list(CONVERTERS["mmlu"]([{**rows[0], "answer": 7}]))


def test_triviaqa_keeps_only_the_triviaqa_subset() -> None:
    local = _local("triviaqa", 3)
    rows = [
        {"subset": s, "qid": f"q{i}", "context": r["context"], "question": r["question"], "answers": r["answers"]}
        for i, (s, r) in enumerate(zip(("TriviaQA-web", "SQuAD", "TriviaQA-web"), local, strict=True))
    ]
    out = list(CONVERTERS["triviaqa"](rows))
    assert [r["id"] for r in out] == ["q0", "q2"]
    assert out[1] == {**local[2], "id": "q2"}


def test_every_hub_source_has_a_converter() -> None:
    from scout.datasets import DATASETS, HF_SOURCES

    assert set(HF_SOURCES) == set(CONVERTERS) <= set(DATASETS)


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="'datasets' is installed here")
def test_without_datasets_the_hub_source_says_what_to_install() -> None:
    with pytest.raises(HubUnavailable, match=r"pip install -e '\.\[hub\]'"):
        load_from_source("hub", "squad_v2", n=3)
    with pytest.raises(ValueError, match="no hub source"):
        list(hub_records("nope"))
    with pytest.raises(ValueError, match="source must be"):
        load_from_source("ftp", "squad_v2", n=3)


def test_source_names_hub_runs_and_keeps_file_runs_resumable(tmp_path: Any) -> None:
    from scout_eval.runner import _check_resumable

    file_cfg = RunConfig(experiment="selection", dataset="squad_v2", model="m", n=5, out_root=tmp_path)
    hub_cfg = RunConfig(experiment="selection", dataset="squad_v2", model="m", n=5, out_root=tmp_path, source="hub")
    assert "source" not in file_cfg.identity() and hub_cfg.run_name.endswith("__hub")
    old = json.loads(json.dumps(file_cfg.to_json()))
    old.pop("source")  # a run.json written before the option existed
    _check_resumable({"config": old}, file_cfg)
    _check_resumable({"config": file_cfg.to_json()}, file_cfg)
    with pytest.raises(ValueError, match="other settings"):
        _check_resumable({"config": file_cfg.to_json()}, hub_cfg)
