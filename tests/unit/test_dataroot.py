"""The data root (`scout.dataroot`), `scout data list|import`, and the data provenance an evaluation run records.

Every test runs with HOME, SCOUT_DATA and XDG_DATA_HOME pointed at empty tmp folders (or unset), so a developer's
own data directory cannot leak into a result; data directories are built in tmp_path, laid out like the folder
`scout data import` reads (``data/<dataset>/<file>.jsonl``, ``traces/*.csv``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from scout.dataroot import (
    DATA_ENV,
    PACKAGED,
    DataNotFound,
    DataRootError,
    default_data_dir,
    resolve_data_root,
    target_data_dir,
    using_data_dir,
)
from scout.datasets import Example, dataset_source, load_examples
from scout_cli.commands.data import data_inventory, import_folder
from scout_cli.main import app
from scout_eval.experiments.base import EXPERIMENTS, Experiment
from scout_eval.runner import RunConfig, run_experiment
from scout_eval.sources import describe_source, provenance

SQUAD = "squad_v2/squad_v2_dev.jsonl"
TRACE = "t_s,mbps\n0.0,10.0\n1.0,12.5\n2.0,0.0\n"


@pytest.fixture(autouse=True)
def isolated(no_data_dir: Path) -> Path:
    """Every test here: an empty HOME (the returned folder); no SCOUT_DATA, XDG_DATA_HOME or SCOUT_SHARED."""
    return no_data_dir


def _squad_lines(count: int, prefix: str = "s") -> list[str]:
    rows = [
        {
            "id": f"{prefix}{i}",
            "dataset": "squad_v2",
            "title": "T",
            "context": f"Paragraph {i}\u2028with a line separator, answer {i}.",
            "question": f"What is answer {i}?",
            "answers": [] if i % 4 == 0 else [f"answer {i}"],
            "is_impossible": i % 4 == 0,
        }
        for i in range(count)
    ]
    return [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]


def _root(folder: Path, squad: int = 10, traces: dict[str, str] | None = None) -> Path:
    """A data folder like the shared one: data/squad_v2/*.jsonl and traces/*.csv."""
    (folder / "data" / "squad_v2").mkdir(parents=True)
    (folder / "data" / SQUAD).write_text("".join(_squad_lines(squad)), encoding="utf-8")
    (folder / "traces").mkdir()
    for name, text in (traces or {"ok_lte_ul_walk": TRACE}).items():
        (folder / "traces" / f"{name}.csv").write_text(text, encoding="utf-8")
    return folder


# ---- resolution order ----------------------------------------------------------------------------------------


def test_resolution_order_explicit_then_env_then_default_then_packaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    assert resolve_data_root().path is None  # nothing anywhere: the packaged samples
    assert dataset_source("squad_v2").source == PACKAGED
    default = default_data_dir()
    assert default == isolated / ".local" / "share" / "scout"
    default.mkdir(parents=True)
    assert resolve_data_root().path is None  # an empty default directory does not count
    _root(default, squad=5)
    assert resolve_data_root().origin == "default"
    assert dataset_source("squad_v2").source == f"data-dir:{default.resolve()}"
    env_root = _root(tmp_path / "env", squad=6)
    monkeypatch.setenv(DATA_ENV, str(env_root))
    assert (resolve_data_root().path, resolve_data_root().origin) == (env_root.resolve(), DATA_ENV)
    assert len(load_examples("squad_v2")) == 6
    explicit = _root(tmp_path / "explicit", squad=7)
    assert resolve_data_root(explicit).origin == "--data-dir"
    assert len(load_examples("squad_v2", data_dir=explicit)) == 7
    with using_data_dir(explicit):
        assert len(load_examples("squad_v2")) == 7
        assert dataset_source("squad_v2").source == f"data-dir:{explicit.resolve()}"
    assert len(load_examples("squad_v2")) == 6  # the override ends with its block
    # a dataset the root lacks comes from the packaged sample, and says so
    assert dataset_source("triviaqa").source == PACKAGED


def test_a_named_directory_that_does_not_exist_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataRootError, match="--data-dir"):
        resolve_data_root(tmp_path / "typo")
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "typo"))
    with pytest.raises(DataRootError, match=DATA_ENV):
        load_examples("squad_v2", n=1)
    assert target_data_dir().path == (tmp_path / "typo").absolute()  # import may create it


def test_source_reports_the_sha256_of_the_file_read(tmp_path: Path) -> None:
    root = _root(tmp_path / "r")
    src = dataset_source("squad_v2", root)
    assert src.sha256 == hashlib.sha256((root / "data" / SQUAD).read_bytes()).hexdigest()
    packaged = dataset_source("squad_v2")
    assert packaged.is_packaged and packaged.sha256 == hashlib.sha256(Path(str(packaged.path)).read_bytes()).hexdigest()


def test_a_dataset_that_exists_nowhere_is_one_typed_error_naming_three_ways(tmp_path: Path) -> None:
    with pytest.raises(DataNotFound) as info:
        load_examples("triviaqa_longbench", n=1, data_dir=_root(tmp_path / "r"))
    text = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "dataset 'triviaqa_longbench'" in text
    assert "`scout data import PATH`" in text
    assert "SCOUT_DATA or --data-dir" in text
    assert "`--source hub`" in text
    assert str((tmp_path / "r").resolve()) in text and "the packaged samples" in text


# ---- scout data import / list --------------------------------------------------------------------------------


def test_import_copies_valid_files_and_rejects_bad_ones(tmp_path: Path) -> None:
    src = _root(tmp_path / "shared", squad=12, traces={"ok_lte_ul_walk": TRACE, "bad_rates": "t_s,mbps\n0,1\n1,-3\n"})
    (src / "traces" / "README.md").write_text("# traces\n", encoding="utf-8")
    (src / "traces" / "bad_order.csv").write_text("t_s,mbps\n0.0,1\n2.0,1\n1.0,1\n", encoding="utf-8")
    (src / "data" / "hotpotqa").mkdir()
    lines = _squad_lines(3, prefix="h")
    lines.insert(1, '{"id": "h9", "question": "no answers field"}\n')
    (src / "data" / "hotpotqa" / "hotpotqa_dev_distractor.jsonl").write_text("".join(lines), encoding="utf-8")
    (src / "data" / "mmlu").mkdir()
    (src / "data" / "mmlu" / "mmlu_test.jsonl").write_text('{"id": "m1", "question": "q", "answers": ["A"]}\n{oops\n')
    dest = tmp_path / "dest"

    report = import_folder(src, dest)
    assert sorted(report.copied) == [f"data/{SQUAD}", "traces/ok_lte_ul_walk.csv"]
    assert report.records == {f"data/{SQUAD}": 12}
    assert set(report.rejected) == {
        "data/hotpotqa/hotpotqa_dev_distractor.jsonl",
        "data/mmlu/mmlu_test.jsonl",
        "traces/bad_rates.csv",
        "traces/bad_order.csv",
    }
    assert (
        "hotpotqa_dev_distractor.jsonl:2: 'answers' must be a list of strings"
        in report.rejected["data/hotpotqa/hotpotqa_dev_distractor.jsonl"]
    )
    assert "mmlu_test.jsonl:2: invalid JSON" in report.rejected["data/mmlu/mmlu_test.jsonl"]
    assert ">= 0" in report.rejected["traces/bad_rates.csv"]
    assert "grid" in report.rejected["traces/bad_order.csv"]
    assert not (dest / "data" / "hotpotqa").exists() and not (dest / "traces" / "bad_rates.csv").exists()
    assert (dest / "data" / SQUAD).read_bytes() == (src / "data" / SQUAD).read_bytes()  # U+2028 intact
    assert (dest / "traces" / "README.md").is_file()
    with using_data_dir(dest):
        assert len(load_examples("squad_v2")) == 12
        assert dataset_source("hotpotqa").is_packaged  # rejected: still the sample
    with pytest.raises(ValueError, match="no data/<dataset>"):
        import_folder(tmp_path / "home", dest)


def test_cli_import_then_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _root(tmp_path / "shared", traces={"ok_lte_ul_walk": TRACE, "bad": "time,rate\n0,1\n"})
    dest = tmp_path / "data-home"
    monkeypatch.setenv(DATA_ENV, str(dest))
    result = CliRunner().invoke(app, ["data", "import", str(src)])
    assert result.exit_code == 1, result.output  # one file was rejected
    assert f"copied data/{SQUAD} (10 records)" in result.output
    assert "rejected traces/bad.csv: bad.csv: first line must be 't_s,mbps'" in result.output
    assert f"2 files imported into {dest.absolute()}, 1 rejected" in result.output
    listed = CliRunner().invoke(app, ["data", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    inv = json.loads(listed.output)
    assert inv["data_dir"] == {"path": str(dest.absolute()), "origin": DATA_ENV, "exists": True}
    rows = {r["dataset"]: r for r in inv["datasets"]}
    assert rows["squad_v2"]["packaged_items"] == 32 and rows["squad_v2"]["data_dir_items"] == 10
    assert rows["triviaqa_longbench"]["packaged_items"] is None and rows["mmlu"]["hub"] == "cais/mmlu:all:test"
    sources = {t["trace"]: t["source"] for t in inv["traces"]}
    assert sources["ok_lte_ul_walk"] == f"data-dir:{dest.absolute()}"
    assert sources["lumos5g_vzw_mmwave5g_dl_walking_trace100"] == PACKAGED
    text = CliRunner().invoke(app, ["data", "list"])
    assert text.exit_code == 0 and f"data directory: {dest.absolute()} (SCOUT_DATA)" in text.output


def test_list_with_nothing_but_the_packaged_samples(isolated: Path) -> None:
    inv = data_inventory()
    assert inv["data_dir"]["origin"] == "default" and inv["data_dir"]["exists"] is False
    assert {r["dataset"]: r["packaged_items"] for r in inv["datasets"]} == {
        "squad_v2": 32,
        "triviaqa": 16,
        "triviaqa_longbench": None,
        "hotpotqa": 16,
        "mmlu": 16,
        "mmlu_dev": 65,
    }
    assert all(r["data_dir_items"] is None for r in inv["datasets"])
    result = CliRunner().invoke(app, ["data", "list"])
    assert result.exit_code == 0
    assert "only the packaged samples are available: import the full sets with `scout data import PATH`" in (
        result.output
    )


# ---- provenance of an evaluation run -------------------------------------------------------------------------


class GoldExperiment(Experiment):
    """Answers with the first gold answer: a run that needs no model, so the runner's bookkeeping is what is
    tested."""

    name: ClassVar[str] = "gold-test"
    reference: ClassVar[str] = "full"

    def setup(self) -> dict[str, Any]:
        return {}

    def run_sample(self, ex: Example) -> dict[str, dict[str, Any]]:
        return {"full": {"pred": ex.answers[0] if ex.answers else "", "f1": 1.0}}


@pytest.fixture
def gold(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(EXPERIMENTS, GoldExperiment.name, GoldExperiment)
    return GoldExperiment.name


def test_run_json_records_the_packaged_sample_then_the_data_directory(tmp_path: Path, gold: str) -> None:
    lines: list[str] = []
    cfg = RunConfig(experiment=gold, dataset="squad_v2", model="none", n=2, out_root=tmp_path / "out")
    run_dir = run_experiment(cfg, notify=lines.append)
    assert run_dir.name == "squad_v2__none__sample"  # results on the sample get a folder of their own
    info = json.loads((run_dir / "run.json").read_text())
    packaged = dataset_source("squad_v2")
    assert info["data"] == {"source": PACKAGED, "path": packaged.path, "sha256": packaged.sha256, "items": 32}
    assert info["config"]["source"] == "sample"
    assert lines == [describe_source("squad_v2", info["data"])]
    assert lines[0].startswith("squad_v2: using the packaged sample (32 items, sha256 ")
    assert "import the full set with `scout data import PATH`" in lines[0]

    root = _root(tmp_path / "full", squad=9)
    with using_data_dir(root):
        full_dir = run_experiment(cfg, notify=lines.append)
    assert full_dir.name == "squad_v2__none"
    full = json.loads((full_dir / "run.json").read_text())["data"]
    assert full["source"] == f"data-dir:{root.resolve()}" and full["items"] == 9
    assert full["sha256"] == hashlib.sha256((root / "data" / SQUAD).read_bytes()).hexdigest()
    assert lines[1] == f"squad_v2: using the data directory {root.resolve()} (9 items, sha256 {full['sha256'][:12]}…)"


def test_describe_source_for_the_hub() -> None:
    record = provenance(dataset_source("squad_v2"))
    assert record["items"] == 32
    hub = {"source": "hub", "path": "rajpurkar/squad_v2:default:validation", "sha256": None, "items": None}
    assert (
        describe_source("squad_v2", hub)
        == "squad_v2: using the Hugging Face hub (rajpurkar/squad_v2:default:validation)"
    )


def test_cli_eval_run_says_where_the_data_came_from(tmp_path: Path, gold: str) -> None:
    out = tmp_path / "out"
    args = ["eval", "run", gold, "--n", "2", "--model", "none", "--out", str(out), "--dtype", "fp32"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "squad_v2: using the packaged sample (32 items" in result.output
    assert (out / gold / "squad_v2__none__fp32__sample" / "samples.jsonl").is_file()
    root = _root(tmp_path / "full", squad=8)
    result = CliRunner().invoke(app, [*args, "--data-dir", str(root)])
    assert result.exit_code == 0, result.output
    assert f"squad_v2: using the data directory {root.resolve()} (8 items" in result.output
    missing = CliRunner().invoke(app, [*args, "--dataset", "triviaqa_longbench"])
    assert missing.exit_code == 2 and "scout data import PATH" in missing.output
