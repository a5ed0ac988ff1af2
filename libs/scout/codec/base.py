"""The codec interface: one small frozen dataclass per codec, named by a spec string, registered by family.

Why this shape (the selectors in `scout.selection` are the model): every way of putting a KV cache on the uplink
(bf16, INT8/4/2 with KIVI or the study's axes, layer maps, calibrated plans, CacheGen-style deltas, a zstd layer)
answers the same five questions, so callers (the pipeline's bit plans, the eval's codec conditions, the codec
benchmark) never branch on which codec they hold:

* `encode(kv)` -> the codec's payload (a `QuantizedCache`, or a `DeltaCache` for delta codecs), `decode(payload)`
  -> a `KVCache` with the original positions;
* `to_blob(payload, ...)` / `from_blob(data, ...)`: the checked bytes that cross the uplink (the scout-kv wire
  format, a delta frame, or a zstd frame around either);
* `nbytes(payload)`: the payload bytes (codes, scales, zero points, raw layers; positions and header excluded),
  the quantity the study's size columns compare;
* `size_bytes(geometry, seq)`: the same number predicted from the KV geometry alone (None where it depends on the
  data, as for entropy coding), because the transport policy sizes operating points from that arithmetic;
* `spec`: the canonical spec string, with ``get_codec(c.spec) == c`` (`scout.codec.registry` is the one parser).

A codec calibrated for one model (a plan file) refuses another in `check_model`; the others accept any model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol

from scout.codec.quant import BitPlan, QuantizedCache, QuantSpec, dequantize_cache, estimate_bytes, study_spec
from scout.codec.wire import DEFAULT_MAX_BYTES, decode_blob, encode_blob
from scout.kvcache import KVCache

AXES: dict[str, str] = {"kivi": "", "token": "-token", "study": "-study"}
"""Quantizer axes a codec may use, and the suffix that names them in a spec (KIVI is the unsuffixed default)."""


class CodecSpecError(ValueError):
    """A codec spec string that names no codec (or a codec that cannot serve the purpose it was asked for)."""


class Payload(Protocol):
    """What `encode` returns and `decode` takes: a `QuantizedCache`, or a `DeltaCache` for delta codecs.

    A protocol rather than a union, so this module does not import the codec families that define payloads."""

    def nbytes(self) -> int: ...


class Geometry(Protocol):
    """The KV shape that payload sizes depend on (`scout.policy.operating_points.KVGeometry` is one)."""

    num_layers: int
    kv_heads: int
    head_dim: int
    v_head_dim: int | None
    raw_itemsize: int


@dataclass(frozen=True)
class CacheGeometry:
    """A `Geometry` read off a cache (or written by hand): layers, KV heads, head dims, raw element size."""

    num_layers: int
    kv_heads: int
    head_dim: int
    v_head_dim: int | None = None
    raw_itemsize: int = 2

    @classmethod
    def of(cls, kv: KVCache) -> CacheGeometry:
        k, v = kv.keys[0], kv.values[0]
        v_dim = int(v.shape[-1])
        return cls(
            num_layers=kv.num_layers,
            kv_heads=int(k.shape[0]),
            head_dim=int(k.shape[-1]),
            v_head_dim=None if v_dim == int(k.shape[-1]) else v_dim,
            raw_itemsize=k.element_size(),
        )


def quant_spec(bits: int, axes: str, head_dim: int) -> QuantSpec:
    """The quantizer of a spec's axes: KIVI (keys per channel, values per token, groups of 32, asymmetric), per-token
    keys too, or the study's per-token symmetric absmax over the head dim (which is why head_dim is needed)."""
    if axes == "study":
        return study_spec(bits, head_dim)
    return QuantSpec(bits, axis_k="token" if axes == "token" else "channel")


