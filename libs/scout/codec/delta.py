"""CacheGen-style anchor/delta encoding of a KV cache (the ``delta-int<b>`` codecs) and the statistics behind it.

Kept as the baseline the source study refutes: CacheGen splits the tokens into groups of `group` consecutive
tokens, keeps the first token of each group as the *anchor* and stores every other token as its difference from
the anchor (never from the previous token, so quantization errors do not accumulate along the sequence). Deltas
have a much smaller variance than the raw values (the study: up to 735x for keys), which is the argument for
them; the study then found that delta + INT4 answers *worse* than direct INT4 (63-71 % vs 77 % of full-precision
F1 on Qwen2.5-7B). This module lets a user check that claim on any model with Scout's own quantizers:

* `delta_encode` / `delta_decode`: anchors are kept raw (`anchor_bits=16`, exact) or quantized at 8/4 bits; the
  deltas are computed in fp32 against the *reconstructed* anchor (closed loop, so an anchor's own rounding does
  not add to its group's error) and quantized with `scout.codec.quant` at the same axes/groups as direct
  quantization. Decoding dequantizes and adds the anchors back.
* `variance_reduction`: the study's statistic (variance of the whole raw tensor / variance of the non-anchor
  deltas, per layer), plus the same ratio against the raw values' *within-channel* variance. The second number
  explains much of the first: most of a key tensor's variance is the spread of per-channel means (outlier
  channels), which a per-channel quantizer (KIVI) already absorbs without deltas.
A delta-encoded cache travels as two ordinary scout-kv blobs (anchors; deltas) in one small frame, so every
byte is checked by the wire format's own validation and checksum. Lossless entropy coding (zstd, and the ideal
order-0 sizes CacheGen's arithmetic coder aims at) lives in `scout.codec.entropy`.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

from scout.codec.base import (
    AXES,
    Codec,
    CodecSpecError,
    Geometry,
    Payload,
    check_axes,
    head_dim_of,
    plan_bytes,
    quant_spec,
)
from scout.codec.quant import (
    DTYPES,
    PLAN_BITS,
    QUANT_BITS,
    LayerTensor,
    QuantizedCache,
    QuantizedTensor,
    QuantSpec,
    dequantize_layer,
    layer_bits,
    quantize,
)
from scout.codec.wire import DEFAULT_MAX_BYTES, MAX_SEQ, BlobError, decode_blob, encode_blob
from scout.kvcache import KVCache

DEFAULT_GROUP = 10
"""CacheGen's default group length (and the study's)."""
DELTA_MAGIC = b"SKVDELT1"
"""First 8 bytes of a delta frame: magic and frame version 1."""
_META_PREFIX = "delta."
_GROUP_RE = re.compile(r"[1-9][0-9]{0,18}")


# ----------------------------------------------------------------------------------------------------------------
# anchor/delta encoding
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class DeltaCache:
    """A delta-encoded cache: anchor tokens (one per group) and the other tokens' deltas, both as QuantizedCaches.

    `anchors` holds tokens 0, group, 2*group, … of the original cache (raw at 16 bits, or quantized); `deltas`
    holds every other token as x - anchor^ (fp32 before quantization). Each keeps its tokens' original position
    ids, so the original order is recovered by position.
    """

    anchors: QuantizedCache
    deltas: QuantizedCache
    group: int
    original_seq_len: int

    @property
    def num_layers(self) -> int:
        return self.anchors.num_layers

    @property
    def seq_len(self) -> int:
        return self.anchors.seq_len + self.deltas.seq_len

    def nbytes(self) -> int:
        """Exact payload bytes of both parts (codes, scales, zero points, raw anchors); positions excluded."""
        return self.anchors.nbytes() + self.deltas.nbytes()


@dataclass(frozen=True)
class _Layout:
    anchors: torch.Tensor  # cache indices of the anchor tokens
    others: torch.Tensor  # cache indices of the delta tokens
    owner: torch.Tensor  # for each delta token, the index (into `anchors`) of its anchor


def _layout(seq: int, group: int) -> _Layout:
    idx = torch.arange(seq)
    is_anchor = idx % group == 0
    others = idx[~is_anchor]
    return _Layout(anchors=idx[is_anchor], others=others, owner=others // group)


def _check_group(group: object) -> int:
    if isinstance(group, bool) or not isinstance(group, int) or group < 2:
        raise ValueError(f"group must be an int >= 2 (1 would make every token an anchor), got {group!r}")
    return group


def delta_encode(
    kv: KVCache,
    *,
    group: int = DEFAULT_GROUP,
    bits: int = 4,
    anchor_bits: int = 16,
    spec: QuantSpec | None = None,
) -> DeltaCache:
    """Anchor/delta-encode every layer: anchors at `anchor_bits` (16 = raw), deltas quantized at `bits`.

    `spec` gives the quantizer's axes, group size and symmetry for both parts (default: KIVI, as for direct
    quantization, so that delta vs direct compares the encoding and nothing else). Positions must be strictly
    increasing (they are for any prefilled or pruned cache), which is how the decoder restores the order.
    """
    _check_group(group)
    if bits not in QUANT_BITS:
        raise ValueError(f"bits must be one of {sorted(QUANT_BITS)}, got {bits!r}")
    if anchor_bits not in PLAN_BITS:
        raise ValueError(f"anchor_bits must be one of {sorted(PLAN_BITS)}, got {anchor_bits!r}")
    if kv.seq_len < 1:
        raise ValueError("delta_encode: empty cache")
    if kv.seq_len > 1 and not bool((kv.positions[1:] > kv.positions[:-1]).all()):
        raise ValueError("delta_encode: positions must be strictly increasing")
    spec = spec or QuantSpec(bits)
    lay = _layout(kv.seq_len, group)
    a_keys: list[LayerTensor] = []
    a_values: list[LayerTensor] = []
    d_keys: list[LayerTensor] = []
    d_values: list[LayerTensor] = []
    for layer in range(kv.num_layers):
        for x, axis, a_out, d_out in (
            (kv.keys[layer], spec.axis_k, a_keys, d_keys),
            (kv.values[layer], spec.axis_v, a_values, d_values),
        ):
            anchor = x.index_select(1, lay.anchors).contiguous()
            if anchor_bits == 16:
                stored: LayerTensor = anchor
                anchor_hat = anchor.float()
            else:
                stored = quantize(anchor, anchor_bits, axis, spec.group_size, spec.symmetric)
                anchor_hat = dequantize_layer(stored).float()
            delta = x.index_select(1, lay.others).float() - anchor_hat.index_select(1, lay.owner)
            a_out.append(stored)
            d_out.append(quantize(delta.contiguous(), bits, axis, spec.group_size, spec.symmetric))
    return DeltaCache(
        anchors=QuantizedCache(a_keys, a_values, kv.positions.index_select(0, lay.anchors)),
        deltas=QuantizedCache(d_keys, d_values, kv.positions.index_select(0, lay.others)),
        group=group,
        original_seq_len=kv.next_position,
    )


def _orig_dtype(t: LayerTensor) -> torch.dtype:
    return DTYPES[t.dtype] if isinstance(t, QuantizedTensor) else t.dtype


def delta_decode(dc: DeltaCache) -> KVCache:
    """Rebuild the cache: dequantize anchors and deltas, add each delta to its anchor, restore the token order.

    Raw (16-bit) anchors come back bit-exact; every other token is anchor + dequantized delta, rounded once to
    the original dtype.
    """
    merged, lay = _check_delta(dc)
    seq = merged.numel()
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    for layer in range(dc.num_layers):
        for a_t, d_t, out in (
            (dc.anchors.keys[layer], dc.deltas.keys[layer], keys),
            (dc.anchors.values[layer], dc.deltas.values[layer], values),
        ):
            dtype = _orig_dtype(a_t)
            anchor = dequantize_layer(a_t)
            heads, _, dim = anchor.shape
            x = torch.empty((heads, seq, dim), dtype=dtype, device=anchor.device)
            x[:, lay.anchors] = anchor.to(dtype)
            delta = dequantize_layer(d_t).float()
            x[:, lay.others] = (delta + anchor.float().index_select(1, lay.owner)).to(dtype)
            out.append(x)
    return KVCache(keys=keys, values=values, positions=merged.clone())


# ----------------------------------------------------------------------------------------------------------------
# variance statistics (what the study reported as the reason to use deltas)
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class VarianceRow:
    """One layer's K or V: variance of raw values vs of the non-anchor deltas."""

    layer: int
    kind: str  # "k" or "v"
    raw_var: float  # variance of every element of the [heads, seq, dim] tensor (the study's statistic)
    channel_var: float  # mean over (head, channel) of the variance across tokens: what a per-channel quantizer sees
    delta_var: float  # variance of every element of the non-anchor deltas

    @property
    def reduction(self) -> float:
        """raw_var / delta_var, the study's "variance reduction"."""
        return self.raw_var / self.delta_var if self.delta_var > 0 else math.inf

    @property
    def channel_reduction(self) -> float:
        """channel_var / delta_var: the reduction left once per-channel means are removed."""
        return self.channel_var / self.delta_var if self.delta_var > 0 else math.inf


