"""Every registered codec through one contract: wire round trip, positions, bounded error, exact size, spec.

One parametrized set runs each codec the registry knows (`scout.codec.registry.CODECS`) on a small synthetic cache
with real keys' structure (a few large outlier channels) and *pruned* positions, so a new codec is held to the same
contract by adding one spec to `SPECS` (and `test_every_registered_codec_is_covered` fails until it is).

The error bound is the quantizer's own (tests/unit/test_quant.py derives it per group), loosened to the whole
tensor: a group's range is at most the tensor's range R (its absmax A for symmetric groups), so an element is off
by at most R / (2 L) for asymmetric codes (A / (2 M) symmetric; L = 2^b - 1, M = 2^(b-1) - 1), deltas (whose range
is at most 2R) twice that, plus the bf16 rounding of the result (under 2^-8 relative; 2^-7 * A is allowed).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scout.codec.base import CacheGeometry, Codec
from scout.codec.delta import DeltaCodec
from scout.codec.entropy import ZstdCodec
from scout.codec.mixed import MixedPlan, PlanFileCodec, PlanFingerprintError
from scout.codec.quant import BitPlan, QuantSpec
from scout.codec.raw import Bf16Codec
from scout.codec.registry import CODECS, CodecSpecError, bit_plan_of, bit_plan_spec, get_codec
from scout.codec.wire import BlobError, BlobFingerprintError
from scout.kvcache import KVCache

FP = "toy-model@sha256:00ff"
LAYERS, HEADS, SEQ, DIM = 3, 2, 40, 32
ORIG = 2 * SEQ
SPECS = [
    "bf16",
    "int8",
    "int4",
    "int2",
    "int4-token",
    "int4-study",
    "int2-study:keep=0",
    "int4:keep=0,2",
    "mixed:0=16,2=8",
    "mixed-study:1=16",
    "mixed@{plan}",
    "delta-int8",
    "delta-int4-token:group=4",
    "int4+zstd",
    "delta-int4+zstd19",
    "mixed@{plan}+zstd",
]


def _cache(seq: int = SEQ) -> KVCache:
    """Keys with three outlier channels (as real keys have), values N(0, 1); every other position kept."""
    gen = torch.Generator().manual_seed(seq)
    keys, values = [], []
    for _ in range(LAYERS):
        k = torch.randn(HEADS, seq, DIM, generator=gen)
        k[:, :, :3] = k[:, :, :3] * 6.0 + 25.0
        keys.append(k.to(torch.bfloat16))
        values.append(torch.randn(HEADS, seq, DIM, generator=gen).to(torch.bfloat16))
    return KVCache(keys, values, torch.arange(0, 2 * seq, 2))


@pytest.fixture(scope="module")
def kv() -> KVCache:
    return _cache()


@pytest.fixture(scope="module")
def plan_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    plan = MixedPlan(BitPlan(4, {0: 16, 2: 8}), QuantSpec(4, axis_k="token"), FP, LAYERS, "toy")
    return plan.save(tmp_path_factory.mktemp("plans") / "toy-int4.json")


@pytest.fixture(params=SPECS)
def codec(request: pytest.FixtureRequest, plan_path: Path) -> Codec:
    return get_codec(request.param.format(plan=plan_path))


def _core(c: Codec) -> Codec:
    return c.inner if isinstance(c, ZstdCodec) else c


def _layer_bits(c: Codec) -> list[int]:
    c = _core(c)
    if isinstance(c, Bf16Codec):
        return [16] * LAYERS
    if isinstance(c, DeltaCodec):
        return [c.bits] * LAYERS
    return c.bit_plan.per_layer(LAYERS)  # type: ignore[attr-defined]


def _symmetric(c: Codec) -> bool:
    c = _core(c)
    if isinstance(c, PlanFileCodec):
        return c.mixed_plan.spec.symmetric
    return getattr(c, "axes", "kivi") == "study"


def _bound(c: Codec, bits: int, x: torch.Tensor) -> float:
    x = x.float()
    amax, span = float(x.abs().max()), float(x.max() - x.min())
    step = amax / ((1 << (bits - 1)) - 1) if _symmetric(c) else span / ((1 << bits) - 1)
    widen = 2.0 if isinstance(_core(c), DeltaCodec) else 1.0
    return widen * step / 2 * 1.01 + 2.0**-7 * amax


def test_every_registered_codec_is_covered(plan_path: Path) -> None:
    covered = {type(get_codec(s.format(plan=plan_path))) for s in SPECS}
    assert covered == set(CODECS.values())
    assert all(cls.family == family for family, cls in CODECS.items())


def test_round_trip_through_the_blob(codec: Codec, kv: KVCache) -> None:
    payload = codec.encode(kv)
    blob = codec.to_blob(payload, model_fingerprint=FP, meta={"who": "test"}, original_seq_len=ORIG)
    received = codec.from_blob(blob, expected_fingerprint=FP)
    rebuilt = codec.decode(received)
    assert rebuilt.equal(codec.decode(payload)), "the wire must be lossless"
    assert codec.nbytes(received) == codec.nbytes(payload)
    if not isinstance(codec, ZstdCodec):  # zstd may pack the payload below its raw size
        assert codec.nbytes(payload) < len(blob), "the blob holds the payload plus a header"
    assert torch.equal(rebuilt.positions, kv.positions)
    assert rebuilt.num_layers == kv.num_layers
    for layer, bits in enumerate(_layer_bits(codec)):
        for got, want in ((rebuilt.keys[layer], kv.keys[layer]), (rebuilt.values[layer], kv.values[layer])):
            assert got.shape == want.shape and got.dtype == want.dtype
            err = float((got.float() - want.float()).abs().max())
            if bits == 16:
                assert err == 0.0, f"layer {layer} is raw but changed"
            else:
                assert 0.0 < err <= _bound(codec, bits, want), f"layer {layer} at {bits} bits off by {err}"
    with pytest.raises(BlobFingerprintError):
        codec.from_blob(blob, expected_fingerprint="another-model")
    with pytest.raises(BlobError):
        codec.from_blob(blob[: len(blob) // 2], expected_fingerprint=FP)


@pytest.mark.parametrize("seq", [7, 33, SEQ])
def test_size_matches_the_codec_estimate(codec: Codec, seq: int) -> None:
    kv = _cache(seq)
    estimate = codec.size_bytes(CacheGeometry.of(kv), seq)
    if isinstance(codec, ZstdCodec):
        assert estimate is None, "zstd sizes depend on the data; an estimate would be a guess"
        return
    assert estimate == codec.nbytes(codec.encode(kv))


def test_fp32_caches_are_sized_at_their_own_width(codec: Codec) -> None:
    kv = _cache().to(dtype=torch.float32)
    geometry = CacheGeometry.of(kv)
    assert geometry.raw_itemsize == 4
    if not isinstance(codec, ZstdCodec):
        assert codec.size_bytes(geometry, SEQ) == codec.nbytes(codec.encode(kv))


def test_spec_round_trip(codec: Codec) -> None:
    assert get_codec(codec.spec) == codec
    assert get_codec(codec.spec).spec == codec.spec
    assert hash(get_codec(codec.spec)) == hash(codec)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "int3",
        "INT4",
        "fp8",
        "int4-foo",
        "int4:keep=",
        "int4:keep=0,0",
        "int4:keep=a",
        "mixed:0=3",
        "mixed:0=16,0=8",
        "mixed:a=16",
        "MIXED:0=16",
        "mixed:0=16;rm -rf",
        "mixed:reports/plans/x.yaml",
        "mixed@",
        "delta-int4:keep=0",
        "delta-int4:group=1",
        "delta-int16",
        "bf16+zstd+zstd",
        "int4+zstd0",
        "int4+zstd23",
        "+zstd",
        "x" * 5000,
    ],
)
def test_bad_specs_raise_a_typed_error(bad: str) -> None:
    with pytest.raises(CodecSpecError):
        get_codec(bad)


def test_non_strings_raise_a_typed_error() -> None:
    for bad in (None, 4, b"int4"):
        with pytest.raises(CodecSpecError):
            get_codec(bad)  # type: ignore[arg-type]


def test_the_two_meanings_of_mixed_have_two_spellings(plan_path: Path) -> None:
    """``mixed:`` is a layer map, ``mixed@`` a plan file; the eval's old ``mixed:<plan.json>`` reads as the file."""
    assert get_codec("mixed:0=16").bit_plan == BitPlan(4, {0: 16})  # type: ignore[attr-defined]
    legacy, current = get_codec(f"mixed:{plan_path}"), get_codec(f"mixed@{plan_path}")
    assert legacy == current and legacy.spec == f"mixed@{plan_path}"
    assert current.bit_plan == BitPlan(4, {0: 16, 2: 8})  # type: ignore[attr-defined]
    current.check_model(FP)
    with pytest.raises(PlanFingerprintError):
        current.check_model("another-model")
    with pytest.raises(FileNotFoundError):
        get_codec("mixed@/nonexistent/plan.json").check_model(FP)


