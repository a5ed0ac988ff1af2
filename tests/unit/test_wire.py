"""Tests for scout.codec.wire: round trips, exact sizes, safetensors compatibility, and hostile input.

The hostile-input tests hold the decoder to its contract: whatever the bytes, `decode_blob` either returns or
raises BlobError (never another exception type), and rejects a malformed blob before copying any tensor out of it
(counted, not timed). Many edits are re-signed
with a correct checksum (`_resign`, an independent implementation of the documented checksum rule), so the
structural validation is tested on its own and not hidden behind the checksum.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import safetensors
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xxhash import xxh3_128_hexdigest

from scout.codec import wire
from scout.codec.quant import BitPlan, QuantizedTensor, QuantSpec, dequantize_cache, quantize_cache
from scout.codec.wire import (
    FORMAT,
    MAX_HEADER_BYTES,
    BlobChecksumError,
    BlobError,
    BlobFingerprintError,
    BlobVersionError,
    decode_blob,
    encode_blob,
    peek_header,
)
from scout.kvcache import KVCache

FP = "qwen2.5-test@sha256:0123"


def _cache(
    layers: int = 3, heads: int = 2, seq: int = 40, dim: int = 32, dtype: torch.dtype = torch.bfloat16
) -> KVCache:
    """A KV-like cache: keys with outlier channels (as real keys have), values N(0, 1)."""
    gen = torch.Generator().manual_seed(layers * 100 + seq)
    keys, values = [], []
    for _ in range(layers):
        k = torch.randn(heads, seq, dim, generator=gen)
        k[:, :, :3] = k[:, :, :3] * 6.0 + 25.0
        keys.append(k.to(dtype))
        values.append(torch.randn(heads, seq, dim, generator=gen).to(dtype))
    return KVCache(keys, values, torch.arange(seq))


def _split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _canon(h: Any) -> bytes:
    return json.dumps(h, sort_keys=True, separators=(",", ":")).encode()


def _resign(header: dict[str, Any], payload: bytes, *, pad: bool = True) -> bytes:
    """Build a blob from a header dict, with the checksums the format defines. Version "1": SHA-256 of (canonical
    header sans sha256) + payload. Otherwise v2: XXH3-128 of each `xxh3_chunk`-byte chunk of the payload (hex,
    concatenated), then of the canonical header sans xxh3_header. Used to forge *validly signed* but structurally
    wrong blobs."""
    meta = {k: v for k, v in header.get("__metadata__", {}).items() if k not in ("sha256", "xxh3_header")}
    if meta.get("version") == "1":
        meta["sha256"] = hashlib.sha256(_canon({**header, "__metadata__": meta}) + payload).hexdigest()
    else:
        chunk = int(meta.get("xxh3_chunk", "1048576"))
        chunks = [payload[at : at + chunk] for at in range(0, len(payload), chunk)]
        meta["xxh3_chunks"] = "".join(xxh3_128_hexdigest(c) for c in chunks)
        meta["xxh3_header"] = xxh3_128_hexdigest(_canon({**header, "__metadata__": meta}))
    head = _canon({**header, "__metadata__": meta})
    if pad:
        head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + payload


def _fails(data: object, *, materializes: bool = False, **kwargs: Any) -> BlobError:
    """Decode must raise BlobError (nothing else) and, unless `materializes`, before it copies any tensor out of the
    payload: structure, sizes and the checksum are checked first, so a hostile blob costs a header parse and one
    hash, never allocations sized by what it declares. (A count of tensor loads, not a wall-clock budget: the
    check means the same on a loaded machine.) `materializes=True` is for the content checks that can only run on
    loaded tensors (positions, scales, zero points)."""
    loads: list[str] = []
    real_view = wire._view

    def counting_view(buf: memoryview, start: int, address: int, st_dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
        loads.append(st_dtype)
        return real_view(buf, start, address, st_dtype, shape)

    with mock.patch.object(wire, "_view", counting_view):
        try:
            decode_blob(data, **kwargs)  # type: ignore[arg-type]
        except BlobError as e:
            if not materializes:
                assert not loads, f"rejected only after loading {len(loads)} tensors: {e}"
            return e
    raise AssertionError("decode_blob accepted invalid input")


def _assert_same(a: QuantizedTensor | torch.Tensor, b: QuantizedTensor | torch.Tensor) -> None:
    if isinstance(a, QuantizedTensor):
        assert isinstance(b, QuantizedTensor)
        assert (a.shape, a.dtype, a.bits, a.axis, a.group_size) == (
            b.shape,
            b.dtype,
            b.bits,
            b.axis,
            b.group_size,
        )
        assert torch.equal(a.codes, b.codes) and torch.equal(a.scale, b.scale)
        assert (a.zero is None and b.zero is None) or torch.equal(a.zero, b.zero)  # type: ignore[arg-type]
    else:
        assert isinstance(b, torch.Tensor) and b.dtype == a.dtype and torch.equal(a, b)


# --- round trips --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 4, 8, 16])
@pytest.mark.parametrize("axes", [("channel", "token"), ("token", "token"), ("channel", "channel")])
@pytest.mark.parametrize("symmetric", [False, True])
def test_roundtrip_every_mode(bits: int, axes: tuple[str, str], symmetric: bool) -> None:
    kv = _cache(seq=45)  # 45: the last channel group is partial
    spec = QuantSpec(bits, axes[0], axes[1], 16, symmetric)
    qc = quantize_cache(kv, bits, spec)
    blob = encode_blob(qc, model_fingerprint=FP, meta={"request": "r-1"})
    out = decode_blob(blob, expected_fingerprint=FP)
    assert out.model_fingerprint == FP and out.version == 2 and out.meta == {"request": "r-1"}
    assert out.orig_seq_len == 45 and torch.equal(out.positions, kv.positions)
    for a, b in zip(qc.keys + qc.values, out.cache.keys + out.cache.values, strict=True):
        _assert_same(a, b)
    assert out.kvcache().equal(dequantize_cache(qc))
    # exact size: 8-byte length + padded header + KV payload + int32 positions
    assert len(blob) == 8 + (out.header_nbytes - 8) + qc.nbytes() + 4 * kv.seq_len
    assert out.payload_nbytes == qc.nbytes() + 4 * kv.seq_len and out.header_nbytes % 8 == 0


def test_roundtrip_mixed_plan_and_pruned_positions() -> None:
    kv = _cache(layers=4).select([39, 0, 7, 8, 30])  # unsorted, pruned: original ids survive as they are
    qc = quantize_cache(kv, BitPlan(4, {0: 16, 3: 8}))
    out = decode_blob(encode_blob(qc, model_fingerprint=FP, original_seq_len=64))
    assert out.cache.bits() == [16, 4, 4, 8]
    assert out.positions.tolist() == [39, 0, 7, 8, 30] and out.positions.dtype == torch.int64
    assert out.orig_seq_len == 64
    assert out.kvcache().equal(dequantize_cache(qc))
    assert decode_blob(encode_blob(qc, model_fingerprint=FP)).orig_seq_len == 40  # default: max + 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_sixteen_bit_layers_bitwise(dtype: torch.dtype) -> None:
    kv = _cache(dtype=dtype)
    kv.keys[0][0, 0, 0] = -0.0  # signed zero and subnormal-ish values must survive bit for bit
    kv.values[1][1, 2, 3] = torch.finfo(dtype).tiny / 4
    out = decode_blob(encode_blob(kv, model_fingerprint=FP)).kvcache()
    assert out.dtype == dtype
    for a, b in zip(kv.keys + kv.values, out.keys + out.values, strict=True):
        ai = a.view(torch.int32 if dtype == torch.float32 else torch.int16)
        bi = b.view(torch.int32 if dtype == torch.float32 else torch.int16)
        assert torch.equal(ai, bi)


def test_empty_selection_and_byte_like_inputs() -> None:
    kv = _cache().select([])
    blob = encode_blob(quantize_cache(kv, 4), model_fingerprint=FP, original_seq_len=40)
    for data in (blob, bytearray(blob), memoryview(blob)):
        out = decode_blob(data)
        assert out.cache.seq_len == 0 and out.orig_seq_len == 40


def test_realistic_kv_blob_sizes() -> None:
    """A 1,024-token Qwen2.5-7B-shaped layer pair: INT8 ~ 0.56x, INT4 ~ 0.31x of bf16 (scales included)."""
    kv = _cache(layers=1, heads=4, seq=1024, dim=128)
    raw = len(encode_blob(kv, model_fingerprint=FP))
    int8 = len(encode_blob(quantize_cache(kv, 8), model_fingerprint=FP))
    int4 = len(encode_blob(quantize_cache(kv, 4), model_fingerprint=FP))
    assert raw - 4 * 1024 - 2 * 4 * 1024 * 128 * 2 < 1024  # header overhead under 1 KiB
    assert 0.55 < int8 / raw < 0.57 and 0.30 < int4 / raw < 0.32


def test_is_a_valid_safetensors_file(tmp_path: Any) -> None:
    qc = quantize_cache(_cache(), BitPlan(4, {1: 16}))
    blob = encode_blob(qc, model_fingerprint=FP)
    tensors = safetensors.torch.load(blob)
    assert torch.equal(tensors["k.0.codes"], qc.keys[0].codes)  # type: ignore[union-attr]
    assert torch.equal(tensors["v.1.raw"], qc.values[1])  # type: ignore[arg-type]
    assert tensors["positions"].dtype == torch.int32
    path = tmp_path / "blob.safetensors"
    path.write_bytes(blob)
    with safetensors.safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == FORMAT and meta["version"] == "2" and meta["model"] == FP
    assert json.loads(meta["layers"])[1] == {
        "bits": 16,
        "k": {"shape": [2, 40, 32], "dtype": "bfloat16"},
        "v": {"shape": [2, 40, 32], "dtype": "bfloat16"},
    }


def test_checksum_rule_is_as_documented() -> None:
    blob = encode_blob(quantize_cache(_cache(), 4), model_fingerprint=FP, meta={"a": "b"})
    header, payload = _split(blob)
    assert _resign(header, payload) == blob


def test_peek_header_reads_only_the_header() -> None:
    blob = encode_blob(quantize_cache(_cache(), 8), model_fingerprint=FP)
    (n,) = struct.unpack("<Q", blob[:8])
    header = peek_header(blob[: 8 + n])  # payload absent: peek does not care
    assert header["__metadata__"]["model"] == FP and "k.0.codes" in header
    with pytest.raises(BlobError):
        peek_header(blob[: 8 + n - 1])


# --- encoder refusals ---------------------------------------------------------------------------------------
def test_encoder_refuses_what_the_decoder_would() -> None:
    kv = _cache()
    bad_positions = [
        torch.tensor([0, 1, 1, *range(3, 40)]),  # duplicate
        torch.tensor([-1, *range(1, 40)]),  # negative
    ]
    for pos in bad_positions:
        with pytest.raises(ValueError):
            encode_blob(KVCache(kv.keys, kv.values, pos), model_fingerprint=FP)
    with pytest.raises(ValueError):
        encode_blob(kv, model_fingerprint=FP, original_seq_len=39)  # position 39 is out of range
    with pytest.raises(ValueError):
        encode_blob(kv, model_fingerprint=FP, meta={"a": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        encode_blob(kv.to(dtype=torch.float64), model_fingerprint=FP)


# --- typed failures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_blob() -> bytes:
    """A small mixed blob (about 1.5 KB): 16-bit, 4-bit asymmetric and 2-bit layers."""
    kv = KVCache(
        [torch.randn(1, 5, 4).bfloat16() for _ in range(3)],
        [torch.randn(1, 5, 4).bfloat16() for _ in range(3)],
        torch.tensor([0, 2, 3, 7, 9]),
    )
    return encode_blob(quantize_cache(kv, BitPlan(4, {0: 16, 2: 2})), model_fingerprint=FP)


def test_fingerprint_checked(small_blob: bytes) -> None:
    assert decode_blob(small_blob, expected_fingerprint=FP).model_fingerprint == FP
    assert isinstance(_fails(small_blob, expected_fingerprint="llama"), BlobFingerprintError)


def _keep_sha(header: dict[str, Any], payload: bytes) -> bytes:
    """Re-serialize an edited header but keep its old (now wrong) checksum."""
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return struct.pack("<Q", len(head)) + head + payload


@pytest.mark.parametrize("resign", [False, True])
def test_unknown_version_is_named(small_blob: bytes, resign: bool) -> None:
    header, payload = _split(small_blob)
    header["__metadata__"]["version"] = "3"
    err = _fails(_resign(header, payload) if resign else _keep_sha(header, payload))
    assert isinstance(err, BlobVersionError) and err.version == "3" and "'3'" in str(err)


def test_wrong_magic(small_blob: bytes) -> None:
    header, payload = _split(small_blob)
    header["__metadata__"]["format"] = "scout-kv2"
    err = _fails(_resign(header, payload))
    assert not isinstance(err, BlobVersionError | BlobChecksumError) and "scout-kv2" in str(err)


def test_checksum_covers_payload_and_header(small_blob: bytes) -> None:
    corrupt = bytearray(small_blob)
    corrupt[-7] ^= 0x10
    assert isinstance(_fails(bytes(corrupt)), BlobChecksumError)
    for key, value in (("user", '{"x":"y"}'), ("model", "other-model"), ("orig_seq_len", "11")):
        header, payload = _split(small_blob)
        header["__metadata__"][key] = value
        assert isinstance(_fails(_keep_sha(header, payload)), BlobChecksumError)


def test_size_limits_checked_before_parsing(small_blob: bytes) -> None:
    _fails(small_blob, max_bytes=len(small_blob) - 1)
    assert decode_blob(small_blob, max_bytes=len(small_blob)).cache.seq_len == 5
    _fails(small_blob, max_bytes=-5)
    _fails("not bytes")
    _fails(b"")
    _fails(b"\x00" * 7)
    for n in (0, 1, len(small_blob), 2**63, 2**64 - 1):
        _fails(struct.pack("<Q", n) + small_blob[8:])
    # A header longer than 16 MiB is refused even when it is otherwise valid (trailing spaces are JSON
    # whitespace, outside the canonical form the checksum covers: this blob would decode without the cap).
    (n,) = struct.unpack("<Q", small_blob[:8])
    head = small_blob[8 : 8 + n] + b" " * (MAX_HEADER_BYTES - n + 8)
    padded = struct.pack("<Q", len(head)) + head + small_blob[8 + n :]
    assert "header length" in str(_fails(padded))
    head = small_blob[8 : 8 + n] + b" " * 64
    assert decode_blob(struct.pack("<Q", len(head)) + head + small_blob[8 + n :]).cache.seq_len == 5


def _edit(fn: Callable[[dict[str, Any], dict[str, Any]], None]) -> Callable[[bytes], bytes]:
    """An edit of (header, parsed layers) applied to a blob and re-signed with a valid checksum."""

    def apply(blob: bytes) -> bytes:
        header, payload = _split(blob)
        layers = json.loads(header["__metadata__"]["layers"])
        fn(header, layers)
        if "__metadata__" in header:
            header["__metadata__"]["layers"] = json.dumps(layers)
        return _resign(header, payload)

    return apply


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    def fn(header: dict[str, Any], layers: Any) -> None:
        root: Any = layers if path[0] == "layers" else header
        for key in path[1:-1] if path[0] == "layers" else path[:-1]:
            root = root[key]
        root[path[-1]] = value

    return fn


SIGNED_EDITS: dict[str, Callable[[bytes], bytes]] = {
    "inflated codes shape": _edit(_set(("k.1.codes", "shape"), [10**15])),
    "inflated raw shape": _edit(_set(("k.0.raw", "shape"), [2**40, 5, 4])),
    "inflated offsets": _edit(_set(("k.1.codes", "data_offsets"), [0, 2**62])),
    "negative offset": _edit(_set(("k.1.codes", "data_offsets"), [-1, 9])),
    "swapped offsets": _edit(_set(("positions", "data_offsets"), [0, 20])),
    "float shape": _edit(_set(("positions", "shape"), [5.0])),
    "bool shape": _edit(_set(("k.1.codes", "shape"), [True])),
    "wrong dtype": _edit(_set(("k.1.scale", "dtype"), "F32")),
    # issue 22: header fields of the wrong JSON type were TypeErrors (unhashable), not BlobErrors
    "list layer dtype": _edit(_set(("layers", 0, "k", "dtype"), [])),
    "dict layer dtype": _edit(_set(("layers", 1, "v", "dtype"), {})),
    "list layer axis": _edit(_set(("layers", 1, "k", "axis"), ["token"])),
    "null layer dtype": _edit(_set(("layers", 0, "v", "dtype"), None)),
    "list tensor dtype": _edit(_set(("k.1.scale", "dtype"), ["F16"])),
    "unknown dtype": _edit(_set(("k.0.raw", "dtype"), "F8_E4M3")),
    "layer bits": _edit(_set(("layers", 1, "bits"), 8)),
    "layer bits 3": _edit(_set(("layers", 1, "bits"), 3)),
    "layer axis": _edit(_set(("layers", 1, "k", "axis"), "token")),
    "layer sym": _edit(_set(("layers", 1, "k", "sym"), True)),
    "layer sym int": _edit(_set(("layers", 1, "k", "sym"), 0)),  # 0 == False in Python, not in the format
    "layer group": _edit(_set(("layers", 1, "k", "group"), 0)),
    "layer huge heads": _edit(_set(("layers", 1, "k", "shape"), [2**40, 5, 4])),
    "layer shape str": _edit(_set(("layers", 1, "k", "shape"), ["1", 5, 4])),
    "layer extra key": _edit(_set(("layers", 1, "x"), 1)),
    "layer dtype": _edit(_set(("layers", 0, "k", "dtype"), "float64")),
    "num_layers": _edit(_set(("__metadata__", "num_layers"), "4")),
    "num_layers sign": _edit(_set(("__metadata__", "num_layers"), "+3")),
    "num_layers underscore": _edit(_set(("__metadata__", "num_layers"), "0_3")),
    "seq_len": _edit(_set(("__metadata__", "seq_len"), "6")),
    "orig below kept": _edit(_set(("__metadata__", "orig_seq_len"), "4")),
    "orig below a position": _edit(_set(("__metadata__", "orig_seq_len"), "9")),
    "user not strings": _edit(_set(("__metadata__", "user"), '{"a":1}')),
    "user not json": _edit(_set(("__metadata__", "user"), "{")),
    "extra meta key": _edit(_set(("__metadata__", "extra"), "1")),
    "meta not strings": _edit(_set(("__metadata__", "seq_len"), 5)),
    "no metadata": _edit(lambda h, _l: h.pop("__metadata__")),
    "missing tensor": _edit(lambda h, _l: h.pop("v.2.zero")),
    "extra tensor": _edit(_set(("v.9.raw",), {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]})),
    "entry extra key": _edit(_set(("positions", "x"), 1)),
    "wrong magic": _edit(_set(("__metadata__", "format"), "safetensors")),
}


CHECKED_ON_LOADED_TENSORS = frozenset({"orig below a position"})
"""Edits only the loaded positions can reveal (a position id beyond orig_seq_len lives in the payload)."""


@pytest.mark.parametrize("name", sorted(SIGNED_EDITS))
def test_signed_structural_edits_rejected(small_blob: bytes, name: str) -> None:
    err = _fails(SIGNED_EDITS[name](small_blob), materializes=name in CHECKED_ON_LOADED_TENSORS)
    assert not isinstance(err, BlobChecksumError), "structure must be validated independently of the checksum"


def test_signed_appended_payload_rejected(small_blob: bytes) -> None:
    header, payload = _split(small_blob)
    for extra in (b"\x00", b"\x00" * 8):
        err = _fails(_resign(header, payload + extra))
        assert not isinstance(err, BlobChecksumError) and "cover" in str(err)


def _payload_edit(tensor: str, fn: Callable[[bytearray, int, int], None]) -> Callable[[bytes], bytes]:
    def apply(blob: bytes) -> bytes:
        header, payload = _split(blob)
        buf = bytearray(payload)
        begin, end = header[tensor]["data_offsets"]
        fn(buf, begin, end)
        return _resign(header, bytes(buf))

    return apply


def test_signed_content_edits_rejected(small_blob: bytes) -> None:
    def dup(buf: bytearray, b: int, e: int) -> None:
        buf[b + 4 : b + 8] = buf[b : b + 4]

    def neg(buf: bytearray, b: int, e: int) -> None:
        buf[b : b + 4] = struct.pack("<i", -3)

    def nan(buf: bytearray, b: int, e: int) -> None:
        buf[b : b + 2] = struct.pack("<e", float("nan"))

    def negative_scale(buf: bytearray, b: int, e: int) -> None:
        buf[b : b + 2] = struct.pack("<e", -1.0)

    for edit in (
        _payload_edit("positions", dup),
        _payload_edit("positions", neg),
        _payload_edit("k.1.scale", nan),
        _payload_edit("k.1.scale", negative_scale),
        _payload_edit("v.1.zero", nan),
    ):
        assert not isinstance(_fails(edit(small_blob), materializes=True), BlobChecksumError)


def test_duplicate_keys_rejected(small_blob: bytes) -> None:
    """A parser that keeps the last duplicate would accept this blob (the checksum covers the parsed header);
    another tool keeping the first would see different tensors. Scout refuses the ambiguity."""
    (n,) = struct.unpack("<Q", small_blob[:8])
    decoy = b'{"positions":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},'
    head = decoy + small_blob[9 : 8 + n]
    assert "duplicate" in str(_fails(struct.pack("<Q", len(head)) + head + small_blob[8 + n :]))


def test_header_must_be_utf8(small_blob: bytes) -> None:
    """json.loads(bytes) would sniff UTF-16; safetensors requires UTF-8, and so does Scout."""
    (n,) = struct.unpack("<Q", small_blob[:8])
    head = small_blob[8 : 8 + n].decode("utf-8").encode("utf-16-le")
    _fails(struct.pack("<Q", len(head)) + head + small_blob[8 + n :])


@pytest.mark.parametrize(
    "text",
    [
        b"[]",
        b'{"__metadata__": {"a": "b"}, "__metadata__": {"a": "c"}}',  # duplicate keys
        b'{"__metadata__": {"format": "scout-kv", "version": "1"}, "x": NaN}',
        b"[" * 100_000 + b"]" * 100_000,  # nesting beyond the JSON parser's recursion limit
        b'{"__metadata__": {"format": "scout-kv", "version": "1", "num_layers": "' + b"9" * 5000 + b'"}}',
        b'{"__metadata__": "x"}',
        b"\xff\xfe{}",
        b'{"a": 1e99999}',
    ],
)
def test_malformed_headers(text: bytes) -> None:
    _fails(struct.pack("<Q", len(text)) + text)


# --- fuzzing ------------------------------------------------------------------------------------------------
def test_every_truncation_and_appendix(small_blob: bytes) -> None:
    for n in range(len(small_blob)):
        _fails(small_blob[:n])
    rng = random.Random(5)
    for extra in (b"\x00", b" ", b"\x00" * 8, bytes(rng.randrange(256) for _ in range(100))):
        _fails(small_blob + extra)


def test_every_single_bit_flip_of_the_header_and_a_sample_of_the_payload(small_blob: bytes) -> None:
    (n,) = struct.unpack("<Q", small_blob[:8])
    rng = random.Random(1)
    positions = list(range(8 + n)) + rng.sample(range(8 + n, len(small_blob)), 64)
    for pos in positions:
        for bit in range(8) if pos < 8 + n else (rng.randrange(8),):
            flipped = bytearray(small_blob)
            flipped[pos] ^= 1 << bit
            _fails(bytes(flipped))


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=512))
def test_fuzz_random_bytes(data: bytes) -> None:
    _fails(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    meta=st.dictionaries(
        st.sampled_from(["format", "version", "model", "num_layers", "seq_len", "orig_seq_len", "layers", "user"])
        | st.text(max_size=6),
        st.sampled_from(["scout-kv", "1", "0", "2", "[]", "{}", '[{"bits":4}]']) | st.text(max_size=6),
        max_size=9,
    ),
    tensors=st.dictionaries(st.text(max_size=10), json_values, max_size=4),
    payload=st.binary(max_size=64),
)
def test_fuzz_random_signed_headers(meta: dict[str, str], tensors: dict[str, Any], payload: bytes) -> None:
    """Random (validly signed) headers that look like scout-kv: the decoder must reject them cleanly."""
    header = {**tensors, "__metadata__": meta}
    _fails(_resign(header, payload))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutations_of_a_valid_blob(small_blob: bytes, data: st.DataObject) -> None:
    blob = bytearray(small_blob)
    kind = data.draw(st.sampled_from(["flips", "splice", "truncate-append", "overwrite"]))
    if kind == "flips":
        for _ in range(data.draw(st.integers(1, 8))):
            pos = data.draw(st.integers(0, len(blob) - 1))
            blob[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "splice":
        at = data.draw(st.integers(0, len(blob)))
        blob[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    elif kind == "truncate-append":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))] + data.draw(st.binary(max_size=32))
    else:
        at = data.draw(st.integers(0, len(blob) - 1))
        chunk = data.draw(st.binary(min_size=1, max_size=8))
        if bytes(blob[at : at + len(chunk)]) == chunk:
            chunk = bytes(b ^ 0xFF for b in chunk)
        blob[at : at + len(chunk)] = chunk
    if bytes(blob) == small_blob:
        return
    _fails(bytes(blob))


# --- wire v2: per-tensor checksums, v1 still read, zero-copy views -----------------------------------------
def test_a_flipped_bit_in_any_tensor_is_caught_and_named() -> None:
    """With 4 KiB chunks (the smallest allowed) a flip is pinned to its chunk, and the error names its tensors."""
    qc = quantize_cache(_cache(seq=64), BitPlan(4, {0: 16, 2: 8}))
    blob = encode_blob(qc, model_fingerprint=FP, chunk_bytes=4096)
    header, payload = _split(blob)
    assert len(header["__metadata__"]["xxh3_chunks"]) == 32 * -(-len(payload) // 4096) > 32
    start = len(blob) - len(payload)
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        for at in (begin, (begin + end) // 2, end - 1):
            corrupt = bytearray(blob)
            corrupt[start + at] ^= 0x04
            err = _fails(bytes(corrupt))
            lo = at // 4096 * 4096
            assert isinstance(err, BlobChecksumError) and name in str(err) and f"bytes [{lo}, " in str(err)


def test_chunk_digests_and_size_are_checked(small_blob: bytes) -> None:
    header, payload = _split(small_blob)
    meta = header["__metadata__"]
    digests = meta["xxh3_chunks"]
    meta["xxh3_chunks"] = ("0" if digests[0] != "0" else "1") + digests[1:]
    err = _fails(_keep_sha(header, payload))
    assert isinstance(err, BlobChecksumError) and "header" in str(err)  # the header digest covers the claims
    for edit in ({"xxh3_chunks": digests * 2}, {"xxh3_chunks": digests[:31]}, {"xxh3_chunks": digests.upper()}):
        header, payload = _split(small_blob)
        meta = {k: v for k, v in header["__metadata__"].items() if k != "xxh3_header"} | edit
        meta["xxh3_header"] = xxh3_128_hexdigest(_canon({**header, "__metadata__": meta}))  # header signed, runs not
        assert not isinstance(_fails(_keep_sha({**header, "__metadata__": meta}, payload)), BlobChecksumError)
    header, payload = _split(small_blob)
    header["__metadata__"]["xxh3_chunk"] = "4095"
    assert "xxh3_chunk" in str(_fails(_resign(header, payload)))
    with pytest.raises(ValueError):
        encode_blob(_cache(), model_fingerprint=FP, chunk_bytes=1024)


FIXTURES_V1 = Path(__file__).resolve().parents[1] / "fixtures" / "wire_v1"


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()


def _digests(out: wire.DecodedBlob) -> dict[str, str]:
    """SHA-256 of each decoded layer tensor's parts, of the dequantized cache and of the positions: the form the
    v1 decoder's output was recorded in (tests/fixtures/wire_v1/expected.json, written by the v1 code)."""
    found: dict[str, str] = {}
    for side, layers in (("k", out.cache.keys), ("v", out.cache.values)):
        for i, t in enumerate(layers):
            parts = (
                [t.codes, t.scale, *([t.zero] if t.zero is not None else [])] if isinstance(t, QuantizedTensor) else [t]
            )
            found[f"{side}.{i}"] = hashlib.sha256(b"".join(_tensor_bytes(p) for p in parts)).hexdigest()
    kv = out.kvcache()
    found["dequantized"] = hashlib.sha256(b"".join(_tensor_bytes(t) for t in kv.keys + kv.values)).hexdigest()
    found["positions"] = hashlib.sha256(_tensor_bytes(out.cache.positions)).hexdigest()
    return found


