"""The one blob format for every KV mode (bf16, INT8/4/2, mixed, selected positions): "scout-kv", v2 (v1 read).

Container: safetensors (8-byte little-endian header length N, N bytes of JSON header, then the raw
little-endian tensor payload). It executes no code on load, every Hugging Face tool can open it, and its
`__metadata__` map (string -> string) carries Scout's own fields:

    format        "scout-kv"
    version       "2" (this writer); "1" is still read
    model         fingerprint of the model the cache was computed with (decoding elsewhere is an error)
    num_layers    layer count
    seq_len       number of cached (kept) tokens
    orig_seq_len  length of the original sequence the kept positions index into
    layers        JSON list, one entry per layer: {"bits": b, "k": T, "v": T} with
                  T = {"shape": [h, s, d], "dtype": "bfloat16"|"float16"|"float32"} for bits 16, and
                  additionally {"axis": "token"|"channel", "group": G, "sym": bool} for bits 2/4/8
    user          JSON object of caller metadata (string -> string)
    xxh3_chunk    chunk size in bytes, 1 MiB by default (v2)
    xxh3_chunks   hex XXH3-128 of each consecutive chunk of the payload, concatenated (v2)
    xxh3_header   hex XXH3-128 of the canonical JSON of the whole header without this field (v2)
    sha256        v1 only, instead of the two above: hex SHA-256 of (canonical header without it) + (payload)

Tensors: `k.{l}.codes` (U8, packed), `k.{l}.scale` (F16), `k.{l}.zero` (F16, asymmetric only), likewise
`v.{l}.*`; `k.{l}.raw` / `v.{l}.raw` (BF16/F16/F32) for 16-bit layers; `positions` (I32, the original
position id of each cached token: the cache may be pruned).

Why XXH3 (version 2) rather than SHA-256 (version 1): the checksum guards integrity against corruption, not
authenticity (that is TLS and the bus/store credentials: whoever can rewrite a blob can rewrite its SHA-256 too).
SHA-256 runs at about 0.6 GB/s on one core and capped encoding there; XXH3-128 runs at memory speed. Each
chunk of the payload has its own digest, so a flipped bit anywhere is caught and the error names the byte range
and the tensors in it; see `scout.codec.checksum`.

Why a checksum covers the header too: over the payload alone, a flipped bit in the header (a bit width,
an axis, the position count, the fingerprint, a chunk digest) would decode silently into a different cache.
The header is hashed in a canonical form (sorted keys, no whitespace), so the check does not depend on how a
writer formatted its JSON.

Decoding trusts nothing: the size limit is checked before parsing, the header length before reading the
header, then the JSON's exact shape (no duplicate keys, no floats, no NaN), the magic and version, every
tensor's dtype, shape and byte range against the metadata *and* the buffer length, then the checksums; only
then is any tensor made, and positions and scales are validated after. Tensors are views made with
`torch.frombuffer` at the validated offsets rather than `safetensors.torch.load`: one parser (ours) decides
what is accepted, every failure is a `BlobError` instead of a library-specific exception, and nothing is copied
per tensor. A writable buffer (bytearray, writable memoryview) is viewed in place, so the decoded tensors alias
it (the caller hands the buffer over); a read-only one (bytes) is copied once, whole, so no tensor can write
into an immutable object. A tensor whose offset is not aligned to its element size, or any tensor on a
big-endian host, is copied instead. The blob stays a valid safetensors file (the tests open it with
safetensors itself).
"""

from __future__ import annotations

import json
import math
import re
import struct
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from scout.codec import checksum
from scout.codec.quant import (
    DTYPES,
    MAX_GROUP_SIZE,
    LayerTensor,
    QuantizedCache,
    QuantizedTensor,
    dequantize_cache,
    packed_len,
    quantize_cache,
    scale_shape,
)
from scout.kvcache import KVCache

