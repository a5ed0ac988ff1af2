"""Lossless entropy coding of a blob (the ``<codec>+zstd`` codecs) and the ideal entropy-coded size of its codes.

Why both: CacheGen's claim is that KV codes compress well under an entropy coder that models each channel. The
zstd layer is what Scout can actually send (`compress_blob` / `decompress_blob`: one frame around any blob,
lossless, checked against decompression bombs), and `code_entropy` is the bound an ideal arithmetic/ANS coder
with per-tensor or per-channel order-0 models would reach (side tables excluded), so a report can say how much
of that bound zstd captures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from scout.codec.base import Codec, CodecSpecError, Geometry, Payload
from scout.codec.delta import DeltaCache
from scout.codec.quant import QuantizedCache, QuantizedTensor, unpack_codes
from scout.codec.wire import DEFAULT_MAX_BYTES, BlobError
from scout.kvcache import KVCache

ZSTD_LEVEL = 3
_FEED = 1024
MAX_ZSTD_LEVEL = 22


def compress_blob(blob: bytes | bytearray | memoryview, level: int = ZSTD_LEVEL) -> bytes:
    """One zstd frame holding `blob`, with its content size (the decoder checks it before allocating)."""
    import zstandard

    return zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True).compress(bytes(blob))


def decompress_blob(data: bytes | bytearray | memoryview, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Inverse of `compress_blob`. Refuses frames without a declared size, larger than `max_bytes`, or with
    trailing bytes (BlobError), so a small hostile frame cannot make the decoder allocate gigabytes."""
    import zstandard

    if not isinstance(data, bytes | bytearray | memoryview):
        raise BlobError(f"a zstd frame must be bytes-like, got {type(data).__name__}")
    raw = bytes(data)
    try:
        size = zstandard.frame_content_size(raw)
    except zstandard.ZstdError as e:
        raise BlobError(f"not a zstd frame: {e}") from None
    if size < 0:
        raise BlobError("zstd frame does not declare its content size")
    if size > max_bytes:
        raise BlobError(f"zstd frame declares {size} bytes, over the limit of {max_bytes}")
    # Streamed in small input slices, so memory follows the bytes the frame really produces: a one-shot
    # decompress allocates the *declared* size up front, so a 20-byte frame declaring 500 MB cost 500 MB (found by
    # the issue 22 fuzzer). A slice of _FEED bytes expands to at most ~_FEED/4 blocks of 128 KiB.
    dobj = zstandard.ZstdDecompressor().decompressobj()
    chunks: list[bytes] = []
    total = 0
    try:
        for start in range(0, len(raw), _FEED):
            if dobj.eof:
                raise BlobError("trailing bytes after the zstd frame")
            piece = dobj.decompress(raw[start : start + _FEED])
            total += len(piece)
            if total > size:
                raise BlobError(f"zstd frame holds more than the {size} bytes it declares")
            chunks.append(piece)
    except zstandard.ZstdError as e:
        raise BlobError(f"corrupt zstd frame: {e}") from None
    if not dobj.eof or dobj.unused_data or total != size:
        raise BlobError("zstd frame is truncated, has trailing bytes, or does not hold its declared size")
    return b"".join(chunks)


@dataclass
class EntropyReport:
    """Sizes of a quantized cache's payload under ideal order-0 entropy coding of its code symbols.

    side_bytes (fp16 scales and zero points, raw 16-bit tensors) are counted as stored; only the codes are
    entropy-coded. `per_tensor`: one symbol model per K/V tensor of a layer; `per_channel`: one model per
    (head, channel) of each tensor, as CacheGen's coder groups its symbols. Model tables are not counted.
    """

    code_bytes: int
    side_bytes: int
    per_tensor_bytes: int
    per_channel_bytes: int
    symbols: int

    @property
    def payload_bytes(self) -> int:
        return self.code_bytes + self.side_bytes

    def to_json(self) -> dict[str, int | float]:
        return {
            "payload_bytes": self.payload_bytes,
            "code_bytes": self.code_bytes,
            "side_bytes": self.side_bytes,
            "entropy_per_tensor_bytes": self.per_tensor_bytes,
            "entropy_per_channel_bytes": self.per_channel_bytes,
            "symbols": self.symbols,
            "bits_per_symbol_per_tensor": 8 * (self.per_tensor_bytes - self.side_bytes) / max(self.symbols, 1),
            "bits_per_symbol_per_channel": 8 * (self.per_channel_bytes - self.side_bytes) / max(self.symbols, 1),
        }


