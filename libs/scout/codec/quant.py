"""Group-wise integer quantization of KV tensors (8, 4 and 2 bits), with exact byte accounting.

Why this shape:
- KIVI's observation drives the default axes: keys have a few *outlier channels* (large, consistent
  magnitude per channel across tokens), so keys are quantized per channel (a group runs along the token axis
  for one channel, and the outlier gets its own scale); values have no such structure and are quantized per
  token (a group runs along head_dim). Both axes are available for both tensors, so the study's plain
  per-token INT8/INT4 can be reproduced and compared.
- Scales and zero points are fp16: half the bytes of fp32, and the rounding they add is part of the error
  bound below (derived here, tested in tests/unit/test_quant.py).
- Codes are bit-packed (two 4-bit or four 2-bit codes per byte), and only the *true* elements are stored: the
  last group of an axis whose length is not a multiple of the group size is padded (by repeating its last
  element, which leaves min/max/absmax unchanged) only while computing statistics, never on the wire; the
  true length is the recorded shape. `nbytes()` is the exact payload and `estimate_bytes` predicts it without
  tensors, because the transport policy sizes its operating points from that arithmetic.
- Everything is vectorised torch on the tensor's own device; loops run only over layers.

Error bound (per element, every group; L = 2^bits - 1, M = 2^(bits-1) - 1, fp16 unit roundoff u = 2^-11;
fp16 rounding of a value y errs by at most u*|y| + 2^-25, the second term covering subnormals):

Asymmetric. True group statistics mn, mx; scale = (mx - mn) / L. Stored s = fp16(scale), z = fp16(mn), with
ds = |scale - s| <= u*scale + 2^-25 and dz = |mn - z| <= u*|mn| + 2^-25. Codes use the *stored* s and z:
q = clamp(round((x - z) / s), 0, L) (q = 0 when s == 0), x^ = q*s + z. For x in [mn, mx]:
  * unclamped:     |x - x^| = s * |t - round(t)| <= s/2;
  * clamped at 0:  x < z, so |x - x^| = z - x <= z - mn <= dz;
  * clamped at L:  x - x^ = x - L*s - z <= (mx - mn) - L*s + (mn - z) = L*(scale - s) + (mn - z)
                   <= L*ds + dz.
  Hence  |x - x^| <= max(s/2, L*ds + dz).  Since L*u <= 255/2048 < 1/8, L*ds <= s/2 for normal scales,
  which gives the simpler corollary  |x - x^| <= s/2 + u*|mn| + 2^-16  (2^-16 absorbs L*2^-25 + 2^-25).
  A constant group (mx == mn) has scale 0, q = 0 and reconstructs z: error dz, no division by zero.
Symmetric. absmax a; scale = a / M; s = fp16(scale); q = clamp(round(x / s), -M, M), stored as q + M;
x^ = q*s.  Unclamped: <= s/2; clamped: |x| - M*s <= a - M*s = M*(scale - s) <= M*ds.
  Hence  |x - x^| <= max(s/2, M*ds) <= s/2 + 2^-18  (M*u <= 127/2048 < 1/2).
Arithmetic is fp32: t is computed as x*(1/s) - z*(1/s), a few 1e-5 code units off, which can only flip a
round-half decision (+2^-12 * s at most), plus a few ulps of max(|mn|, |mx|) in x^. A bf16/fp16 original
dtype adds the final rounding of x^ (relative 2^-8 / 2^-11). Inputs must be finite and the scale/zero must
fit fp16 (|values| < 65504); otherwise `quantize` raises ValueError (keep such a layer at 16 bits).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from scout.kvcache import KVCache, LayeredCache

QUANT_BITS: frozenset[int] = frozenset({2, 4, 8})
"""Bit widths `quantize` produces."""
PLAN_BITS: frozenset[int] = frozenset({2, 4, 8, 16})
"""Bit widths a plan may assign to a layer; 16 keeps the layer's raw tensors (bf16/fp16/fp32) untouched."""
AXES: frozenset[str] = frozenset({"token", "channel"})
MAX_GROUP_SIZE = 1 << 16
"""Upper bound on the group size: large enough for any context, small enough to reject nonsense early."""

DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}
"""Original dtypes a KV tensor may have (by name, as recorded in QuantizedTensor and the wire header)."""
_DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}


def _check_bits(bits: object, allowed: frozenset[int], what: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in allowed:
        raise ValueError(f"{what}: bits must be one of {sorted(allowed)}, got {bits!r}")
    return bits


def _check_axis(axis: object, what: str) -> str:
    if axis not in AXES:
        raise ValueError(f"{what}: axis must be 'token' or 'channel', got {axis!r}")
    return str(axis)


def _check_group(group_size: object, what: str) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or not 1 <= group_size <= MAX_GROUP_SIZE:
        raise ValueError(f"{what}: group_size must be an int in [1, {MAX_GROUP_SIZE}], got {group_size!r}")
    return group_size


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize a cache: bit width (16 = keep raw), axis for keys and for values, group size, symmetry.

    Defaults follow KIVI: keys per channel, values per token, groups of 32, asymmetric (min/max).
    """

    bits: int
    axis_k: str = "channel"
    axis_v: str = "token"
    group_size: int = 32
    symmetric: bool = False

    def __post_init__(self) -> None:
        _check_bits(self.bits, PLAN_BITS, "QuantSpec")
        _check_axis(self.axis_k, "QuantSpec.axis_k")
        _check_axis(self.axis_v, "QuantSpec.axis_v")
        _check_group(self.group_size, "QuantSpec")
        if not isinstance(self.symmetric, bool):
            raise ValueError(f"QuantSpec: symmetric must be a bool, got {self.symmetric!r}")


def study_spec(bits: int, head_dim: int) -> QuantSpec:
    """The source study's quantizer: per-token symmetric absmax over the whole head_dim, keys and values alike."""
    return QuantSpec(bits, axis_k="token", axis_v="token", group_size=head_dim, symmetric=True)


@dataclass(frozen=True)
class BitPlan:
    """Bits per layer: `default` everywhere except `overrides` (layer index -> bits). 16 keeps a layer raw.

    This is the unit the mixed-precision planner produces (e.g. INT4 everywhere, layer 0 at 16 bits, the
    study's "mixed INT4"), so it lives here next to the code that executes it.
    """

    default: int
    overrides: Mapping[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_bits(self.default, PLAN_BITS, "BitPlan.default")
        clean: dict[int, int] = {}
        for layer, bits in dict(self.overrides).items():
            if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                raise ValueError(f"BitPlan: layer index must be a non-negative int, got {layer!r}")
            clean[layer] = _check_bits(bits, PLAN_BITS, f"BitPlan layer {layer}")
        # A private copy, so a caller mutating its dict cannot change a frozen plan.
        object.__setattr__(self, "overrides", clean)

    @classmethod
    def uniform(cls, bits: int) -> BitPlan:
        return cls(default=bits)

    @classmethod
    def from_list(cls, bits_per_layer: list[int] | tuple[int, ...]) -> BitPlan:
        """A plan from an explicit list; the most common width becomes the default (smallest overrides)."""
        if not bits_per_layer:
            raise ValueError("BitPlan.from_list: empty list")
        default = max(sorted(set(bits_per_layer)), key=bits_per_layer.count)
        return cls(default, {i: b for i, b in enumerate(bits_per_layer) if b != default})

    def bits_for(self, layer: int) -> int:
        return self.overrides.get(layer, self.default)

    def per_layer(self, num_layers: int) -> list[int]:
        """Bits of each of `num_layers` layers; raises if an override names a layer that does not exist."""
        self.validate(num_layers)
        return [self.bits_for(i) for i in range(num_layers)]

    def validate(self, num_layers: int) -> None:
        extra = sorted(layer for layer in self.overrides if layer >= num_layers)
        if extra:
            raise ValueError(f"BitPlan overrides layers {extra} but the cache has {num_layers} layers")


@dataclass
class QuantizedTensor:
    """One layer's K or V after quantization.

    codes: 1-D uint8, the bit-packed codes of the true elements in row-major [kv_heads, seq, head_dim] order
           (for both axes), low bits first within a byte; the last byte is zero-padded.
    scale: fp16, `scale_shape(shape, axis, group_size)`: [kv_heads, seq, n_groups] for axis "token" (groups of
           G channels of one token), [kv_heads, n_groups, head_dim] for axis "channel" (groups of G tokens of
           one channel).
    zero:  fp16 like scale (the group minimum), or None when symmetric (codes then carry an offset of
           2^(bits-1) - 1).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    shape: tuple[int, int, int]
    dtype: str
    bits: int
    axis: str
    group_size: int

    def __post_init__(self) -> None:
        self.shape = tuple(int(d) for d in self.shape)  # type: ignore[assignment]
        if len(self.shape) != 3 or min(self.shape) < 0:
            raise ValueError(f"QuantizedTensor: shape must be 3 non-negative dims, got {self.shape}")
        if self.dtype not in DTYPES:
            raise ValueError(f"QuantizedTensor: unsupported dtype {self.dtype!r}")
        _check_bits(self.bits, QUANT_BITS, "QuantizedTensor")
        _check_axis(self.axis, "QuantizedTensor")
        _check_group(self.group_size, "QuantizedTensor")
        if self.codes.dtype != torch.uint8 or self.codes.ndim != 1:
            raise ValueError("QuantizedTensor: codes must be a 1-D uint8 tensor")
        if self.codes.numel() != packed_len(math.prod(self.shape), self.bits):
            raise ValueError(
                f"QuantizedTensor: {self.codes.numel()} code bytes, expected "
                f"{packed_len(math.prod(self.shape), self.bits)} for shape {self.shape} at {self.bits} bits"
            )
        expected = scale_shape(self.shape, self.axis, self.group_size)
        if self.scale.dtype != torch.float16 or tuple(self.scale.shape) != expected:
            raise ValueError(f"QuantizedTensor: scale must be fp16 {expected}, got {tuple(self.scale.shape)}")
        if self.zero is not None and (self.zero.dtype != torch.float16 or tuple(self.zero.shape) != expected):
            raise ValueError(f"QuantizedTensor: zero must be fp16 {expected}")

    @property
    def symmetric(self) -> bool:
        return self.zero is None

    def nbytes(self) -> int:
        """Exact payload bytes: packed codes + fp16 scales (+ fp16 zero points)."""
        n = self.codes.numel() + 2 * self.scale.numel()
        return n + (2 * self.zero.numel() if self.zero is not None else 0)


LayerTensor = QuantizedTensor | torch.Tensor
"""A layer's K or V in a QuantizedCache: quantized, or the raw tensor for a 16-bit layer."""


@dataclass
class QuantizedCache(LayeredCache):
    """A KVCache whose layers are quantized (or kept raw at 16 bits); positions as in KVCache (and its layer count
    and length read the same way, from `LayeredCache`)."""

    keys: list[LayerTensor]
    values: list[LayerTensor]
    positions: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.values) or not self.keys:
            raise ValueError("QuantizedCache: need the same, non-zero number of key and value layers")
        if self.positions.ndim != 1:
            raise ValueError("QuantizedCache: positions must be 1-D")
        seq = self.positions.shape[0]
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            ks, vs = _shape_of(k), _shape_of(v)
            if len(ks) != 3 or len(vs) != 3 or ks[1] != seq or vs[1] != seq or ks[0] != vs[0]:
                raise ValueError(f"QuantizedCache: layer {i} shapes {ks}/{vs} disagree with {seq} positions")
            if layer_bits(k) != layer_bits(v):
                raise ValueError(f"QuantizedCache: layer {i} keys and values have different bit widths")

    def bits(self) -> list[int]:
        """Bits of each layer (16 for raw layers)."""
        return [layer_bits(k) for k in self.keys]

    def plan(self) -> BitPlan:
        return BitPlan.from_list(self.bits())

    def nbytes(self) -> int:
        """Exact KV payload bytes (codes + scales + zeros, raw bytes of 16-bit layers); positions excluded."""
        return sum(_layer_nbytes(t) for t in (*self.keys, *self.values))


def _shape_of(t: LayerTensor) -> tuple[int, ...]:
    return t.shape if isinstance(t, QuantizedTensor) else tuple(t.shape)


def layer_bits(t: LayerTensor) -> int:
    return t.bits if isinstance(t, QuantizedTensor) else 16


def _layer_nbytes(t: LayerTensor) -> int:
    return t.nbytes() if isinstance(t, QuantizedTensor) else t.numel() * t.element_size()


# --- geometry, shared with the wire format and the size estimator -------------------------------------------
def packed_len(numel: int, bits: int) -> int:
    """Bytes holding `numel` codes of `bits` bits, packed 8/bits per byte."""
    return -(-numel * bits // 8)


def scale_shape(shape: tuple[int, int, int], axis: str, group_size: int) -> tuple[int, int, int]:
    """Shape of the scale/zero tensors of a [kv_heads, seq, head_dim] tensor quantized along `axis`.

    Token axis: [kv_heads, seq, ceil(head_dim / G)]; channel axis: [kv_heads, ceil(seq / G), head_dim].
    """
    heads, seq, dim = shape
    if axis == "token":
        return (heads, seq, -(-dim // group_size))
    return (heads, -(-seq // group_size), dim)


def estimate_bytes(
    num_layers: int,
    kv_heads: int,
    seq: int,
    head_dim: int,
    plan: BitPlan | int,
    spec: QuantSpec | None = None,
    *,
    raw_itemsize: int = 2,
    v_head_dim: int | None = None,
) -> int:
    """Exact KV payload bytes `quantize_cache(...).nbytes()` will report, without any tensor.

    `raw_itemsize` is the element size of 16-bit (raw) layers: 2 for bf16/fp16, 4 if the cache is fp32.
    """
    plan = plan if isinstance(plan, BitPlan) else BitPlan.uniform(plan)
    plan.validate(num_layers)  # the same refusal quantize_cache would give
    spec = spec or QuantSpec(plan.default)
    vd = head_dim if v_head_dim is None else v_head_dim
    total = 0
    for layer in range(num_layers):
        bits = plan.bits_for(layer)
        for axis, dim in ((spec.axis_k, head_dim), (spec.axis_v, vd)):
            shape = (kv_heads, seq, dim)
            numel = kv_heads * seq * dim
            if bits == 16:
                total += numel * raw_itemsize
                continue
            groups = math.prod(scale_shape(shape, axis, spec.group_size))
            total += packed_len(numel, bits) + 2 * groups * (1 if spec.symmetric else 2)
    return total


# --- bit packing --------------------------------------------------------------------------------------------
def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack uint8 codes (< 2^bits) into bytes, low bits first; the last byte is zero-padded.

    The loop runs over the (at most four) code slots of a byte, each a strided whole-tensor op.
    """
    flat = codes.reshape(-1).to(torch.uint8)
    if bits == 8:
        return flat.contiguous()
    per = 8 // bits
    pad = (-flat.numel()) % per
    if pad:
        flat = F.pad(flat, (0, pad))
    packed = flat[0::per].clone()
    for slot in range(1, per):
        packed |= flat[slot::per] << (bits * slot)
    return packed


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of `pack_codes`: the first `numel` codes as uint8."""
    if bits == 8:
        return packed[:numel]
    mask = (1 << bits) - 1
    slots = [(packed >> (bits * slot)) & mask for slot in range(8 // bits)]
    return torch.stack(slots, dim=-1).reshape(-1)[:numel]


# --- quantize / dequantize ----------------------------------------------------------------------------------
def _geometry(shape: tuple[int, int, int], axis: str, group_size: int) -> tuple[tuple[int, int, int], int]:
    """The padded shape the groups tile exactly, and the group length actually used.

    A group size beyond the axis length means one group of the whole axis: it is shrunk to that length, so
    a large group size never pads a short axis (a hostile blob declaring G = 65536 for 3 tokens cannot make
    dequantization allocate 65536 tokens' worth of floats).
    """
    heads, seq, dim = shape
    n = dim if axis == "token" else seq
    g = min(group_size, n) if n else group_size
    padded_n = -(-n // g) * g
    return ((heads, seq, padded_n) if axis == "token" else (heads, padded_n, dim)), g


def _groups(y: torch.Tensor, axis: str, group: int) -> tuple[torch.Tensor, int]:
    """View a padded [heads, seq, dim] tensor as groups, and the dimension the groups reduce over.

    Token axis: [heads, seq, n_groups, G] reducing dim 3; channel axis: [heads, n_groups, G, dim] reducing
    dim 2. Neither needs a transpose: the channel reduction runs across tokens with head_dim contiguous,
    which torch vectorises well (much faster than reducing a transposed copy).
    """
    heads, seq, dim = y.shape
    if axis == "token":
        return y.view(heads, seq, dim // group, group), 3
    return y.view(heads, seq // group, group, dim), 2


def quantize(
    x: torch.Tensor,
    bits: int,
    axis: str = "token",
    group_size: int = 32,
    symmetric: bool = False,
) -> QuantizedTensor:
    """Quantize one layer's K or V ([kv_heads, seq, head_dim]) group-wise (error bound: module docstring)."""
    _check_bits(bits, QUANT_BITS, "quantize")
    _check_axis(axis, "quantize")
    _check_group(group_size, "quantize")
    if x.ndim != 3:
        raise ValueError(f"quantize: expected [kv_heads, seq, head_dim], got shape {tuple(x.shape)}")
    if x.dtype not in _DTYPE_NAMES:
        raise ValueError(f"quantize: unsupported dtype {x.dtype} (use one of {sorted(DTYPES)})")
    shape = (int(x.shape[0]), int(x.shape[1]), int(x.shape[2]))
    _, seq, dim = shape
    padded, group = _geometry(shape, axis, group_size)
    if padded == shape:
        y = x.float()
    else:
        y = torch.empty(padded, dtype=torch.float32, device=x.device)
        y[:, :seq, :dim].copy_(x)
        if x.numel():
            # Repeat the last token (channel axis) or channel (token axis): the min, max and absmax of the
            # last group stay those of its true elements.
            if axis == "token":
                y[:, :, dim:] = y[:, :, dim - 1 : dim]
            else:
                y[:, seq:, :] = y[:, seq - 1 : seq, :]
    g, red = _groups(y, axis, group)

    # Non-finite inputs surface in the group statistics (min/max/amax propagate NaN and inf), which are
    # checked for the fp16 range anyway: no separate pass over the whole tensor is needed.
    if symmetric:
        levels = (1 << (bits - 1)) - 1
        scale16 = (g.abs().amax(red, keepdim=True) / levels).half()
        zero16 = None
        _check_fp16(scale16, "scale")
        q = g.mul(_safe_reciprocal(scale16)).round_().clamp_(-levels, levels).add_(levels)
    else:
        levels = (1 << bits) - 1
        # amin + amax: two vectorised passes are several times faster than torch.aminmax here.
        mn, mx = g.amin(red, keepdim=True), g.amax(red, keepdim=True)
        scale16 = ((mx - mn) / levels).half()
        zero16 = mn.half()
        _check_fp16(scale16, "scale")
        _check_fp16(zero16, "zero point")
        inv = _safe_reciprocal(scale16)
        # (x - z) * inv in one fused pass: x * inv + (-z * inv).
        q = torch.addcmul(zero16.float().mul_(inv).neg_(), g, inv).round_().clamp_(0, levels)

    codes = q.to(torch.uint8).view(padded)[:, :seq, :dim]
    return QuantizedTensor(
        codes=pack_codes(codes, bits),
        scale=scale16.squeeze(red),
        zero=None if zero16 is None else zero16.squeeze(red),
        shape=shape,
        dtype=_DTYPE_NAMES[x.dtype],
        bits=bits,
        axis=axis,
        group_size=group_size,
    )


def _safe_reciprocal(scale16: torch.Tensor) -> torch.Tensor:
    """1/s for the stored fp16 scale, 0 where s == 0 (a constant group: all codes 0, x^ = zero point).

    Multiplying by a reciprocal instead of dividing moves t = (x - z)/s by at most ~2^-22 relative, i.e. a
    few 1e-5 code units: it can only flip a round-half decision, adding <= 2^-12 * s to the bound.
    """
    s = scale16.float()
    return torch.where(s > 0, s.reciprocal(), 0.0)


def _check_fp16(t: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"quantize: non-finite input, or a {what} beyond the fp16 range; keep this layer at 16 bits")


def dequantize(q: QuantizedTensor) -> torch.Tensor:
    """Reconstruct [kv_heads, seq, head_dim] in the original dtype."""
    heads, seq, dim = q.shape
    padded, group = _geometry(q.shape, q.axis, q.group_size)
    codes = unpack_codes(q.codes, q.bits, heads * seq * dim).view(q.shape)
    if padded != q.shape:
        codes = F.pad(codes, (0, padded[2] - dim, 0, padded[1] - seq))
    c, red = _groups(codes.float(), q.axis, group)
    s = q.scale.float().unsqueeze(red)
    y = c.sub_((1 << q.bits - 1) - 1).mul_(s) if q.zero is None else torch.addcmul(q.zero.float().unsqueeze(red), c, s)
    out = y.view(padded)[:, :seq, :dim]
    return out.to(DTYPES[q.dtype]).contiguous()


# --- whole caches -------------------------------------------------------------------------------------------
def _as_plan(plan: BitPlan | int | Mapping[int, int] | None, spec: QuantSpec) -> BitPlan:
    if plan is None:
        return BitPlan.uniform(spec.bits)
    if isinstance(plan, BitPlan):
        return plan
    if isinstance(plan, Mapping):
        return BitPlan(spec.bits, dict(plan))
    return BitPlan.uniform(plan)


def quantize_cache(
    kv: KVCache,
    plan: BitPlan | int | Mapping[int, int] | None = None,
    spec: QuantSpec | None = None,
) -> QuantizedCache:
    """Quantize every layer at the plan's bits (16 keeps the raw tensors, shared, not copied).

    `plan` may be a BitPlan, one int for all layers, or a {layer: bits} mapping over `spec.bits` (8 without a
    spec); `spec` gives the axes, group size and symmetry (default: KIVI axes, groups of 32, asymmetric).
    When `plan` is a BitPlan or an int, `spec.bits` is not used.
    """
    if spec is None:
        default = plan.default if isinstance(plan, BitPlan) else plan if isinstance(plan, int) else None
        spec = QuantSpec(8 if default is None else default)
    bitplan = _as_plan(plan, spec)
    per_layer = bitplan.per_layer(kv.num_layers)
    keys: list[LayerTensor] = []
    values: list[LayerTensor] = []
    for layer, bits in enumerate(per_layer):
        k, v = kv.keys[layer], kv.values[layer]
        if bits == 16:
            keys.append(k)
            values.append(v)
        else:
            keys.append(quantize(k, bits, spec.axis_k, spec.group_size, spec.symmetric))
            values.append(quantize(v, bits, spec.axis_v, spec.group_size, spec.symmetric))
    return QuantizedCache(keys=keys, values=values, positions=kv.positions)


def dequantize_layer(t: LayerTensor) -> torch.Tensor:
    return dequantize(t) if isinstance(t, QuantizedTensor) else t


def dequantize_cache(qc: QuantizedCache) -> KVCache:
    """Rebuild a KVCache (raw 16-bit layers are passed through as they are, not copied)."""
    return KVCache(
        keys=[dequantize_layer(k) for k in qc.keys],
        values=[dequantize_layer(v) for v in qc.values],
        positions=qc.positions,
    )