FORMAT = "scout-kv"
VERSION = 2
"""The version this writer produces."""
READ_VERSIONS = (1, 2)
"""The versions this reader accepts: v1 (SHA-256) blobs from older writers still decode."""
MAX_HEADER_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
MAX_LAYERS = 4096
MAX_HEADS_OR_DIM = 1 << 16
MAX_SEQ = (1 << 31) - 1
"""Positions travel as int32, so no sequence may be longer than this."""

_COMMON_KEYS = frozenset({"format", "version", "model", "num_layers", "seq_len", "orig_seq_len", "layers", "user"})
_META_KEYS = {
    1: _COMMON_KEYS | {checksum.SHA_KEY},
    2: _COMMON_KEYS | {checksum.HEADER_KEY, checksum.CHUNK_KEY, checksum.CHUNKS_KEY},
}
# safetensors dtype -> (torch dtype, little-endian numpy dtype of the same width holding the bits)
_ST_TYPES: dict[str, tuple[torch.dtype, str]] = {
    "BF16": (torch.bfloat16, "<i2"),
    "F16": (torch.float16, "<f2"),
    "F32": (torch.float32, "<f4"),
    "U8": (torch.uint8, "u1"),
    "I32": (torch.int32, "<i4"),
}
_ST_OF_TORCH: dict[torch.dtype, str] = {v[0]: k for k, v in _ST_TYPES.items()}
_INT_RE = re.compile(r"0|[1-9][0-9]{0,18}")


class BlobError(ValueError):
    """A blob is malformed, corrupt, too large, or not for this reader: all `decode_blob` ever raises."""


class BlobVersionError(BlobError):
    """The blob declares a format version this reader does not know."""

    def __init__(self, version: str) -> None:
        super().__init__(f"unsupported {FORMAT} version {version!r}; this reader knows versions {READ_VERSIONS}")
        self.version = version


class BlobChecksumError(BlobError):
    """A checksum (of the header, of a tensor, or v1's SHA-256) does not match: the blob was corrupted."""


class BlobFingerprintError(BlobError):
    """The blob was made with a different model than the caller expects."""


@dataclass
class DecodedBlob:
    """A decoded blob: the (possibly quantized) cache and Scout's metadata."""

    cache: QuantizedCache
    model_fingerprint: str
    version: int
    orig_seq_len: int
    meta: dict[str, str] = field(default_factory=dict)
    header_nbytes: int = 0
    payload_nbytes: int = 0

    @property
    def positions(self) -> torch.Tensor:
        return self.cache.positions

    def kvcache(self) -> KVCache:
        """The dequantized cache, ready for `KVCache.to_hf` (raw 16-bit layers come back bit-exact)."""
        return dequantize_cache(self.cache)


# --- encoding -----------------------------------------------------------------------------------------------
def _le_bytes(t: torch.Tensor) -> np.ndarray:
    """The tensor's elements as little-endian bytes (a uint8 view, no copy on little-endian hosts)."""
    st = _ST_OF_TORCH[t.dtype]
    _, np_le = _ST_TYPES[st]
    bits_view = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        bits_view = bits_view.view(torch.int16)
    arr = bits_view.numpy().reshape(-1)
    return arr.astype(np.dtype(np_le), copy=False).view(np.uint8)


def _tensor_info(t: LayerTensor) -> dict[str, Any]:
    if isinstance(t, QuantizedTensor):
        return {
            "shape": list(t.shape),
            "dtype": t.dtype,
            "axis": t.axis,
            "group": t.group_size,
            "sym": t.symmetric,
        }
    name = next((n for n, d in DTYPES.items() if d == t.dtype), None)
    if name is None:
        raise ValueError(f"encode_blob: raw layers must be one of {sorted(DTYPES)}, got {t.dtype}")
    return {"shape": list(t.shape), "dtype": name}


def _layer_tensors(prefix: str, t: LayerTensor) -> list[tuple[str, torch.Tensor]]:
    if isinstance(t, QuantizedTensor):
        parts = [(f"{prefix}.codes", t.codes), (f"{prefix}.scale", t.scale)]
        if t.zero is not None:
            parts.append((f"{prefix}.zero", t.zero))
        return parts
    return [(f"{prefix}.raw", t)]


