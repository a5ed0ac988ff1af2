"""ModelSpec arithmetic and the offline-model resolution errors, without loading any weights."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
from tiny_models import tiny_qwen2
from transformers import Qwen2Config

from scout import gguf, models
from scout.models import ModelNotAvailable, ModelSpec, OfflineModel


def _spec(layers: int, heads: int, kv_heads: int, hidden: int) -> ModelSpec:
    cfg = Qwen2Config(
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        vocab_size=1000,
    )
    return ModelSpec.from_config(cfg, name="x", source="x")


def _register_parts_model(
    monkeypatch: pytest.MonkeyPatch, alias: str, part_module: str, part_count: int, *, pip: str, sha256: str
) -> OfflineModel:
    """An offline model split over ``part_count`` part packages ``<part_module>1..N``, known for this test only."""
    fake = OfflineModel(
        alias=alias,
        upstream="x/y",
        gguf_name=f"{alias}.gguf",
        sha256=sha256,
        pip=pip,
        part_module=part_module,
        part_count=part_count,
    )
    monkeypatch.setitem(models.OFFLINE_MODELS, alias, fake)
    return fake


def test_kv_bytes_per_token_matches_known_models() -> None:
    # Qwen2.5-7B: 28 layers, 28 heads, 4 KV heads, head dim 128 -> 57,344 B/token in bf16 (DESIGN.md)
    assert _spec(28, 28, 4, 3584).kv_bytes_per_token() == 57_344
    # Qwen2.5-14B: 48 layers, 40 heads, 8 KV heads, head dim 128 -> 196,608 B/token
    assert _spec(48, 40, 8, 5120).kv_bytes_per_token() == 196_608
    s = _spec(28, 28, 4, 3584)
    assert s.kv_bytes(1024) == 1024 * 57_344
    assert s.with_dtype("float32").kv_bytes_per_token() == 2 * 57_344
    assert s.kv_bytes_per_token(bytes_per_element=1) == 57_344 / 2  # e.g. INT8 payload without scales


def test_unknown_names_give_one_line_errors() -> None:
    with pytest.raises(ModelNotAvailable, match="unknown model"):
        models.resolve("no-such-model")
    with pytest.raises(ModelNotAvailable, match="no such folder"):
        models.resolve("/nonexistent/folder/model")
    with pytest.raises(ModelNotAvailable, match="unknown model alias"):
        models.prepare("nope")
    assert models.resolve("Qwen/Qwen2.5-7B") == ("Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B")


def test_missing_part_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    _register_parts_model(
        monkeypatch, "fake", "scout_fake_part_pkg", 3, pip="pip install fake-part{1..3}==1.0", sha256="0" * 64
    )
    with pytest.raises(ModelNotAvailable) as exc:
        models.prepare("fake")
    msg = str(exc.value)
    assert "\n" not in msg and "pip install fake-part{1..3}==1.0" in msg and "part 1 of 3" in msg
    assert not models.installed("fake")


def test_parts_are_joined_in_numeric_order_and_checksum_is_enforced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 11 part modules: alphabetical order (1, 10, 11, 2, ...) would give a different file and hash.
    pkg_root = tmp_path / "site"
    pkg_root.mkdir()
    chunks = []
    for i in range(1, 12):
        data = f"part-{i:02d}|".encode() * 3
        chunks.append(data)
        (pkg_root / f"scout_order_part{i}.bin").write_bytes(data)
        (pkg_root / f"scout_order_part{i}.py").write_text(
            "from pathlib import Path\n"
            f"def get_part_path():\n    return str(Path(__file__).with_name('scout_order_part{i}.bin'))\n"
        )
    monkeypatch.syspath_prepend(str(pkg_root))
    monkeypatch.setenv("SCOUT_CACHE", str(tmp_path / "cache"))
    right = hashlib.sha256(b"".join(chunks)).hexdigest()
    fake = _register_parts_model(monkeypatch, "order", "scout_order_part", 11, pip="pip install x", sha256="f" * 64)
    paths = models._part_paths(fake)
    assert [p.name for p in paths] == [f"scout_order_part{i}.bin" for i in range(1, 12)]
    assert models._sha256_files(paths) == right
    with pytest.raises(ModelNotAvailable, match="SHA-256"):
        models.prepare("order")
    # nothing half-written is left in the cache after the refusal
    assert not models.is_prepared("order")
    leftovers = list(models.prepared_dir("order").parent.iterdir())
    assert leftovers == []
    for i in range(1, 12):
        sys.modules.pop(f"scout_order_part{i}", None)


def test_tied_embeddings_are_saved_under_the_embedding_name() -> None:
    import torch

    _, model = tiny_qwen2(
        num_hidden_layers=1,
        hidden_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        vocab_size=100,
        tie_word_embeddings=True,
    )
    state = gguf._untied_state_dict(model)
    assert "model.embed_tokens.weight" in state and "lm_head.weight" not in state
    assert torch.equal(state["model.embed_tokens.weight"], model.lm_head.weight)
    ptrs = [t.untyped_storage().data_ptr() for t in state.values()]
    assert len(ptrs) == len(set(ptrs))  # nothing shared: safetensors refuses shared storage