def plan_bytes(geometry: Geometry, seq: int, plan: BitPlan | int, spec: QuantSpec | None = None) -> int:
    """`estimate_bytes` for a geometry: the exact payload of a cache of `seq` tokens quantized at (plan, spec)."""
    g = geometry
    return estimate_bytes(
        g.num_layers, g.kv_heads, seq, g.head_dim, plan, spec, raw_itemsize=g.raw_itemsize, v_head_dim=g.v_head_dim
    )


def check_axes(axes: str) -> None:
    if axes not in AXES:
        raise CodecSpecError(f"axes must be one of {sorted(AXES)}, got {axes!r}")


class Codec(ABC):
    """Base class: subclasses are frozen dataclasses with a `family`, a `spec`, `encode` and `size_bytes`.

    The defaults here serve every codec whose payload is a `QuantizedCache` carried in one scout-kv blob.
    """

    family: ClassVar[str]

    @property
    @abstractmethod
    def spec(self) -> str:
        """The canonical spec string: `get_codec(self.spec) == self`."""

    @abstractmethod
    def encode(self, kv: KVCache) -> Payload:
        """The payload of `kv` (positions kept as they are: a pruned cache stays pruned)."""

    @abstractmethod
    def size_bytes(self, geometry: Geometry, seq: int) -> int | None:
        """`nbytes(encode(kv))` for any cache of this geometry and `seq` tokens, or None if it depends on the data."""

    def decode(self, payload: Payload) -> KVCache:
        """The cache the payload stands for (16-bit layers come back bit-exact)."""
        if not isinstance(payload, QuantizedCache):
            raise TypeError(f"{type(self).__name__} decodes a QuantizedCache, got {type(payload).__name__}")
        return dequantize_cache(payload)

    def nbytes(self, payload: Payload) -> int:
        """Payload bytes: codes, scales, zero points and raw layers; positions and the blob header excluded."""
        return payload.nbytes()

    def to_blob(
        self,
        payload: Payload,
        *,
        model_fingerprint: str,
        meta: Mapping[str, str] | None = None,
        original_seq_len: int | None = None,
    ) -> bytes:
        """The checked bytes that cross the uplink (see `scout.codec.wire`); `original_seq_len` is the length of
        the sequence the payload's positions index into (default: one past the largest)."""
        return self._write_blob(payload, model_fingerprint, dict(meta or {}), original_seq_len)

    def from_blob(
        self,
        data: bytes | bytearray | memoryview,
        *,
        expected_fingerprint: str | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> Payload:
        """Validate and parse `to_blob`'s bytes; every failure is a `scout.codec.wire.BlobError`."""
        return self._read_blob(data, expected_fingerprint, max_bytes)

    def _write_blob(self, payload: Payload, fingerprint: str, meta: dict[str, str], orig: int | None) -> bytes:
        """`to_blob` for this codec's payload: one scout-kv blob unless a family frames it otherwise."""
        if not isinstance(payload, QuantizedCache):
            raise TypeError(f"{type(self).__name__} sends a QuantizedCache, got {type(payload).__name__}")
        return encode_blob(payload, model_fingerprint=fingerprint, meta=meta, original_seq_len=orig)

    def _read_blob(self, data: bytes | bytearray | memoryview, fingerprint: str | None, max_bytes: int) -> Payload:
        """`from_blob` for this codec's framing."""
        return decode_blob(data, expected_fingerprint=fingerprint, max_bytes=max_bytes).cache

    def check_model(self, fingerprint: str) -> None:
        """Raise if this codec was made for another model (a calibrated plan); most codecs fit every model."""
        del fingerprint

    def round_trip(self, kv: KVCache) -> tuple[KVCache, int]:
        """`(decode(encode(kv)), nbytes)`: the reconstruction a receiver sees and what it cost, without the wire."""
        payload = self.encode(kv)
        return self.decode(payload), self.nbytes(payload)


def head_dim_of(kv: KVCache) -> int:
    """The key head dim, which sizes the study quantizer's groups."""
    return int(kv.keys[0].shape[-1])