@dataclass
class VarianceReport:
    group: int
    rows: list[VarianceRow] = field(default_factory=list)

    def _of(self, kind: str, attr: str) -> list[float]:
        return [getattr(r, attr) for r in self.rows if r.kind == kind]

    def summary(self) -> dict[str, float]:
        """Mean and max over layers of both ratios, for keys and for values (mean of ratios, as the study)."""
        out: dict[str, float] = {"group": float(self.group)}
        for kind, name in (("k", "keys"), ("v", "values")):
            for attr in ("reduction", "channel_reduction"):
                vals = self._of(kind, attr)
                out[f"{name}_{attr}_mean"] = sum(vals) / len(vals)
                out[f"{name}_{attr}_max"] = max(vals)
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "group": self.group,
            "summary": self.summary(),
            "layers": [
                {
                    "layer": r.layer,
                    "kind": r.kind,
                    "raw_var": r.raw_var,
                    "channel_var": r.channel_var,
                    "delta_var": r.delta_var,
                    "reduction": r.reduction,
                    "channel_reduction": r.channel_reduction,
                }
                for r in self.rows
            ],
        }


def variance_reduction(kv: KVCache, group: int = DEFAULT_GROUP) -> VarianceReport:
    """Per layer, for K and V: variance of the raw tensor, of its per-channel-centred values, and of the deltas.

    Exact deltas (no quantization), anchors excluded, unbiased variances in float64 — the study's definition.
    """
    _check_group(group)
    if kv.seq_len < 2:
        raise ValueError("variance_reduction needs at least 2 tokens")
    lay = _layout(kv.seq_len, group)
    report = VarianceReport(group=group)
    for layer in range(kv.num_layers):
        for kind, x in (("k", kv.keys[layer]), ("v", kv.values[layer])):
            xd = x.double()
            anchor = xd.index_select(1, lay.anchors)
            delta = xd.index_select(1, lay.others) - anchor.index_select(1, lay.owner)
            report.rows.append(
                VarianceRow(
                    layer=layer,
                    kind=kind,
                    raw_var=float(xd.var()),
                    channel_var=float(xd.var(dim=1).mean()),
                    delta_var=float(delta.var()) if delta.numel() > 1 else 0.0,
                )
            )
    return report