@pytest.mark.parametrize("name", ["mixed_kivi", "int4_study_f16"])
def test_version_1_blobs_still_decode_bit_identically(name: str) -> None:
    """Blobs written by the v1 (SHA-256) encoder decode to exactly what the v1 decoder returned, and re-encoding
    them as v2 changes nothing but the checksums."""
    expected = json.loads((FIXTURES_V1 / "expected.json").read_text())[name]
    blob = (FIXTURES_V1 / f"{name}.bin").read_bytes()
    assert len(blob) == expected["bytes"] and peek_header(blob)["__metadata__"]["version"] == "1"
    old = decode_blob(blob, expected_fingerprint="fixture@v1")
    assert old.version == 1 and old.meta == expected["meta"] and old.orig_seq_len == expected["orig_seq_len"]
    assert _digests(old) == expected["digests"]
    again = decode_blob(encode_blob(old.cache, model_fingerprint="fixture@v1", original_seq_len=old.orig_seq_len))
    assert again.version == 2 and _digests(again) == expected["digests"]
    corrupt = bytearray(blob)
    corrupt[-3] ^= 0x01
    assert isinstance(_fails(bytes(corrupt)), BlobChecksumError)


def _inside(t: torch.Tensor, buf: bytearray) -> bool:
    """Whether the tensor's memory lies in `buf` (a view over it, not a copy)."""
    start = torch.frombuffer(buf, dtype=torch.uint8).data_ptr()
    return start <= t.data_ptr() < start + len(buf)


def test_decode_views_a_writable_buffer_and_never_aliases_bytes() -> None:
    qc = quantize_cache(_cache(), BitPlan(4, {0: 16, 2: 8}))
    blob = encode_blob(qc, model_fingerprint=FP)
    buf = bytearray(blob)
    out = decode_blob(buf)
    k0, k1 = out.cache.keys[0], out.cache.keys[1]
    assert isinstance(k0, torch.Tensor) and isinstance(k1, QuantizedTensor)
    assert _inside(k0, buf) and _inside(k1.codes, buf) and _inside(k1.scale, buf)
    assert torch.equal(k0, qc.keys[0])  # type: ignore[arg-type]
    frozen = decode_blob(blob)
    frozen.cache.keys[0].zero_()  # type: ignore[union-attr]
    assert decode_blob(blob).cache.keys[0].equal(qc.keys[0])  # type: ignore[union-attr,arg-type]