def test_aliases_read_as_the_spec_they_stand_for() -> None:
    assert get_codec("fp16") == get_codec("16") == get_codec("bf16")


def test_transport_bit_plans_round_trip() -> None:
    for spec, plan in (
        ("bf16", BitPlan.uniform(16)),
        ("int8", BitPlan.uniform(8)),
        ("int2", BitPlan.uniform(2)),
        ("mixed:0=16,5=8", BitPlan(4, {0: 16, 5: 8})),
    ):
        assert bit_plan_of(spec) == plan and bit_plan_spec(plan) == spec
    assert bit_plan_of("mixed:") == BitPlan.uniform(4)
    assert bit_plan_of("int4:keep=0") == bit_plan_of("mixed:0=16")
    with pytest.raises(CodecSpecError):
        bit_plan_spec(BitPlan(8, {0: 16}))


@pytest.mark.parametrize(
    "spec", ["int4-study", "int4-token", "mixed-study:0=16", "delta-int4", "int4+zstd", "mixed@p.json"]
)
def test_codecs_that_are_not_transport_bit_plans_are_refused_as_plans(spec: str) -> None:
    get_codec(spec)  # a valid codec …
    with pytest.raises(CodecSpecError):
        bit_plan_of(spec)  # … but the pipeline would quantize it on other axes or could not carry it


def test_a_plan_for_another_layer_count_is_refused(plan_path: Path) -> None:
    c = get_codec(f"mixed@{plan_path}")
    deeper = KVCache([*_cache().keys, _cache().keys[0]], [*_cache().values, _cache().values[0]], _cache().positions)
    with pytest.raises(ValueError):
        c.encode(deeper)
    with pytest.raises(ValueError):
        c.size_bytes(CacheGeometry.of(deeper), SEQ)