def _entropy_bits(counts: torch.Tensor) -> torch.Tensor:
    """Sum over rows of n_row * H(row) in bits, for a [rows, symbols] count matrix."""
    counts = counts.double()
    n = counts.sum(-1, keepdim=True)
    p = torch.where(counts > 0, counts / n.clamp_min(1), 1.0)
    return -(counts * torch.log2(p)).sum()


def _tensor_entropy(q: QuantizedTensor) -> tuple[float, float]:
    heads, seq, dim = q.shape
    levels = 1 << q.bits
    codes = unpack_codes(q.codes, q.bits, heads * seq * dim).view(heads, seq, dim).long()
    whole = torch.bincount(codes.reshape(-1), minlength=levels).unsqueeze(0)
    channel_id = (torch.arange(heads).view(heads, 1, 1) * dim + torch.arange(dim).view(1, 1, dim)).expand_as(codes)
    per_channel = torch.bincount((channel_id * levels + codes).reshape(-1), minlength=heads * dim * levels)
    return float(_entropy_bits(whole)), float(_entropy_bits(per_channel.view(heads * dim, levels)))


def code_entropy(cache: QuantizedCache | DeltaCache) -> EntropyReport:
    """Order-0 entropy of the code symbols of every quantized tensor (see EntropyReport)."""
    caches = [cache.anchors, cache.deltas] if isinstance(cache, DeltaCache) else [cache]
    code = side = symbols = 0
    bits_tensor = bits_channel = 0.0
    for qc in caches:
        for t in (*qc.keys, *qc.values):
            if isinstance(t, QuantizedTensor):
                code += t.codes.numel()
                side += t.nbytes() - t.codes.numel()
                symbols += math.prod(t.shape)
                bt, bc = _tensor_entropy(t)
                bits_tensor += math.ceil(bt / 8) * 8
                bits_channel += math.ceil(bc / 8) * 8
            else:
                side += t.numel() * t.element_size()
    return EntropyReport(
        code_bytes=code,
        side_bytes=side,
        per_tensor_bytes=side + int(bits_tensor // 8),
        per_channel_bytes=side + int(bits_channel // 8),
        symbols=symbols,
    )


@dataclass(frozen=True)
class ZstdCodec(Codec):
    """``<codec>+zstd[<level>]``: `inner`'s blob inside one zstd frame; payload, reconstruction and quality are
    `inner`'s, only the bytes on the wire change (by an amount that depends on the data, hence no size estimate)."""

    family: ClassVar[str] = "zstd"
    inner: Codec
    level: int = ZSTD_LEVEL

    def __post_init__(self) -> None:
        if isinstance(self.inner, ZstdCodec) or not isinstance(self.inner, Codec):
            raise CodecSpecError("zstd wraps one codec that is not itself zstd")
        if isinstance(self.level, bool) or not isinstance(self.level, int) or not 1 <= self.level <= MAX_ZSTD_LEVEL:
            raise CodecSpecError(f"zstd level must be in [1, {MAX_ZSTD_LEVEL}], got {self.level!r}")

    @property
    def spec(self) -> str:
        return f"{self.inner.spec}+zstd" + (str(self.level) if self.level != ZSTD_LEVEL else "")

    def encode(self, kv: KVCache) -> Payload:
        return self.inner.encode(kv)

    def decode(self, payload: Payload) -> KVCache:
        return self.inner.decode(payload)

    def nbytes(self, payload: Payload) -> int:
        return self.inner.nbytes(payload)

    def check_model(self, fingerprint: str) -> None:
        self.inner.check_model(fingerprint)

    def _write_blob(self, payload: Payload, fingerprint: str, meta: dict[str, str], orig: int | None) -> bytes:
        inner = self.inner.to_blob(payload, model_fingerprint=fingerprint, meta=meta, original_seq_len=orig)
        return compress_blob(inner, self.level)

    def _read_blob(self, data: bytes | bytearray | memoryview, fingerprint: str | None, max_bytes: int) -> Payload:
        raw = decompress_blob(data, max_bytes=max_bytes)
        return self.inner.from_blob(raw, expected_fingerprint=fingerprint, max_bytes=max_bytes)

    def size_bytes(self, geometry: Geometry, seq: int) -> None:
        return None
