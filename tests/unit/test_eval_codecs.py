"""The experiments' codec names map to the real codec with the sizes and errors each name promises."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from scout.codec.mixed import MixedPlan, PlanFingerprintError
from scout.codec.quant import BitPlan, QuantSpec
from scout.codec.registry import CodecSpecError
from scout.kvcache import KVCache
from scout_eval.experiments.codecs import codec

SPEC = SimpleNamespace(head_dim=64, fingerprint="0" * 16)


def _toy_cache() -> KVCache:
    g = torch.Generator().manual_seed(0)
    layers = [torch.randn(2, 40, 64, generator=g).to(torch.bfloat16) for _ in range(6)]
    return KVCache(layers[:3], layers[3:], torch.arange(40))


@pytest.fixture(scope="module")
def kv() -> KVCache:
    return _toy_cache()


def test_bf16_is_identity(kv: KVCache) -> None:
    rebuilt, nbytes = codec("bf16", SPEC)(kv)
    assert rebuilt.equal(kv) and nbytes == kv.nbytes()


def test_an_fp32_cache_is_coded_from_its_bf16_hand_off(kv: KVCache) -> None:
    """A model computing in fp32: every codec starts from the bf16 wire cache (2 bytes per element for 16-bit
    layers and for full mode) and hands back fp32 for the model to decode."""
    wide = kv.to(dtype=torch.float32)
    rebuilt, nbytes = codec("bf16", SPEC)(wide)
    assert rebuilt.keys[0].dtype == torch.float32 and rebuilt.equal(wide) and nbytes == kv.nbytes()
    for name in ("int4-study:keep=0", "int8", "delta-int4"):
        out_wide, n_wide = codec(name, SPEC)(wide)
        out_16, n_16 = codec(name, SPEC)(kv)
        assert n_wide == n_16 and out_wide.keys[0].dtype == torch.float32
        assert out_wide.equal(out_16.to(dtype=torch.float32))


def test_sizes_shrink_with_bits_and_grow_with_kept_layers(kv: KVCache) -> None:
    size = {n: codec(n, SPEC)(kv)[1] for n in ("int8", "int4", "int2", "int4-study", "int4-study:keep=0")}
    assert size["int2"] < size["int4"] < size["int8"] < kv.nbytes()
    assert size["int4-study"] < size["int4-study:keep=0"] < kv.nbytes()


def test_kept_layers_are_exact_and_others_are_not(kv: KVCache) -> None:
    rebuilt, _ = codec("int2:keep=0,2", SPEC)(kv)
    assert torch.equal(rebuilt.keys[0], kv.keys[0]) and torch.equal(rebuilt.values[2], kv.values[2])
    assert not torch.equal(rebuilt.keys[1], kv.keys[1])


def test_delta_codecs_round_trip_within_quantization_error(kv: KVCache) -> None:
    for bits, tol in ((8, 0.05), (4, 1.0)):
        rebuilt, nbytes = codec(f"delta-int{bits}", SPEC)(kv)
        assert nbytes < kv.nbytes()
        assert max(float((a - b).abs().max()) for a, b in zip(rebuilt.keys, kv.keys, strict=True)) < tol


def test_unknown_names_are_refused() -> None:
    for bad in ("int3", "fp8", "delta-int4:keep=0", "int4-foo", "mixed:nope"):
        with pytest.raises(CodecSpecError):
            codec(bad, SPEC)


def test_plan_files_keep_their_old_spelling_and_check_the_model(tmp_path: Path) -> None:
    """Committed reports name plan files ``mixed:<plan.json>``; that still reads as ``mixed@<plan.json>``, and a
    plan made for another model is refused before any cache is coded."""
    path = MixedPlan(BitPlan(4, {0: 16}), QuantSpec(4), SPEC.fingerprint, 3, "toy").save(tmp_path / "toy.json")
    kv = _toy_cache()
    old, new = codec(f"mixed:{path}", SPEC)(kv), codec(f"mixed@{path}", SPEC)(kv)
    assert old[1] == new[1] and old[0].equal(new[0])
    assert torch.equal(new[0].keys[0], kv.keys[0]) and not torch.equal(new[0].keys[1], kv.keys[1])
    with pytest.raises(PlanFingerprintError):
        codec(f"mixed@{path}", SimpleNamespace(head_dim=64, fingerprint="1" * 16))