def encode_blob(
    cache: QuantizedCache | KVCache,
    *,
    model_fingerprint: str,
    meta: Mapping[str, str] | None = None,
    original_seq_len: int | None = None,
    chunk_bytes: int = checksum.DEFAULT_CHUNK_BYTES,
) -> bytes:
    """Serialize a cache (a KVCache is sent as is, every layer at 16 bits) into one scout-kv blob.

    `original_seq_len` is the length of the sequence the positions index into (default: one past the largest
    position); `chunk_bytes` the span of each payload checksum. Everything `decode_blob` would refuse is refused
    here first, as ValueError.
    """
    if type(chunk_bytes) is not int or not checksum.MIN_CHUNK_BYTES <= chunk_bytes <= checksum.MAX_CHUNK_BYTES:
        raise ValueError(
            f"encode_blob: chunk_bytes must lie in [{checksum.MIN_CHUNK_BYTES}, {checksum.MAX_CHUNK_BYTES}]"
        )
    qc = quantize_cache(cache, 16) if isinstance(cache, KVCache) else cache
    if not isinstance(qc, QuantizedCache):
        raise TypeError(f"encode_blob: expected a QuantizedCache or KVCache, got {type(cache).__name__}")
    if not isinstance(model_fingerprint, str):
        raise ValueError("encode_blob: model_fingerprint must be a string")
    user = dict(meta or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in user.items()):
        raise ValueError("encode_blob: meta must map strings to strings")

    positions = qc.positions.detach().to("cpu", torch.int64)
    seq = int(positions.numel())
    orig = (int(positions.max()) + 1 if seq else 0) if original_seq_len is None else int(original_seq_len)
    _check_positions(positions, orig, ValueError)
    if qc.num_layers > MAX_LAYERS:
        raise ValueError(f"encode_blob: {qc.num_layers} layers exceed the format's limit of {MAX_LAYERS}")

    layers: list[dict[str, Any]] = []
    tensors: list[tuple[str, torch.Tensor]] = []
    for i, (k, v) in enumerate(zip(qc.keys, qc.values, strict=True)):
        bits = k.bits if isinstance(k, QuantizedTensor) else 16
        entry = {"bits": bits, "k": _tensor_info(k), "v": _tensor_info(v)}
        for t in (entry["k"], entry["v"]):
            if max(t["shape"][0], t["shape"][2]) > MAX_HEADS_OR_DIM:
                raise ValueError(f"encode_blob: layer {i} has a dimension beyond {MAX_HEADS_OR_DIM}")
        layers.append(entry)
        tensors += _layer_tensors(f"k.{i}", k) + _layer_tensors(f"v.{i}", v)
    tensors.append(("positions", positions.to(torch.int32)))

    arrays = [(name, t, _le_bytes(t)) for name, t in tensors]
    header: dict[str, Any] = {}
    offset = 0
    for name, t, arr in arrays:
        header[name] = {
            "dtype": _ST_OF_TORCH[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "model": model_fingerprint,
        "num_layers": str(qc.num_layers),
        "seq_len": str(seq),
        "orig_seq_len": str(orig),
        "layers": json.dumps(layers, separators=(",", ":")),
        "user": json.dumps(user, sort_keys=True, separators=(",", ":")),
    }
    header["__metadata__"] = metadata
    # Digests straight from the tensors' own memory, then one join that sizes the result once and copies each
    # tensor into it exactly once (no intermediate payload buffer; the result must be immutable `bytes`).
    checksum.seal_v2(header, (arr for _, _, arr in arrays), chunk_bytes)
    head = checksum.canonical(header)
    head += b" " * (-len(head) % 8)  # align the payload to 8 bytes, as safetensors writers do
    if len(head) > MAX_HEADER_BYTES:
        raise ValueError("encode_blob: header exceeds the format's 16 MiB limit (too many layers?)")
    return b"".join([struct.pack("<Q", len(head)), head, *(arr.data for _, _, arr in arrays)])


# --- decoding -----------------------------------------------------------------------------------------------
def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BlobError(f"duplicate JSON key {key!r} in header")
        out[key] = value
    return out


def _reject(token: str) -> Any:
    raise BlobError(f"non-integer number {token!r} in header")


def _strict_json(text: str | bytes, what: str) -> Any:
    """json.loads, strictly: UTF-8 only (json.loads would also sniff UTF-16/32, which safetensors rejects),
    no duplicate keys (another parser might keep the other one), integers only, no NaN/Infinity."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_float=_reject, parse_constant=_reject)
    except BlobError:
        raise
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, int-size limit, nesting
        raise BlobError(f"{what} is not valid JSON: {e}") from None


def _buffer(data: Any, max_bytes: int) -> memoryview:
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 8:
        raise BlobError(f"max_bytes must be an int >= 8, got {max_bytes!r}")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BlobError(f"blob must be bytes-like, got {type(data).__name__}")
    view = memoryview(data)
    if view.nbytes > max_bytes:
        raise BlobError(f"blob of {view.nbytes} bytes exceeds the limit of {max_bytes}")
    if view.ndim != 1 or view.itemsize != 1:
        if not view.c_contiguous:
            raise BlobError("blob must be a contiguous buffer")
        view = view.cast("B")
    if view.nbytes < 8:
        raise BlobError(f"blob of {view.nbytes} bytes is too short for a header")
    return view


def _read_header(view: memoryview) -> tuple[dict[str, Any], int]:
    (n,) = struct.unpack_from("<Q", view, 0)
    if n < 2 or n > min(view.nbytes - 8, MAX_HEADER_BYTES):
        raise BlobError(f"header length {n} is impossible for a blob of {view.nbytes} bytes")
    header = _strict_json(bytes(view[8 : 8 + n]), "header")
    if not isinstance(header, dict):
        raise BlobError("header is not a JSON object")
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise BlobError("header has no __metadata__ string map")
    return header, 8 + n


def peek_header(data: bytes | bytearray | memoryview, *, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """The parsed JSON header (tensor index and `__metadata__`), reading nothing past it; no checksum."""
    header, _ = _read_header(_buffer(data, max_bytes))
    return header


def _meta_int(text: str, what: str, lo: int = 0, hi: int = MAX_SEQ) -> int:
    """A strict decimal int from a metadata string (int() would also accept signs, spaces and underscores)."""
    if not _INT_RE.fullmatch(text):
        raise BlobError(f"{what} is not a decimal integer: {text[:40]!r}")
    return _json_int(int(text), what, lo, hi)


def _json_int(value: Any, what: str, lo: int = 0, hi: int = MAX_SEQ) -> int:
    """A JSON integer (not a bool, string or float) within [lo, hi]."""
    if type(value) is not int:
        raise BlobError(f"{what} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise BlobError(f"{what} = {value} outside [{lo}, {hi}]")
    return value


def _json_choice(value: Any, allowed: Collection[str], what: str) -> str:
    """A JSON string from a fixed set. The type is checked first: a list or object (unhashable) from a hostile
    header must be a BlobError, not the TypeError that a set or dict lookup would raise (issue 22)."""
    if not isinstance(value, str) or value not in allowed:
        raise BlobError(f"{what}: expected one of {sorted(allowed)}, got {str(value)[:40]!r}")
    return value


@dataclass(frozen=True)
class _TensorLayout:
    shape: tuple[int, int, int]
    dtype: str
    bits: int
    axis: str = ""
    group: int = 0
    sym: bool = False


def _parse_tensor_info(obj: Any, bits: int, seq: int, where: str) -> _TensorLayout:
    keys = {"shape", "dtype"} if bits == 16 else {"shape", "dtype", "axis", "group", "sym"}
    if not isinstance(obj, dict) or set(obj) != keys:
        raise BlobError(f"{where}: expected keys {sorted(keys)}")
    shape = obj["shape"]
    if not isinstance(shape, list) or len(shape) != 3:
        raise BlobError(f"{where}: shape must be a list of 3 ints")
    heads = _json_int(shape[0], f"{where} heads", 0, MAX_HEADS_OR_DIM)
    s = _json_int(shape[1], f"{where} seq", 0, MAX_SEQ)
    dim = _json_int(shape[2], f"{where} head_dim", 0, MAX_HEADS_OR_DIM)
    if s != seq:
        raise BlobError(f"{where}: seq {s} but {seq} cached tokens")
    dtype = _json_choice(obj["dtype"], DTYPES, f"{where} dtype")
    if bits == 16:
        return _TensorLayout((heads, s, dim), dtype, 16)
    axis = _json_choice(obj["axis"], ("token", "channel"), f"{where} axis")
    if not isinstance(obj["sym"], bool):
        raise BlobError(f"{where}: sym must be a boolean")
    group = _json_int(obj["group"], f"{where} group", 1, MAX_GROUP_SIZE)
    return _TensorLayout((heads, s, dim), dtype, bits, axis, group, obj["sym"])


def _expected_tensors(prefix: str, t: _TensorLayout) -> dict[str, tuple[str, tuple[int, ...]]]:
    if t.bits == 16:
        return {f"{prefix}.raw": (_ST_OF_TORCH[DTYPES[t.dtype]], t.shape)}
    groups = scale_shape(t.shape, t.axis, t.group)
    out = {
        f"{prefix}.codes": ("U8", (packed_len(math.prod(t.shape), t.bits),)),
        f"{prefix}.scale": ("F16", groups),
    }
    if not t.sym:
        out[f"{prefix}.zero"] = ("F16", groups)
    return out


def _check_positions(positions: torch.Tensor, orig: int, exc: type[ValueError]) -> None:
    if not 0 <= orig <= MAX_SEQ:
        raise exc(f"original sequence length {orig} outside [0, {MAX_SEQ}]")
    if positions.numel() > orig:
        raise exc(f"{positions.numel()} positions but an original sequence of {orig}")
    if positions.numel():
        if int(positions.min()) < 0 or int(positions.max()) >= orig:
            raise exc(f"positions must lie in [0, {orig})")
        if int(torch.unique(positions).numel()) != positions.numel():
            raise exc("positions must be unique")


def _view(buf: memoryview, start: int, address: int, st_dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The tensor at `start` as a view over `buf` (no copy), or a copy where a view is not possible: an empty
    tensor, an offset not aligned to the element size, or a big-endian host (the payload is little-endian)."""
    torch_dtype = _ST_TYPES[st_dtype][0]
    count = math.prod(shape)
    if count and sys.byteorder == "little" and (address + start) % torch_dtype.itemsize == 0:
        return torch.frombuffer(buf, dtype=torch_dtype, count=count, offset=start).reshape(shape)
    return _load(buf, start, st_dtype, shape)


def _load(view: memoryview, start: int, st_dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A copy of the tensor at `start`, in native byte order (the fallback of `_view`)."""
    torch_dtype, np_le = _ST_TYPES[st_dtype]
    count = math.prod(shape)
    le = np.dtype(np_le)
    arr = np.frombuffer(view, dtype=le, count=count, offset=start) if count else np.empty(0, dtype=le)
    native = arr.astype(le.newbyteorder("="))  # always a copy: writable, owned, native byte order
    t = torch.from_numpy(native)
    if torch_dtype == torch.bfloat16:
        t = t.view(torch.bfloat16)
    return t.reshape(shape)


def decode_blob(
    data: bytes | bytearray | memoryview,
    *,
    expected_fingerprint: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> DecodedBlob:
    """Validate and decode a scout-kv blob. Every failure is a BlobError (or one of its subclasses)."""
    view = _buffer(data, max_bytes)
    header, payload_start = _read_header(view)
    meta: dict[str, str] = header["__metadata__"]

    if meta.get("format") != FORMAT:
        raise BlobError(f"not a {FORMAT} blob (format {str(meta.get('format'))[:40]!r})")
    version_text = meta.get("version")
    version = next((v for v in READ_VERSIONS if version_text == str(v)), None)
    if version is None:
        raise BlobVersionError(str(version_text)[:40])
    if set(meta) != _META_KEYS[version]:
        raise BlobError(f"metadata keys {sorted(meta)[:20]} differ from the v{version} set")

    num_layers = _meta_int(meta["num_layers"], "num_layers", 1, MAX_LAYERS)
    seq = _meta_int(meta["seq_len"], "seq_len")
    orig = _meta_int(meta["orig_seq_len"], "orig_seq_len")
    if seq > orig:
        raise BlobError(f"seq_len {seq} exceeds orig_seq_len {orig}")
    layers_json = _strict_json(meta["layers"], "layers")
    if not isinstance(layers_json, list) or len(layers_json) != num_layers:
        raise BlobError(f"layers must be a JSON list of {num_layers} entries")
    user = _strict_json(meta["user"], "user")
    if not isinstance(user, dict) or not all(isinstance(v, str) for v in user.values()):
        raise BlobError("user metadata must be a JSON object of strings")
    claimed = _claimed_checksums(meta, version)

    layouts: list[tuple[_TensorLayout, _TensorLayout]] = []
    expected: dict[str, tuple[str, tuple[int, ...]]] = {}
    for i, entry in enumerate(layers_json):
        if not isinstance(entry, dict) or set(entry) != {"bits", "k", "v"}:
            raise BlobError(f"layer {i}: expected keys bits, k, v")
        bits = entry["bits"]
        if isinstance(bits, bool) or bits not in (2, 4, 8, 16):
            raise BlobError(f"layer {i}: bits must be 2, 4, 8 or 16, got {str(bits)[:20]}")
        k = _parse_tensor_info(entry["k"], bits, seq, f"layer {i} k")
        v = _parse_tensor_info(entry["v"], bits, seq, f"layer {i} v")
        if k.shape[0] != v.shape[0]:
            raise BlobError(f"layer {i}: key and value head counts differ")
        layouts.append((k, v))
        expected |= _expected_tensors(f"k.{i}", k) | _expected_tensors(f"v.{i}", v)
    expected["positions"] = ("I32", (seq,))

    # The tensor index must match the metadata exactly, and tile the payload without gaps or overlaps.
    index = {name: entry for name, entry in header.items() if name != "__metadata__"}
    if set(index) != set(expected):
        missing, extra = sorted(set(expected) - set(index)), sorted(set(index) - set(expected))
        raise BlobError(f"tensor index mismatch: missing {missing[:5]}, unexpected {extra[:5]}")
    payload_len = view.nbytes - payload_start
    spans: list[tuple[int, int, str]] = []
    for name, (st_dtype, shape) in expected.items():
        entry = index[name]
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise BlobError(f"tensor {name}: malformed index entry")
        if entry["dtype"] != st_dtype:
            raise BlobError(f"tensor {name}: dtype {str(entry['dtype'])[:20]!r}, expected {st_dtype}")
        if entry["shape"] != list(shape) or not all(type(d) is int for d in entry["shape"]):
            raise BlobError(f"tensor {name}: shape {str(entry['shape'])[:60]} disagrees with the metadata")
        offsets = entry["data_offsets"]
        if not isinstance(offsets, list) or len(offsets) != 2:
            raise BlobError(f"tensor {name}: data_offsets must be [begin, end]")
        begin = _json_int(offsets[0], f"{name} begin", 0, payload_len)
        end = _json_int(offsets[1], f"{name} end", 0, payload_len)
        if end - begin != math.prod(shape) * _ST_TYPES[st_dtype][0].itemsize:
            raise BlobError(f"tensor {name}: byte range [{begin}, {end}) does not hold shape {list(shape)}")
        spans.append((begin, end, name))
    spans.sort()
    cursor = 0
    for begin, end, name in spans:
        if begin != cursor:
            raise BlobError(f"tensor {name}: starts at {begin}, expected {cursor} (gap or overlap)")
        cursor = end
    if cursor != payload_len:
        raise BlobError(f"payload is {payload_len} bytes but the tensors cover {cursor}")

    if version == 2 and len(claimed.chunks) != -(-payload_len // claimed.chunk):
        raise BlobError(f"{len(claimed.chunks)} chunk digests for {payload_len} payload bytes")
    damage = checksum.mismatch(header, view[payload_start:], spans, claimed)
    if damage:
        raise BlobChecksumError(f"{damage}: the blob is corrupt or was altered")
    if expected_fingerprint is not None and meta["model"] != expected_fingerprint:
        raise BlobFingerprintError(f"blob is for model {meta['model'][:80]!r}, expected {expected_fingerprint[:80]!r}")

    # Validated: view the tensors over the buffer (a read-only one is first copied once, whole).
    buf, base = (memoryview(bytearray(view[payload_start:])), 0) if view.readonly else (view, payload_start)
    address = np.frombuffer(buf, dtype=np.uint8).ctypes.data if buf.nbytes else 0
    starts = {name: base + begin for begin, _, name in spans}

    def load(name: str) -> torch.Tensor:
        st_dtype, shape = expected[name]
        return _view(buf, starts[name], address, st_dtype, shape)

    positions = load("positions").to(torch.int64)
    _check_positions(positions, orig, BlobError)
    keys: list[LayerTensor] = []
    values: list[LayerTensor] = []
    for i, (k, v) in enumerate(layouts):
        keys.append(_build(f"k.{i}", k, load))
        values.append(_build(f"v.{i}", v, load))
    try:
        cache = QuantizedCache(keys=keys, values=values, positions=positions)
    except ValueError as e:  # unreachable after the checks above; kept so the contract holds regardless
        raise BlobError(f"inconsistent cache: {e}") from None
    return DecodedBlob(
        cache=cache,
        model_fingerprint=meta["model"],
        version=version,
        orig_seq_len=orig,
        meta=user,
        header_nbytes=payload_start,
        payload_nbytes=payload_len,
    )


def _claimed_checksums(meta: Mapping[str, str], version: int) -> checksum.Claims:
    """The checksums the metadata claims, well-formed (each digest is hex of the right length)."""
    if version == 1:
        if not checksum.HEX256.fullmatch(meta[checksum.SHA_KEY]):
            raise BlobError("sha256 must be 64 lowercase hex digits")
        return checksum.Claims(sha256=meta[checksum.SHA_KEY])
    if not checksum.HEX128.fullmatch(meta[checksum.HEADER_KEY]):
        raise BlobError(f"{checksum.HEADER_KEY} must be 32 lowercase hex digits")
    chunk = _meta_int(meta[checksum.CHUNK_KEY], checksum.CHUNK_KEY, checksum.MIN_CHUNK_BYTES, checksum.MAX_CHUNK_BYTES)
    run = meta[checksum.CHUNKS_KEY]
    if not checksum.HEX128_RUN.fullmatch(run):
        raise BlobError(f"{checksum.CHUNKS_KEY} must be 32 lowercase hex digits per chunk")
    chunks = tuple(run[i : i + 32] for i in range(0, len(run), 32))
    return checksum.Claims(header=meta[checksum.HEADER_KEY], chunk=chunk, chunks=chunks)


def _build(prefix: str, t: _TensorLayout, load: Callable[[str], torch.Tensor]) -> LayerTensor:
    if t.bits == 16:
        return load(f"{prefix}.raw")
    scale = load(f"{prefix}.scale")
    zero = None if t.sym else load(f"{prefix}.zero")
    if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
        raise BlobError(f"{prefix}: scales must be finite and non-negative")
    if zero is not None and not bool(torch.isfinite(zero).all()):
        raise BlobError(f"{prefix}: zero points must be finite")
    try:
        return QuantizedTensor(
            codes=load(f"{prefix}.codes"),
            scale=scale,
            zero=zero,
            shape=t.shape,
            dtype=t.dtype,
            bits=t.bits,
            axis=t.axis,
            group_size=t.group,
        )
    except ValueError as e:  # unreachable after the checks above; kept so the contract holds regardless
        raise BlobError(f"{prefix}: {e}") from None
