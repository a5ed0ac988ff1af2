"""Tests for scout.codec.quant: the derived error bounds, axes/layout, packing, exact byte accounting, plans.

The bounds are checked against group statistics computed here independently (scatter-reduce over explicit
group ids), not against the implementation's own reshapes, so a wrong grouping or scale layout fails them.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import tiny_qwen2

from scout.codec.quant import (
    BitPlan,
    QuantizedCache,
    QuantizedTensor,
    QuantSpec,
    dequantize,
    dequantize_cache,
    estimate_bytes,
    pack_codes,
    quantize,
    quantize_cache,
    unpack_codes,
)
from scout.kvcache import KVCache

U16 = 2.0**-11  # fp16 unit roundoff
SUB = 2.0**-25  # half the fp16 subnormal spacing
BITS = (2, 4, 8)
AXES = ("token", "channel")


# --- independent reference: per-element group statistics and the derived bound ------------------------------
def _group_ids(shape: tuple[int, int, int], axis: str, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per element: a group id, and the flat index of that group's entry in the scale tensor."""
    h, s, d = shape
    hi = torch.arange(h).view(h, 1, 1).expand(h, s, d)
    si = torch.arange(s).view(1, s, 1).expand(h, s, d)
    di = torch.arange(d).view(1, 1, d).expand(h, s, d)
    if axis == "token":
        ng = math.ceil(d / g)
        flat = (hi * s + si) * ng + di // g
    else:
        ng = math.ceil(s / g)
        flat = (hi * ng + si // g) * d + di
    return flat.reshape(-1), flat.reshape(-1)


def _stats(x: torch.Tensor, axis: str, g: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per element (float64): its group's min, max, and the flat index of its scale entry."""
    ids, flat = _group_ids(tuple(x.shape), axis, g)
    xf = x.double().reshape(-1)
    n = int(ids.max()) + 1 if ids.numel() else 0
    mn = torch.full((n,), math.inf, dtype=torch.float64).scatter_reduce(0, ids, xf, "amin")
    mx = torch.full((n,), -math.inf, dtype=torch.float64).scatter_reduce(0, ids, xf, "amax")
    return mn[ids], mx[ids], flat


def _check_bound(x: torch.Tensor, q: QuantizedTensor) -> torch.Tensor:
    """Assert the module docstring's bound element-wise; return |x - x^| / s (for tightness checks)."""
    xd = x.double().reshape(-1)
    err = (dequantize(q).double().reshape(-1) - xd).abs()
    mn, mx, flat = _stats(x, q.axis, q.group_size)
    s = q.scale.double().reshape(-1)[flat]
    fp32_slack = 2.0**-12 * s + 2.0**-20 * torch.maximum(mn.abs(), mx.abs())
    if q.zero is None:
        levels = 2 ** (q.bits - 1) - 1
        scale = torch.maximum(mn.abs(), mx.abs()) / levels
        ds = (scale - s).abs()
        assert bool((ds <= U16 * scale + SUB).all()), "fp16 scale rounding exceeds u*scale + 2^-25"
        bound = torch.maximum(s / 2, levels * ds)
        simple = s / 2 + 2.0**-18
    else:
        levels = 2**q.bits - 1
        scale = (mx - mn) / levels
        z = q.zero.double().reshape(-1)[flat]
        ds, dz = (scale - s).abs(), (mn - z).abs()
        assert bool((ds <= U16 * scale + SUB).all()), "fp16 scale rounding exceeds u*scale + 2^-25"
        assert bool((dz <= U16 * mn.abs() + SUB).all()), "fp16 zero rounding exceeds u*|mn| + 2^-25"
        bound = torch.maximum(s / 2, levels * ds + dz)
        simple = s / 2 + U16 * mn.abs() + 2.0**-16
    if x.dtype != torch.float32:
        unit = 2.0**-8 if x.dtype == torch.bfloat16 else U16
        extra = unit * torch.maximum(mn.abs(), mx.abs())
        bound, simple = bound + extra, simple + extra
    worst = int(torch.argmax(err - bound - fp32_slack)) if err.numel() else 0
    assert bool((err <= bound + fp32_slack).all()), (
        f"bound violated at {worst}: err {float(err[worst])} > {float(bound[worst])} (s={float(s[worst])})"
    )
    assert bool((err <= simple + fp32_slack).all()), "simple corollary violated"
    return err / torch.where(s > 0, s, 1.0)


def _outlier_keys(seed: int, heads: int = 2, seq: int = 96, dim: int = 64) -> torch.Tensor:
    """Key-like tensor: most channels N(0, 1), a few channels with a large consistent offset and spread."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(heads, seq, dim, generator=gen)
    outliers = torch.randperm(dim, generator=gen)[:4]
    x[:, :, outliers] = x[:, :, outliers] * 8.0 + 40.0 * torch.sign(torch.randn(len(outliers), generator=gen))
    return x


# --- spec and plan validation -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"bits": 3},
        {"bits": 1},
        {"bits": 32},
        {"bits": True},
        {"bits": 4, "axis_k": "row"},
        {"bits": 4, "axis_v": ""},
        {"bits": 4, "group_size": 0},
        {"bits": 4, "group_size": 1 << 17},
        {"bits": 4, "group_size": 2.0},
        {"bits": 4, "symmetric": 1},
    ],
)
def test_quant_spec_rejects_invalid(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        QuantSpec(**kwargs)  # type: ignore[arg-type]


def test_quant_spec_defaults_follow_kivi() -> None:
    spec = QuantSpec(4)
    assert (spec.axis_k, spec.axis_v, spec.group_size, spec.symmetric) == ("channel", "token", 32, False)
    assert QuantSpec(16).bits == 16


def test_bit_plan() -> None:
    overrides = {0: 16, 3: 8}
    plan = BitPlan(4, overrides)
    overrides[1] = 2  # the plan keeps its own copy
    assert plan.per_layer(5) == [16, 4, 4, 8, 4]
    assert plan.bits_for(99) == 4
    with pytest.raises(ValueError):
        plan.per_layer(3)  # override for layer 3 of a 3-layer cache
    for bad in ({-1: 4}, {0: 5}, {"0": 4}):
        with pytest.raises(ValueError):
            BitPlan(4, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        BitPlan(3)
    assert BitPlan.from_list([16, 4, 4, 8]) == BitPlan(4, {0: 16, 3: 8})
    assert BitPlan.from_list([8, 8]).overrides == {}


# --- packing ------------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from(BITS), n=st.integers(0, 70), seed=st.integers(0, 2**31 - 1))
def test_pack_roundtrip(bits: int, n: int, seed: int) -> None:
    codes = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n * bits / 8)
    assert torch.equal(unpack_codes(packed, bits, n), codes)


def test_pack_layout_low_bits_first() -> None:
    codes = torch.tensor([1, 2, 3, 0, 3], dtype=torch.uint8)
    assert pack_codes(codes, 2).tolist() == [1 | 2 << 2 | 3 << 4 | 0 << 6, 3]
    assert pack_codes(torch.tensor([0xA, 0x5, 0xF], dtype=torch.uint8), 4).tolist() == [0x5A, 0x0F]


# --- error bounds -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("shape", [(2, 50, 64), (3, 33, 40)])
def test_error_bound_random(bits: int, axis: str, symmetric: bool, shape: tuple[int, int, int]) -> None:
    gen = torch.Generator().manual_seed(bits * 10 + len(axis) + int(symmetric))
    x = torch.randn(shape, generator=gen) * 3.0 + 0.5
    q = quantize(x, bits, axis, 32, symmetric)
    rel = _check_bound(x, q)
    # The bound is tight: random data reaches close to half a step somewhere.
    assert float(rel.max()) > 0.4


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("symmetric", [False, True])
def test_error_bound_outlier_channels(bits: int, axis: str, symmetric: bool) -> None:
    x = _outlier_keys(bits)
    _check_bound(x, quantize(x, bits, axis, 32, symmetric))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    heads=st.integers(1, 3),
    seq=st.integers(1, 40),
    dim=st.integers(1, 40),
    group=st.integers(1, 48),
    bits=st.sampled_from(BITS),
    axis=st.sampled_from(AXES),
    symmetric=st.booleans(),
    magnitude=st.sampled_from([1e-6, 1e-3, 1.0, 300.0]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    seed=st.integers(0, 2**31 - 1),
)
def test_error_bound_property(
    heads: int,
    seq: int,
    dim: int,
    group: int,
    bits: int,
    axis: str,
    symmetric: bool,
    magnitude: float,
    dtype: torch.dtype,
    seed: int,
) -> None:
    x = (torch.randn(heads, seq, dim, generator=torch.Generator().manual_seed(seed)) * magnitude).to(dtype)
    q = quantize(x, bits, axis, group, symmetric)
    y = dequantize(q)
    assert y.shape == x.shape and y.dtype == x.dtype
    _check_bound(x, q)


def test_per_channel_keys_beat_per_token_on_outlier_channels() -> None:
    """KIVI's reason for quantizing keys per channel: outlier channels then get their own scale."""
    x = _outlier_keys(7)
    for bits in (2, 4):
        err_channel = (dequantize(quantize(x, bits, "channel")) - x).pow(2).mean()
        err_token = (dequantize(quantize(x, bits, "token")) - x).pow(2).mean()
        assert float(err_channel) < 0.5 * float(err_token)


def test_grid_values_are_exact() -> None:
    """Integers 0..255 in every group (min 0, max 255) have scale exactly 1: 8-bit codes equal the values."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (2, 64, 32), generator=gen).float()
    x[:, :, 0], x[:, :, 1] = 0.0, 255.0  # every token group spans exactly [0, 255]
    q = quantize(x, 8, "token", 32)
    assert torch.equal(q.codes, x.to(torch.uint8).reshape(-1))
    assert torch.equal(dequantize(q), x)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("axis", AXES)
def test_constant_groups_do_not_divide_by_zero(symmetric: bool, axis: str) -> None:
    x = torch.full((2, 40, 8), 3.0)
    x[1] = 0.0
    x[0, :, 5] = -1.25  # a constant channel inside a non-constant token group
    for bits in BITS:
        q = quantize(x, bits, axis, 32, symmetric)
        y = dequantize(q)
        assert bool(torch.isfinite(y).all())
        assert torch.equal(y[1], x[1])  # an all-zero head: every group constant
        if axis == "channel" and not symmetric:
            # Every channel group is constant, and the zero point fp16(3.0) = 3.0 comes back exactly
            # (symmetric constants come back as M * fp16(3.0 / M): within the bound, not exact).
            assert torch.equal(y, x)
        _check_bound(x, q)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e6])
def test_non_finite_or_out_of_fp16_range_rejected(bad: float) -> None:
    x = torch.randn(2, 8, 8)
    x[1, 3, 2] = bad
    for symmetric in (False, True):
        with pytest.raises(ValueError):
            quantize(x, 4, "channel", 32, symmetric)


def test_quantize_rejects_bad_arguments() -> None:
    x = torch.randn(2, 4, 8)
    with pytest.raises(ValueError):
        quantize(x, 16)
    with pytest.raises(ValueError):
        quantize(x, 4, "head")
    with pytest.raises(ValueError):
        quantize(x[0], 4)
    with pytest.raises(ValueError):
        quantize(x.double(), 4)


@pytest.mark.parametrize("axis", AXES)
def test_layout_and_degenerate_shapes(axis: str) -> None:
    x = torch.randn(2, 33, 40)
    q = quantize(x, 4, axis, 16)
    assert q.scale.shape == ((2, 33, 3) if axis == "token" else (2, 3, 40))
    assert q.scale.dtype == torch.float16 and q.zero is not None and q.zero.shape == q.scale.shape
    assert q.codes.numel() == math.ceil(2 * 33 * 40 / 2)
    for shape in [(2, 0, 16), (1, 1, 1), (3, 1, 5)]:
        t = torch.randn(shape)
        for bits in BITS:
            y = dequantize(quantize(t, bits, axis, 32))
            assert y.shape == t.shape
            if t.numel():
                _check_bound(t, quantize(t, bits, axis, 32))


@pytest.mark.parametrize("axis", AXES)
def test_group_longer_than_axis_is_one_group(axis: str) -> None:
    """G >= axis length means one group over the whole axis, identical to G = length (and no padding)."""
    x = torch.randn(2, 3, 5)
    n = 5 if axis == "token" else 3
    big, exact = quantize(x, 4, axis, 1 << 16), quantize(x, 4, axis, n)
    assert big.scale.shape == exact.scale.shape and torch.equal(big.codes, exact.codes)
    assert torch.equal(dequantize(big), dequantize(exact))


# --- byte accounting ----------------------------------------------------------------------------------------
def test_nbytes_hand_computed_qwen7b_geometry() -> None:
    """Qwen2.5-7B, 1,024 tokens, INT4 KIVI: per tensor 131,072 code bytes; K: 2x32x128 groups, V: 2x1024x4,
    each with an fp16 scale and zero -> (2*131072 + 4*8192*2) * 28 = 9,175,040 bytes."""
    assert estimate_bytes(28, 4 // 2, 1024, 128, 4, QuantSpec(4)) == 9_175_040
    assert estimate_bytes(28, 4, 1024, 128, 16) == 28 * 4 * 128 * 2 * 2 * 1024  # bf16: 57,344 B/token
    mixed = BitPlan(4, {0: 16})
    assert estimate_bytes(28, 2, 1024, 128, mixed, QuantSpec(4)) == 9_175_040 // 28 * 27 + 2 * 2 * 1024 * 128 * 2


@settings(max_examples=40, deadline=None)
@given(
    layers=st.integers(1, 4),
    heads=st.integers(1, 3),
    seq=st.integers(0, 70),
    dim=st.integers(1, 40),
    vdim=st.integers(1, 40),
    group=st.sampled_from([1, 7, 16, 32, 64]),
    bits=st.lists(st.sampled_from([2, 4, 8, 16]), min_size=4, max_size=4),
    axis_k=st.sampled_from(AXES),
    axis_v=st.sampled_from(AXES),
    symmetric=st.booleans(),
    raw=st.sampled_from([torch.bfloat16, torch.float32]),
)
def test_nbytes_equals_estimate(
    layers: int,
    heads: int,
    seq: int,
    dim: int,
    vdim: int,
    group: int,
    bits: list[int],
    axis_k: str,
    axis_v: str,
    symmetric: bool,
    raw: torch.dtype,
) -> None:
    kv = KVCache(
        [torch.randn(heads, seq, dim).to(raw) for _ in range(layers)],
        [torch.randn(heads, seq, vdim).to(raw) for _ in range(layers)],
        torch.arange(seq),
    )
    plan = BitPlan.from_list(bits[:layers])
    spec = QuantSpec(plan.default, axis_k, axis_v, group, symmetric)
    qc = quantize_cache(kv, plan, spec)
    itemsize = torch.empty(0, dtype=raw).element_size()
    expected = estimate_bytes(layers, heads, seq, dim, plan, spec, raw_itemsize=itemsize, v_head_dim=vdim)
    assert qc.nbytes() == expected
    assert qc.bits() == bits[:layers]


# --- whole caches -------------------------------------------------------------------------------------------
def _random_cache(layers: int = 3, dtype: torch.dtype = torch.bfloat16) -> KVCache:
    gen = torch.Generator().manual_seed(11)
    keys = [_outlier_keys(i, 2, 40, 32).to(dtype) for i in range(layers)]
    values = [torch.randn(2, 40, 32, generator=gen).to(dtype) for _ in range(layers)]
    return KVCache(keys, values, torch.arange(40))


def test_quantize_cache_plans_and_passthrough() -> None:
    kv = _random_cache().select([0, 3, 4, 9, 20, 39])  # pruned: original positions travel along
    qc = quantize_cache(kv, BitPlan(4, {0: 16, 2: 8}))
    assert qc.bits() == [16, 4, 8] and qc.plan() == BitPlan(4, {0: 16, 2: 8})
    assert qc.keys[0] is kv.keys[0]  # 16-bit layers are not copied
    out = dequantize_cache(qc)
    assert torch.equal(out.positions, torch.tensor([0, 3, 4, 9, 20, 39]))
    assert torch.equal(out.keys[0], kv.keys[0]) and torch.equal(out.values[0], kv.values[0])
    assert out.dtype == torch.bfloat16 and out.keys[1].shape == kv.keys[1].shape
    # int and mapping plans
    assert quantize_cache(kv, 8).bits() == [8, 8, 8]
    assert quantize_cache(kv, {1: 2}, QuantSpec(4)).bits() == [4, 2, 4]
    with pytest.raises(ValueError):
        quantize_cache(kv, {5: 8})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_sixteen_bit_layers_are_bitwise(dtype: torch.dtype) -> None:
    kv = _random_cache(2, dtype)
    assert dequantize_cache(quantize_cache(kv, 16)).equal(kv)


def test_quantized_cache_validation() -> None:
    kv = _random_cache(2)
    q = quantize(kv.keys[0], 4, "channel")
    with pytest.raises(ValueError):
        QuantizedCache([q], [kv.values[0]], kv.positions)  # 4-bit keys with 16-bit values
    with pytest.raises(ValueError):
        QuantizedCache([q], [q], kv.positions[:5])
    with pytest.raises(ValueError):
        QuantizedTensor(q.codes[:-1], q.scale, q.zero, q.shape, q.dtype, q.bits, q.axis, q.group_size)
    with pytest.raises(ValueError):
        QuantizedTensor(q.codes, q.scale.float(), q.zero, q.shape, q.dtype, q.bits, q.axis, q.group_size)


# --- a real (tiny, random-init) transformer's KV ------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model() -> tuple[object, KVCache, torch.Tensor, torch.Tensor]:
    _, model = tiny_qwen2()
    ids = torch.randint(0, 1000, (1, 51))
    with torch.no_grad():
        out = model(ids[:, :50], use_cache=True)
        kv = KVCache.from_hf(out.past_key_values)  # before the next step appends to the HF cache
        ref = model(ids[:, 50:], past_key_values=kv.to_hf(), use_cache=True).logits[0, -1]
    assert kv.seq_len == 50
    return model, kv, ids[:, 50:], ref


def test_real_kv_roundtrip_and_decode(tiny_model: tuple[object, KVCache, torch.Tensor, torch.Tensor]) -> None:
    model, kv, next_ids, ref = tiny_model
    errors: dict[int, float] = {}
    for bits in BITS:
        for symmetric in (False, True):
            spec = QuantSpec(bits, symmetric=symmetric)
            qc = quantize_cache(kv, bits, spec)
            for i in range(kv.num_layers):
                _check_bound(kv.keys[i], qc.keys[i])  # type: ignore[arg-type]
                _check_bound(kv.values[i], qc.values[i])  # type: ignore[arg-type]
            assert qc.nbytes() == estimate_bytes(2, 2, 50, 16, bits, spec)
        rebuilt = dequantize_cache(quantize_cache(kv, bits))
        with torch.no_grad():
            logits = model(next_ids, past_key_values=rebuilt.to_hf(), use_cache=True).logits[0, -1]  # type: ignore[operator]
        errors[bits] = float((logits - ref).abs().max())
    assert errors[8] < errors[4] < errors[2]
    assert errors[8] < 1e-2 * float(ref.abs().max())
    with torch.no_grad():
        exact = model(next_ids, past_key_values=dequantize_cache(quantize_cache(kv, 16)).to_hf()).logits[0, -1]  # type: ignore[operator]
    assert torch.equal(exact, ref)
