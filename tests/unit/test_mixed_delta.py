"""Tests for scout.codec.mixed (plans, the plan search, calibration) and scout.codec.delta (anchor/delta coding,
entropy coding, variance statistics). Fast: random tensors and a tiny random Qwen2, no pretrained weights.

Expected values are computed here independently of the implementation (plain Python statistics, explicit loops,
hand-built symbol counts), so a wrong axis, layout or formula fails them.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from tiny_models import tiny_qwen2

from scout.codec.calibrate import calibrate, prepare_prompts, search_prefix
from scout.codec.delta import (
    DELTA_MAGIC,
    decode_delta_blob,
    delta_decode,
    delta_encode,
    encode_delta_blob,
    variance_reduction,
)
from scout.codec.entropy import code_entropy, compress_blob, decompress_blob
from scout.codec.mixed import MixedPlan, PlanFingerprintError, PlanFormatError, study_spec
from scout.codec.quant import (
    BitPlan,
    QuantizedCache,
    QuantizedTensor,
    QuantSpec,
    dequantize_cache,
    pack_codes,
    quantize_cache,
)
from scout.codec.wire import BlobError, BlobFingerprintError
from scout.kvcache import KVCache

FP = "0123456789abcdef"


def _cache(
    layers: int = 3, heads: int = 2, seq: int = 37, dim: int = 16, dtype: torch.dtype = torch.float32
) -> KVCache:
    """Keys drift along the sequence (as real keys do); values are noise around per-channel offsets."""
    g = torch.Generator().manual_seed(layers * 1000 + seq)
    keys = [
        (torch.randn(heads, seq, dim, generator=g).cumsum(1) * 0.3 + 4 * torch.randn(heads, 1, dim, generator=g)).to(
            dtype
        )
        for _ in range(layers)
    ]
    values = [
        (torch.randn(heads, seq, dim, generator=g) + torch.randn(1, 1, dim, generator=g)).to(dtype)
        for _ in range(layers)
    ]
    return KVCache(keys, values, torch.arange(seq))


# ================================================================================================================
# plans
# ================================================================================================================
def _plan(**kw: Any) -> MixedPlan:
    args: dict[str, Any] = {
        "plan": BitPlan(4, {0: 16, 5: 8}),
        "spec": QuantSpec(4, group_size=16),
        "model_fingerprint": FP,
        "num_layers": 6,
        "model_name": "test-model",
        "evidence": {"layers": [{"layer": 0, "kl_mean": 0.5}], "note": "x"},
    }
    args.update(kw)
    return MixedPlan(**args)


def test_plan_json_round_trip(tmp_path: Path) -> None:
    plan = _plan()
    path = plan.save(tmp_path / "plans" / "p.json")
    doc = json.loads(path.read_text())
    assert doc["plan"]["per_layer"] == [16, 4, 4, 4, 4, 8]
    assert doc["model"]["fingerprint"] == FP
    back = MixedPlan.load(path, expected_fingerprint=FP)
    assert back.plan == plan.plan
    assert back.spec == plan.spec
    assert back.evidence == plan.evidence
    assert back.num_layers == 6 and back.model_name == "test-model"
    assert back.protected == [0, 5]


def test_plan_for_another_model_is_refused(tmp_path: Path) -> None:
    path = _plan().save(tmp_path / "p.json")
    with pytest.raises(PlanFingerprintError, match=FP):
        MixedPlan.load(path, expected_fingerprint="fedcba9876543210")
    with pytest.raises(PlanFingerprintError):
        _plan().check_model("fedcba9876543210")
    assert MixedPlan.load(path, expected_fingerprint=None).model_fingerprint == FP  # inspection only


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(format="other"), "not a scout-bitplan"),
        (lambda d: d.update(version=2), "version"),
        (lambda d: d["plan"].update(per_layer=[4] * 6), "disagrees"),
        (lambda d: d["plan"]["overrides"].update({"9": 16}), "layers"),
        (lambda d: d["plan"]["overrides"].update({"1": 5}), "bits"),
        (lambda d: d["plan"]["overrides"].update({"x": 16}), "layer numbers"),
        (lambda d: d["quant"].update(axis_k="diagonal"), "axis"),
        (lambda d: d["model"].update(num_layers=0), "num_layers"),
    ],
)
def test_malformed_plan_documents_are_refused(edit: Any, match: str) -> None:
    doc = _plan().to_json()
    edit(doc)
    with pytest.raises(PlanFormatError, match=match):
        MixedPlan.from_json(doc, expected_fingerprint=FP)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\xff{}", "readable"),  # issue 22: was UnicodeDecodeError
        (b"[" * 5000 + b"]" * 5000, "readable"),  # was RecursionError
        (b'{"format": "scout-bitplan", "version": ' + b"1" * 5000 + b"}", "readable"),  # was ValueError (int digits)
        (b"[1, 2", "not JSON"),
        ("{}", "not a scout-bitplan"),
    ],
)
def test_unreadable_plan_bytes_are_plan_format_errors(tmp_path: Path, data: bytes | str, match: str) -> None:
    with pytest.raises(PlanFormatError, match=match):
        MixedPlan.loads(data, expected_fingerprint=None)
    path = tmp_path / "plan.json"
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    with pytest.raises(PlanFormatError, match=match):
        MixedPlan.load(path, expected_fingerprint=None)


def test_a_plan_claiming_huge_layer_counts_is_refused_before_building_lists() -> None:
    """A 300-byte plan claiming 10**8 layers took 10 s and 1 GB to reject (issue 22): the count is bounded first."""
    doc = _plan().to_json()
    doc["model"]["num_layers"] = 10**8
    with (
        mock.patch.object(BitPlan, "per_layer", side_effect=AssertionError("per-layer list built")),
        pytest.raises(PlanFormatError, match="num_layers"),
    ):
        MixedPlan.from_json(doc, expected_fingerprint=FP)
    for bad in ({"version": True}, {"model": {**doc["model"], "num_layers": 6, "name": ["x"]}}):
        with pytest.raises(PlanFormatError):
            MixedPlan.from_json(_plan().to_json() | bad, expected_fingerprint=None)
    empty = _plan().to_json()
    empty["model"]["fingerprint"] = ""
    with pytest.raises(PlanFormatError):
        MixedPlan.from_json(empty, expected_fingerprint=None)


def test_plan_quantizes_each_layer_at_its_bits() -> None:
    kv = _cache(layers=6)
    qc = _plan().quantize(kv)
    assert qc.bits() == [16, 4, 4, 4, 4, 8]
    assert qc.keys[0] is kv.keys[0]  # 16-bit layers pass through untouched
    assert isinstance(qc.keys[1], QuantizedTensor) and qc.keys[1].group_size == 16
    with pytest.raises(ValueError, match="layers"):
        _plan().quantize(_cache(layers=3))


def test_study_spec_is_per_token_symmetric_over_head_dim() -> None:
    s = study_spec(4, 128)
    assert (s.axis_k, s.axis_v, s.group_size, s.symmetric) == ("token", "token", 128, True)


# ================================================================================================================
# the plan search
# ================================================================================================================
def test_search_prefix_takes_the_smallest_measured_prefix_even_when_damage_is_not_monotone() -> None:
    damage = {0: 1.0, 1: 0.4, 2: 0.6, 3: 0.05, 4: 0.2, 5: 0.01, 6: 0.0}
    calls: list[list[int]] = []

    def measure(ks: list[int]) -> list[float]:
        calls.append(ks)
        return [damage[k] for k in ks]

    k, measured = search_prefix([5, 2, 0, 1, 3, 4], measure, 0.1, chunk=2)
    assert k == 3
    assert calls == [[0, 1], [2, 3]]  # stops after the chunk that meets the target
    assert measured == {0: 1.0, 1: 0.4, 2: 0.6, 3: 0.05}
    k, _ = search_prefix([5, 2, 0, 1, 3, 4], measure, 0.5, chunk=4)
    assert k == 1
    k, _ = search_prefix([5, 2, 0, 1, 3, 4], measure, -1.0, chunk=3)
    assert k == 6  # no prefix qualifies: everything protected, the caller reports the miss


# ================================================================================================================
# calibration on a tiny random Qwen2
# ================================================================================================================
class _Tok:
    """The two things calibration asks of a tokenizer: an EOS id and decoding (for the newline stop)."""

    eos_token_id = None

    def decode(self, ids: list[int], **_: Any) -> str:
        return " ".join(f"t{i}" for i in ids)


def _tiny(outlier: bool = False) -> Any:
    from scout.models import LoadedModel, ModelSpec

    cfg, model = tiny_qwen2(
        vocab_size=96,
        num_hidden_layers=4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        initializer_range=0.3,  # peaked next-token distributions, so KL differences are measurable
    )
    if outlier:  # one key channel of layer 2 carries a large constant, like the outlier channels of real keys
        with torch.no_grad():
            model.model.layers[2].self_attn.k_proj.bias[5] = 60.0
    spec = ModelSpec.from_config(cfg, name="tiny-qwen2", source="random", dtype="float32")
    return LoadedModel(model=model, tokenizer=_Tok(), spec=spec, device="cpu")


@pytest.fixture(scope="module")
def tiny() -> Any:
    return _tiny()


@pytest.fixture(scope="module")
def tiny_prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 96, (40,), generator=g).tolist() for _ in range(3)]


def test_calibration_table_curve_and_plan(tiny: Any, tiny_prompts: list[list[int]]) -> None:
    target = 0.01
    r = calibrate(tiny, tiny_prompts, quality_target=target, batch_size=3, progress=False)
    assert [row.layer for row in r.layers] == [0, 1, 2, 3]
    assert sorted(row.rank for row in r.layers) == [1, 2, 3, 4]
    assert r.ranking == sorted(range(4), key=lambda layer: -r.layers[layer].kl_mean)
    assert all(len(row.kl_per_prompt) == 3 for row in r.layers)
    # the plan: the smallest measured prefix of the ranking within the target
    k = len(r.protected)
    assert r.meets_target and r.plan_kl <= target
    assert r.protected == sorted(r.ranking[:k])
    assert r.plan == BitPlan(4, dict.fromkeys(r.protected, 16))
    by_k = {c.k: c for c in r.curve}
    assert all(by_k[j].kl_mean > target for j in range(k))
    assert by_k[0].kl_mean == pytest.approx(r.uniform_low_kl, rel=1e-6)
    assert r.int8_kl is not None and r.int8_kl < r.uniform_low_kl
    assert r.bytes["uniform_low"] < r.bytes["plan"] < r.bytes["uniform_high"] or k == 0
    mp = r.mixed_plan()
    assert mp.model_fingerprint == tiny.spec.fingerprint and mp.evidence["protected"] == r.protected


def test_calibration_kl_matches_an_unbatched_computation(tiny: Any, tiny_prompts: list[list[int]]) -> None:
    """One trial row against an independent, batch-1 forward pass over a hand-built cache."""
    prepared = prepare_prompts(tiny, tiny_prompts)
    r = calibrate(tiny, prepared, quality_target=10.0, batch_size=2, progress=False, measure_int8=False)
    # target met at once: nothing protected, and only the first chunk of prefixes (batch_size of them) measured
    assert r.protected == [] and [c.k for c in r.curve] == [0, 1]
    low = [dequantize_cache(quantize_cache(cp.kv, 4)) for cp in prepared]
    for layer in (0, 3):
        for j, cp in enumerate(prepared):
            trial = cp.kv.clone()
            trial.keys[layer], trial.values[layer] = low[j].keys[layer], low[j].values[layer]
            ref, got = _logp(tiny, cp.kv, cp.suffix), _logp(tiny, trial, cp.suffix)
            kl = float((ref.exp() * (ref - got)).sum(-1).mean())
            assert r.layers[layer].kl_per_prompt[j] == pytest.approx(kl, rel=1e-3, abs=1e-7)


@torch.inference_mode()
def _logp(lm: Any, kv: KVCache, suffix: list[int]) -> torch.Tensor:
    pos = torch.arange(kv.next_position, kv.next_position + len(suffix)).unsqueeze(0)
    out = lm.model(input_ids=torch.tensor([suffix]), past_key_values=kv.to_hf(lm.model.config), position_ids=pos)
    return torch.log_softmax(out.logits[0].float(), -1)


def test_outlier_key_channel_makes_its_layer_fragile_only_under_per_token_quantization(
    tiny_prompts: list[list[int]],
) -> None:
    """The mechanism behind the study's bottleneck layer: a large key channel sets every per-token scale of its
    layer, so the other channels lose their resolution; per-channel (KIVI) scales isolate it."""
    lm = _tiny(outlier=True)
    prepared = prepare_prompts(lm, tiny_prompts)
    kivi = calibrate(lm, prepared, quality_target=10.0, progress=False, measure_int8=False)
    per_token = calibrate(lm, prepared, quality_target=10.0, spec=study_spec(4, 16), progress=False)
    assert per_token.layers[2].kl_mean > 10 * kivi.layers[2].kl_mean


def test_calibration_refuses_bad_arguments(tiny: Any, tiny_prompts: list[list[int]]) -> None:
    for kwargs in ({"low_bits": 3}, {"high_bits": 4}, {"quality_target": -1.0}, {"batch_size": 0}):
        with pytest.raises(ValueError):
            calibrate(tiny, tiny_prompts, progress=False, **kwargs)
    with pytest.raises(ValueError):
        calibrate(tiny, [], progress=False)


# ================================================================================================================
# anchor/delta encoding
# ================================================================================================================
def _independent_deltas(x: torch.Tensor, group: int) -> torch.Tensor:
    """x[:, t] - x[:, anchor(t)] for every non-anchor token t, by an explicit loop."""
    rows = [x[:, t].double() - x[:, (t // group) * group].double() for t in range(x.shape[1]) if t % group]
    return torch.stack(rows, dim=1)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("spec_name", ["kivi", "token"])
@pytest.mark.parametrize("seq", [37, 40, 1, 11])
def test_delta_round_trip_error_is_bounded_by_the_delta_quantization(bits: int, spec_name: str, seq: int) -> None:
    group = 10
    kv = _cache(seq=seq)
    spec = QuantSpec(bits) if spec_name == "kivi" else QuantSpec(bits, "token", "token", 16, False)
    dc = delta_encode(kv, group=group, bits=bits, spec=spec)
    assert dc.anchors.seq_len == math.ceil(seq / group) and dc.seq_len == seq
    out = delta_decode(dc)
    assert torch.equal(out.positions, kv.positions)
    levels = (1 << bits) - 1
    for got_layers, ref_layers in ((out.keys, kv.keys), (out.values, kv.values)):
        for got, ref in zip(got_layers, ref_layers, strict=True):
            assert got.dtype == ref.dtype and got.shape == ref.shape
            assert torch.equal(got[:, ::group], ref[:, ::group])  # raw anchors are exact
            if seq == 1:
                continue
            d = _independent_deltas(ref, group)
            # every quantization group's range is within the global delta range, so this bounds every element
            bound = (float(d.max() - d.min()) / levels) / 2 + 2.0**-11 * float(d.abs().max()) + 2.0**-16
            err = (got.double() - ref.double()).abs()
            assert float(err.max()) <= bound * 1.001


def test_delta_anchors_are_exact_in_bf16_and_deltas_use_the_reconstructed_anchor() -> None:
    kv = _cache(seq=30, dtype=torch.bfloat16)
    out = delta_decode(delta_encode(kv, group=5, bits=4))
    for a, b in zip(out.keys + out.values, kv.keys + kv.values, strict=True):
        assert torch.equal(a[:, ::5], b[:, ::5])
    # quantized anchors: the anchors carry INT8 error, the closed loop keeps the others within their own bound
    dc8 = delta_encode(kv, group=5, bits=8, anchor_bits=8)
    assert isinstance(dc8.anchors.keys[0], QuantizedTensor) and dc8.anchors.keys[0].bits == 8
    out8 = delta_decode(dc8)
    rel = float((out8.keys[0].float() - kv.keys[0].float()).norm() / kv.keys[0].float().norm())
    assert rel < 0.02


def test_delta_keeps_positions_of_a_pruned_cache_and_refuses_unordered_ones() -> None:
    kv = _cache(seq=30).select([0, 2, 3, 7, 8, 9, 15, 20, 21, 29])
    out = delta_decode(delta_encode(kv, group=3, bits=8))
    assert torch.equal(out.positions, kv.positions)
    assert out.next_position == kv.next_position
    shuffled = _cache(seq=30).select([3, 1, 2])
    with pytest.raises(ValueError, match="increasing"):
        delta_encode(shuffled)
    with pytest.raises(ValueError, match="group"):
        delta_encode(kv, group=1)


def test_delta_blob_round_trip_and_refusals() -> None:
    kv = _cache(seq=23, dtype=torch.bfloat16)
    dc = delta_encode(kv, group=4, bits=4)
    blob = encode_delta_blob(dc, model_fingerprint=FP, meta={"request": "r1"})
    assert blob.startswith(DELTA_MAGIC)
    back = decode_delta_blob(blob, expected_fingerprint=FP)
    assert back.group == 4 and back.original_seq_len == kv.next_position
    assert delta_decode(back).equal(delta_decode(dc))
    with pytest.raises(BlobFingerprintError):
        decode_delta_blob(blob, expected_fingerprint="ffffffffffffffff")
    with pytest.raises(BlobError, match="magic"):
        decode_delta_blob(b"X" + blob[1:])
    with pytest.raises(BlobError):
        decode_delta_blob(blob[:-1])
    with pytest.raises(BlobError):
        decode_delta_blob(blob[:20])
    # parts swapped: both are valid scout-kv blobs, but not in the delta frame's order
    n = int.from_bytes(blob[8:16], "little")
    anchors, deltas = blob[16 : 16 + n], blob[16 + n :]
    swapped = DELTA_MAGIC + len(deltas).to_bytes(8, "little") + deltas + anchors
    with pytest.raises(BlobError, match="parts"):
        decode_delta_blob(swapped)
    with pytest.raises(ValueError, match="reserved"):
        encode_delta_blob(dc, model_fingerprint=FP, meta={"delta.group": "9"})


def _with_group(part: bytes, group: str) -> bytes:
    """A scout-kv blob with its delta.group rewritten and its checksum re-computed (a validly signed forgery)."""
    from scout_testbed.fuzz import _split_blob, seal_blob

    parts = _split_blob(part)
    assert parts is not None
    header, payload = parts
    user = json.loads(header["__metadata__"]["user"])
    user["delta.group"] = group
    header["__metadata__"]["user"] = json.dumps(user, sort_keys=True, separators=(",", ":"))
    return seal_blob(header, payload)


@pytest.mark.parametrize("group", [str(2**64), str(2**63), "\u0661\u0660", "+4", "04", "1"])
def test_delta_frame_group_is_a_bounded_decimal(group: str) -> None:
    """issue 22: a group of 2**64 behind valid checksums was an OverflowError, 2**63 a torch error in decode."""
    blob = encode_delta_blob(delta_encode(_cache(seq=9), group=4), model_fingerprint=FP)
    n = int.from_bytes(blob[8:16], "little")
    anchors, deltas = _with_group(blob[16 : 16 + n], group), _with_group(blob[16 + n :], group)
    with pytest.raises(BlobError, match="group"):
        decode_delta_blob(DELTA_MAGIC + len(anchors).to_bytes(8, "little") + anchors + deltas)


def test_delta_frame_values_must_agree_on_head_dim() -> None:
    """issue 22: only keys were compared, so deltas whose values had another head_dim were accepted and then
    crashed in delta_decode."""
    g = torch.Generator().manual_seed(3)
    kv = KVCache([torch.randn(1, 6, 4, generator=g)], [torch.randn(1, 6, 4, generator=g)], torch.arange(6))
    kv2 = KVCache([torch.randn(1, 6, 4, generator=g)], [torch.randn(1, 6, 8, generator=g)], torch.arange(6))
    a = encode_delta_blob(delta_encode(kv, group=3), model_fingerprint=FP)
    b = encode_delta_blob(delta_encode(kv2, group=3), model_fingerprint=FP)
    na, nb = int.from_bytes(a[8:16], "little"), int.from_bytes(b[8:16], "little")
    mixed = a[: 16 + na] + b[16 + nb :]
    with pytest.raises(BlobError, match="value"):
        decode_delta_blob(mixed)
    with pytest.raises(BlobError, match="bytes-like"):
        decode_delta_blob("not bytes")  # type: ignore[arg-type]


# ================================================================================================================
# entropy coding
# ================================================================================================================
def test_zstd_round_trip_is_lossless_and_refuses_bombs() -> None:
    from scout.codec.wire import encode_blob

    blob = encode_blob(quantize_cache(_cache(seq=64, dtype=torch.bfloat16), 4), model_fingerprint=FP)
    packed = compress_blob(blob)
    assert decompress_blob(packed) == blob
    assert len(packed) < len(blob)
    with pytest.raises(BlobError, match="over the limit"):
        decompress_blob(packed, max_bytes=len(blob) - 1)
    with pytest.raises(BlobError, match=r"unused|corrupt|trailing"):
        decompress_blob(packed + b"tail")
    with pytest.raises(BlobError):
        decompress_blob(b"not zstd at all")
    import zstandard

    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(blob)
    with pytest.raises(BlobError, match="content size"):
        decompress_blob(unsized)


def test_zstd_memory_follows_the_real_output_not_the_declared_size() -> None:
    """issue 22 fuzzing: a one-shot decompress allocated the declared content size, so the first bytes of a frame
    declaring 64 MB cost 64 MB. Streamed, they cost what they decompress to (Python-level allocations traced)."""
    import tracemalloc

    import zstandard

    frame = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(64 * 1024 * 1024))
    tracemalloc.start()
    try:
        with pytest.raises(BlobError):
            decompress_blob(frame[:32])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, peak
    assert decompress_blob(frame) == bytes(64 * 1024 * 1024)


def test_code_entropy_of_hand_built_symbols() -> None:
    """Keys: channel 0 constant (0 bits), channel 1 through all 16 codes (4 bits each); values constant; a
    second, raw layer counts as stored."""
    heads, seq, dim, bits = 1, 16, 2, 4

    def tensor(codes: torch.Tensor) -> QuantizedTensor:
        return QuantizedTensor(
            codes=pack_codes(codes.reshape(-1), bits),
            scale=torch.ones(heads, seq, 1, dtype=torch.float16),
            zero=torch.zeros(heads, seq, 1, dtype=torch.float16),
            shape=(heads, seq, dim),
            dtype="float32",
            bits=bits,
            axis="token",
            group_size=2,
        )

    k_codes = torch.stack([torch.zeros(seq, dtype=torch.uint8), torch.arange(seq, dtype=torch.uint8)], dim=1)
    v_codes = torch.full((seq, dim), 7, dtype=torch.uint8)
    raw = torch.zeros(heads, seq, dim)
    qc = QuantizedCache(keys=[tensor(k_codes), raw], values=[tensor(v_codes), raw], positions=torch.arange(seq))
    rep = code_entropy(qc)
    # keys, per tensor: symbol 0 appears 17 times, symbols 1..15 once each, 32 symbols in all; values: 0 bits
    h_keys = -sum(c * math.log2(c / 32) for c in [17] + [1] * 15)
    side = 2 * (2 * 2 * seq) + 2 * raw.numel() * 4  # fp16 scale + zero per token and tensor; two raw fp32 tensors
    assert rep.side_bytes == side and rep.code_bytes == 2 * 16 and rep.symbols == 64
    assert rep.per_tensor_bytes == side + math.ceil(h_keys / 8)
    assert rep.per_channel_bytes == side + 8  # 16 symbols x 4 bits; constant channels cost nothing


# ================================================================================================================
# variance statistics
# ================================================================================================================
def test_variance_reduction_on_a_constructed_example() -> None:
    ch0 = [1.0, 3.0, 10.0, 14.0]  # group 2: anchors 1 and 10, deltas 2 and 4
    ch1 = [100.0, 100.0, 100.0, 100.0]  # constant: deltas 0
    k = torch.tensor([ch0, ch1]).T.reshape(1, 4, 2)
    v = torch.tensor([[5.0, 5.0], [6.0, 5.0], [7.0, 5.0], [9.0, 5.0]]).reshape(1, 4, 2)
    report = variance_reduction(KVCache([k], [v], torch.arange(4)), group=2)
    rk, rv = report.rows
    assert rk.raw_var == pytest.approx(statistics.variance(ch0 + ch1))
    assert rk.channel_var == pytest.approx((statistics.variance(ch0) + statistics.variance(ch1)) / 2)
    assert rk.delta_var == pytest.approx(statistics.variance([2.0, 0.0, 4.0, 0.0]))
    assert rk.reduction == pytest.approx(statistics.variance(ch0 + ch1) / statistics.variance([2.0, 0.0, 4.0, 0.0]))
    assert rv.delta_var == pytest.approx(statistics.variance([1.0, 0.0, 2.0, 0.0]))
    s = report.summary()
    assert s["keys_reduction_mean"] == pytest.approx(rk.reduction)
    assert s["values_channel_reduction_max"] == pytest.approx(rv.channel_reduction)


# ================================================================================================================
# the command module
# ================================================================================================================
def test_codec_commands_register_without_importing_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, typer\n"
        "from scout_cli.commands.codec import register\n"
        "app, bench = typer.Typer(), typer.Typer()\n"
        "app.add_typer(bench, name='bench')\n"
        "register(app, bench)\n"
        "names = {c.name for c in app.registered_commands} | {c.name for c in bench.registered_commands}\n"
        "assert names == {'calibrate', 'codec'}, names\n"
        "sys.exit('torch' in sys.modules)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