# ----------------------------------------------------------------------------------------------------------------
# the delta frame: two scout-kv blobs
# ----------------------------------------------------------------------------------------------------------------
def encode_delta_blob(
    dc: DeltaCache,
    *,
    model_fingerprint: str,
    meta: Mapping[str, str] | None = None,
) -> bytes:
    """Serialize a DeltaCache: magic, u64 length of the anchors blob, the anchors blob, the deltas blob.

    Both parts are scout-kv blobs (checksummed, fingerprinted); their user metadata records the part and the
    group length, under keys starting with "delta." (reserved).
    """
    user = dict(meta or {})
    if any(k.startswith(_META_PREFIX) for k in user):
        raise ValueError(f"meta keys starting with {_META_PREFIX!r} are reserved")
    parts = []
    for part, cache in (("anchors", dc.anchors), ("deltas", dc.deltas)):
        tags = {**user, f"{_META_PREFIX}part": part, f"{_META_PREFIX}group": str(dc.group)}
        parts.append(
            encode_blob(cache, model_fingerprint=model_fingerprint, meta=tags, original_seq_len=dc.original_seq_len)
        )
    return b"".join((DELTA_MAGIC, struct.pack("<Q", len(parts[0])), parts[0], parts[1]))


def decode_delta_blob(
    data: bytes | bytearray | memoryview,
    *,
    expected_fingerprint: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> DeltaCache:
    """Validate and decode a delta frame; every failure is a BlobError (the wire format's error type).

    Each part passes the wire format's full validation; then the frame's own fields are checked before anything
    is sized from them: the group length is a strict decimal in [2, MAX_SEQ] (a group of 2**64 behind a valid
    checksum was an OverflowError, issue 22), and keys *and* values of both parts must agree on heads and head
    dims (values were not compared, so a frame with another value head_dim was accepted and crashed in decode).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BlobError(f"a delta frame must be bytes-like, got {type(data).__name__}")
    try:
        view = memoryview(data).cast("B")
    except TypeError as e:  # a non-contiguous or multi-dimensional buffer
        raise BlobError(f"a delta frame must be a contiguous byte buffer: {e}") from None
    if view.nbytes > max_bytes:
        raise BlobError(f"delta frame of {view.nbytes} bytes exceeds the limit of {max_bytes}")
    head = len(DELTA_MAGIC) + 8
    if view.nbytes < head or bytes(view[: len(DELTA_MAGIC)]) != DELTA_MAGIC:
        raise BlobError("not a scout delta frame (bad magic)")
    (n_anchor,) = struct.unpack_from("<Q", view, len(DELTA_MAGIC))
    if n_anchor > view.nbytes - head:
        raise BlobError(f"anchor blob length {n_anchor} exceeds the frame")
    anchors = decode_blob(view[head : head + n_anchor], expected_fingerprint=expected_fingerprint, max_bytes=max_bytes)
    deltas = decode_blob(view[head + n_anchor :], expected_fingerprint=expected_fingerprint, max_bytes=max_bytes)
    if anchors.model_fingerprint != deltas.model_fingerprint:
        raise BlobError("delta frame: the two parts name different models")
    if anchors.meta.get(f"{_META_PREFIX}part") != "anchors" or deltas.meta.get(f"{_META_PREFIX}part") != "deltas":
        raise BlobError("delta frame: parts are not (anchors, deltas)")
    group_text = anchors.meta.get(f"{_META_PREFIX}group", "")
    if group_text != deltas.meta.get(f"{_META_PREFIX}group") or not _GROUP_RE.fullmatch(group_text):
        raise BlobError("delta frame: missing or inconsistent group length")
    if int(group_text) > MAX_SEQ:
        raise BlobError(f"delta frame: group length {group_text} exceeds {MAX_SEQ}")
    if anchors.orig_seq_len != deltas.orig_seq_len:
        raise BlobError("delta frame: parts disagree on the original sequence length")
    try:
        dc = DeltaCache(anchors.cache, deltas.cache, int(group_text), anchors.orig_seq_len)
        _check_group(dc.group)
        if any(layer_bits(t) == 16 for t in (*dc.deltas.keys, *dc.deltas.values)):
            raise ValueError("deltas must be quantized")
        _check_delta(dc)
    except ValueError as e:
        raise BlobError(f"delta frame: {e}") from None
    return dc


def _check_delta(dc: DeltaCache) -> tuple[torch.Tensor, _Layout]:
    """Structural checks of a DeltaCache; returns the merged (sorted) positions and the group layout.

    The anchors must sit at cache indices 0, group, 2*group, … of the merged order: the layout they were cut with.
    """
    _check_group(dc.group)
    na, nd = dc.anchors.seq_len, dc.deltas.seq_len
    seq = na + nd
    if dc.anchors.num_layers != dc.deltas.num_layers:
        raise ValueError("anchors and deltas have different layer counts")
    if na != -(-seq // dc.group):
        raise ValueError(f"{na} anchors cannot start the groups of {seq} tokens at group {dc.group}")
    positions = torch.cat([dc.anchors.positions, dc.deltas.positions])
    order = torch.argsort(positions)
    merged = positions[order]
    if seq > 1 and not bool((merged[1:] > merged[:-1]).all()):
        raise ValueError("positions repeat between anchors and deltas")
    rank = torch.empty(seq, dtype=torch.long)
    rank[order] = torch.arange(seq)
    lay = _layout(seq, dc.group)
    if not torch.equal(rank[:na], lay.anchors) or not torch.equal(rank[na:], lay.others):
        raise ValueError("anchor positions do not match the group layout")
    parts = zip(dc.anchors.keys, dc.deltas.keys, dc.anchors.values, dc.deltas.values, strict=True)
    for i, (ak, dk, av, dv) in enumerate(parts):
        for kind, a_t, d_t in (("key", ak, dk), ("value", av, dv)):
            a_shape, d_shape = _shape(a_t), _shape(d_t)
            if a_shape[0] != d_shape[0] or a_shape[2] != d_shape[2]:
                raise ValueError(f"layer {i}: anchor and delta {kind}s disagree on heads or head_dim")
    return merged, lay


def _shape(t: LayerTensor) -> tuple[int, ...]:
    return t.shape if isinstance(t, QuantizedTensor) else tuple(t.shape)


# ----------------------------------------------------------------------------------------------------------------
# the codec
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeltaCodec(Codec):
    """``delta-int<b>[-token|-study][:group=G]``: raw anchors every `group` tokens, the other tokens' deltas from
    their anchor quantized at `bits` on `axes` (the same quantizer as ``int<b>``, so the two compare only the
    encoding)."""

    family: ClassVar[str] = "delta"
    bits: int
    axes: str = "kivi"
    group: int = DEFAULT_GROUP

    def __post_init__(self) -> None:
        if self.bits not in QUANT_BITS:
            raise CodecSpecError(f"delta codecs take {sorted(QUANT_BITS)} bits, got {self.bits!r}")
        check_axes(self.axes)
        try:
            _check_group(self.group)
        except ValueError as e:
            raise CodecSpecError(str(e)) from None

    @property
    def spec(self) -> str:
        group = f":group={self.group}" if self.group != DEFAULT_GROUP else ""
        return f"delta-int{self.bits}{AXES[self.axes]}{group}"

    def quant_spec(self, head_dim: int) -> QuantSpec:
        return quant_spec(self.bits, self.axes, head_dim)

    def encode(self, kv: KVCache) -> DeltaCache:
        return delta_encode(kv, group=self.group, bits=self.bits, spec=self.quant_spec(head_dim_of(kv)))

    def decode(self, payload: DeltaCache) -> KVCache:  # type: ignore[override]
        return delta_decode(payload)

    def _write_blob(self, payload: Payload, fingerprint: str, meta: dict[str, str], orig: int | None) -> bytes:
        if not isinstance(payload, DeltaCache):
            raise TypeError(f"a delta codec sends a DeltaCache, got {type(payload).__name__}")
        dc = payload if orig is None else replace(payload, original_seq_len=orig)
        return encode_delta_blob(dc, model_fingerprint=fingerprint, meta=meta)

    def _read_blob(self, data: bytes | bytearray | memoryview, fingerprint: str | None, max_bytes: int) -> DeltaCache:
        return decode_delta_blob(data, expected_fingerprint=fingerprint, max_bytes=max_bytes)

    def size_bytes(self, geometry: Geometry, seq: int) -> int:
        anchors = -(-seq // self.group)
        spec = self.quant_spec(geometry.head_dim)
        return plan_bytes(geometry, anchors, 16, spec) + plan_bytes(geometry, seq - anchors, self.bits, spec)
