"""Position sets: which context tokens a selector kept, in as few bytes as the set allows.

In `scout` mode the edge does not ship KV at all: it ships the question, a document reference and the *set of
kept context positions*, and the cloud re-prefills its own model attending only to those positions. The source
study accounted that set as one int32 per kept index (4 B/index, about 336 B per request). The set is a subset
of ``range(n)`` where ``n`` (the number of context tokens) is known to both ends out of band: the receiver
tokenizes the same document and ``n`` travels as its own message field. So ``n`` is an argument of
`encode_positions` and `decode_positions`, never part of the bytes, and the encoding only has to say *which*
of the n positions are kept.

No single code is smallest for every set, so the wire format is one tag byte followed by the payload of one
codec, and the encoder picks the smallest (ties broken by the fixed order of `Codec`):

* ``NONE`` / ``ALL``: empty payload; the empty set / every position (text mode, or retention 100 %).
* ``BITMAP``: ``ceil(n/8)`` bytes, bit ``i`` of the stream (LSB-first within each byte) set iff ``i`` is kept;
  padding bits past ``n`` must be zero. Best for dense, scattered sets (75 % uniform retention).
* ``DELTA_VARINT``: LEB128 count ``k``, then the first index, then ``gap - 1`` between consecutive indices.
  Best for sparse scattered sets (a few percent retention).
* ``RANGES``: LEB128 number ``m`` of kept runs, then ``2m`` LEB128 values: the (possibly empty) skipped
  prefix, then ``keep_0 - 1``, ``skip_1 - 1``, ``keep_1 - 1``, ... ; the final skipped tail is implied by
  ``n``. Best for clustered sets (whole phrases or sentences kept), where runs are long and few.
* ``ELIAS_FANO``: LEB128 count ``k``, then one LSB-first bit stream: ``k`` low parts of
  ``l = floor(log2(n/k))`` bits each, then the unary-coded high parts (bit ``(x_i >> l) + i`` set), then
  zero padding. At most ``2 + log2(n/k)`` bits per index whatever the clustering, so it wins on sparse sets
  that are neither clustered nor tiny.

Every codec is *canonical*: varints must be minimal, counts exact, padding zero and runs maximal, so a payload
that decodes at all re-encodes (with the same codec) to the very same bytes, and decode is the exact inverse of
encode. Canonical is not enough to make corruption loud, though: a fuzz of 100,000 mutated sets found 1,883
that decoded silently into a *different* valid set (one flipped bit of ``[0, 2, 4, 6]`` in 8 gives ``[2, 4, 6]``).
So the encoder writes the *checked* format (v2) by default: the tag byte with bit 7 set (``0x80 | codec``), the
payload, then a CRC-32 (little-endian) over ``n`` (8 bytes, little-endian), the tag byte and the payload. Why a
CRC-32: 4 bytes keep a scout-mode message at a few hundred bytes, it catches every burst of up to 32 flipped bits
and all but 2**-32 of the rest (integrity against corruption, not authenticity: the bus and the store carry
their own), and covering ``n`` also catches a set decoded against another context length. The unchecked
format (v1: tag 0-5) still decodes; a checked set whose bit 7 flips cannot pass as v1, because each v1 codec
has an exact length and the 4 CRC bytes are left over. ``require_checksum=True`` refuses v1 altogether.

Decoding input is hostile (it crosses a network): every failure raises `PositionSetError`, every claimed count
is checked against ``n`` and ``len(data)`` before anything proportional to it is allocated, and every loop is
bounded by ``len(data)``. The only allocation proportional to ``n`` is the decoded set itself, and ``n`` is
the receiver's own number, capped by ``max_n``.

`align_positions` maps a kept set between two tokenizers through character spans, so Scout can cross model
families (the study's open question: it only paired sizes of one family, which share a tokenizer).
"""

from __future__ import annotations

import enum
import operator
import zlib
from collections.abc import Sequence

import numpy as np

__all__ = [
    "CHECKED",
    "CHECK_BYTES",
    "Codec",
    "PositionSetError",
    "align_positions",
    "decode_positions",
    "encode_positions",
    "encoded_size",
    "study_bytes",
]

# Hard ceiling on n, whatever the caller's max_n: it keeps every value the decoder computes (run sums, shifted
# Elias-Fano high parts, varints of at most 6 bytes) far inside int64, so overflow checks stay simple.
_N_LIMIT = 1 << 40

# Tolerance for `align_positions`' overlap test, so that min_overlap=0.7 of a 10-char token accepts 7 chars
# even though 0.7 * 10 is 7.000000000000001 in binary floating point.
_OVERLAP_EPS = 1e-9


CHECKED = 0x80
"""Tag bit of the checked format (v2): the payload is followed by a CRC-32 over n, the tag and the payload."""
CHECK_BYTES = 4
"""Bytes the checked format adds (the CRC-32)."""


class PositionSetError(ValueError):
    """A position-set payload (or the n it is decoded against) is invalid; raised for every decode failure."""


class Codec(enum.IntEnum):
    """Tag byte of the wire format; the declaration order is the tie-break order of the automatic choice."""

    NONE = 0
    ALL = 1
    BITMAP = 2
    DELTA_VARINT = 3
    RANGES = 4
    ELIAS_FANO = 5


# ----------------------------------------------------------------------------------------------------------
# LEB128 varints
# ----------------------------------------------------------------------------------------------------------


def _varint_len(value: int) -> int:
    """Bytes of the minimal LEB128 encoding of a non-negative int."""
    return max(1, -(-value.bit_length() // 7))


def _varint_lengths(values: np.ndarray) -> np.ndarray:
    """Vectorised `_varint_len` over a non-negative int64 array."""
    lengths = np.ones(values.shape, dtype=np.int64)
    top = int(values.max()) if values.size else 0
    threshold = 1 << 7
    while threshold <= top:
        lengths += values >= threshold
        threshold <<= 7
    return lengths


def _varint_bytes(values: np.ndarray) -> bytes:
    """Minimal LEB128 encoding of every value, concatenated; vectorised (a row of 7-bit groups per value)."""
    if values.size == 0:
        return b""
    lengths = _varint_lengths(values)
    width = int(lengths.max())
    column = np.arange(width, dtype=np.int64)
    groups = (values[:, None] >> (7 * column)[None, :]) & 0x7F
    groups |= (column[None, :] < (lengths[:, None] - 1)) * 0x80
    return groups[column[None, :] < lengths[:, None]].astype(np.uint8).tobytes()


def _read_varint(data: bytes, pos: int, max_len: int, what: str) -> tuple[int, int]:
    """Read one minimal LEB128 varint of at most `max_len` bytes at `pos`; return (value, next position)."""
    value = 0
    for i in range(max_len):
        if pos + i >= len(data):
            raise PositionSetError(f"truncated varint ({what}) at byte {pos + i}")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            if byte == 0 and i > 0:
                raise PositionSetError(f"non-minimal varint ({what}) at byte {pos}")
            return value, pos + i + 1
    raise PositionSetError(f"varint too long ({what}) at byte {pos}: more than {max_len} bytes")


def _parse_varints(buf: np.ndarray, count: int, max_len: int, what: str) -> np.ndarray:
    """Decode `buf` (uint8) as exactly `count` minimal varints of at most `max_len` bytes each, vectorised.

    Work and memory are proportional to ``len(buf)`` only, so a hostile count cannot blow them up.
    """
    ends = np.flatnonzero(buf < 0x80)
    if ends.size < count:
        raise PositionSetError(f"truncated: {what} needs {count} varints, only {ends.size} complete")
    if count == 0:
        if buf.size:
            raise PositionSetError(f"trailing bytes: {buf.size} after the last {what} varint")
        return np.zeros(0, dtype=np.int64)
    if ends[count - 1] != buf.size - 1:
        raise PositionSetError(f"trailing bytes: {buf.size - 1 - int(ends[count - 1])} after {count} varints")
    ends = ends[:count]
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if int(lengths.max()) > max_len:
        raise PositionSetError(f"varint too long in {what}: more than {max_len} bytes")
    if bool(np.any((lengths > 1) & (buf[ends] == 0))):
        raise PositionSetError(f"non-minimal varint in {what}")
    owner = np.repeat(np.arange(count), lengths)
    shift = 7 * (np.arange(buf.size, dtype=np.int64) - starts[owner])
    contrib = (buf & 0x7F).astype(np.int64) << shift
    return np.add.reduceat(contrib, starts)


# ----------------------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------------------


def _check_n_encode(n: int) -> int:
    """n as a plain int in [0, _N_LIMIT]; ValueError otherwise (encoding is the caller's own data)."""
    try:
        value = operator.index(n)
    except TypeError as exc:
        raise ValueError(f"n must be an integer, got {type(n).__name__}") from exc
    if isinstance(n, bool) or value < 0 or value > _N_LIMIT:
        raise ValueError(f"n must be in [0, {_N_LIMIT}], got {value}")
    return value


def _as_index_array(indices: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """Validate a kept set (1-D, integer, strictly increasing, within [0, n)) and return it as int64."""
    arr = np.asarray(indices)
    if arr.size == 0:
        if arr.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {arr.shape}")
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"indices must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"indices must be integers (pass np.flatnonzero(mask) for a mask), got {arr.dtype}")
    if int(arr.min()) < 0 or int(arr.max()) >= n:
        raise ValueError(f"indices must lie in [0, {n}), got range [{int(arr.min())}, {int(arr.max())}]")
    out = arr.astype(np.int64)
    if out.size > 1 and bool(np.any(np.diff(out) <= 0)):
        raise ValueError("indices must be strictly increasing (sorted, no duplicates)")
    return out


# ----------------------------------------------------------------------------------------------------------
# Codec payloads
# ----------------------------------------------------------------------------------------------------------


def _delta_values(idx: np.ndarray) -> np.ndarray:
    """The varint values of a DELTA_VARINT payload: k, first index, then gap - 1."""
    out = np.empty(idx.size + 1, dtype=np.int64)
    out[0] = idx.size
    if idx.size:
        out[1] = idx[0]
        out[2:] = np.diff(idx) - 1
    return out


def _ranges_values(idx: np.ndarray) -> np.ndarray:
    """The varint values of a RANGES payload: m, skip_0, keep_0 - 1, skip_1 - 1, keep_1 - 1, ..."""
    if idx.size == 0:
        return np.zeros(1, dtype=np.int64)
    breaks = np.flatnonzero(np.diff(idx) > 1)
    run_starts = idx[np.concatenate(([0], breaks + 1))]
    run_ends = idx[np.concatenate((breaks, [idx.size - 1]))] + 1
    skips = run_starts.copy()
    skips[1:] -= run_ends[:-1]
    out = np.empty(2 * run_starts.size + 1, dtype=np.int64)
    out[0] = run_starts.size
    out[1::2] = skips
    out[2::2] = run_ends - run_starts - 1
    out[3::2] -= 1  # interior skips are >= 1 in a maximal run decomposition
    return out


def _ef_low_bits(n: int, k: int) -> int:
    """Elias-Fano low-part width floor(log2(n/k)), 0 when k >= n (floor(log2(x)) == floor(log2(floor(x))))."""
    return max(0, (n // k).bit_length() - 1) if k else 0


def _ef_total_bits(n: int, k: int) -> int:
    """Bits in the Elias-Fano stream: k low parts plus the unary upper array ((n-1) >> l) + k bits long."""
    if k == 0:
        return 0
    low = _ef_low_bits(n, k)
    return k * low + ((n - 1) >> low) + k


def _ef_payload(idx: np.ndarray, n: int) -> bytes:
    """ELIAS_FANO payload: count, then low parts and unary high parts in one stream (saves a padding byte)."""
    k = idx.size
    if k == 0:
        return _varint_bytes(np.zeros(1, dtype=np.int64))
    low = _ef_low_bits(n, k)
    low_bits = ((idx[:, None] >> np.arange(low, dtype=np.int64)[None, :]) & 1).astype(np.uint8).ravel()
    upper = np.zeros(((n - 1) >> low) + k, dtype=np.uint8)
    upper[(idx >> low) + np.arange(k)] = 1
    stream = np.packbits(np.concatenate((low_bits, upper)), bitorder="little")
    return _varint_bytes(np.array([k], dtype=np.int64)) + stream.tobytes()


def _bitmap_payload(idx: np.ndarray, n: int) -> bytes:
    """BITMAP payload, LSB-first like numpy's little bit order, so decoding is one `unpackbits`."""
    bits = np.zeros(n, dtype=np.uint8)
    bits[idx] = 1
    return np.packbits(bits, bitorder="little").tobytes()


def _payload_sizes(idx: np.ndarray, n: int) -> dict[Codec, tuple[int, np.ndarray | None]]:
    """Payload size of every codec applicable to this set, computed without building the payloads.

    For the varint codecs the value array is returned too, so the winner's bytes come from the same numbers
    that sized it.
    """
    k = idx.size
    sizes: dict[Codec, tuple[int, np.ndarray | None]] = {}
    if k == 0:
        sizes[Codec.NONE] = (0, None)
    if k == n:
        sizes[Codec.ALL] = (0, None)
    sizes[Codec.BITMAP] = (-(-n // 8), None)
    delta = _delta_values(idx)
    sizes[Codec.DELTA_VARINT] = (int(_varint_lengths(delta).sum()), delta)
    ranges = _ranges_values(idx)
    sizes[Codec.RANGES] = (int(_varint_lengths(ranges).sum()), ranges)
    sizes[Codec.ELIAS_FANO] = (_varint_len(k) + -(-_ef_total_bits(n, k) // 8), None)
    return sizes


# ----------------------------------------------------------------------------------------------------------
# Public API: encode
# ----------------------------------------------------------------------------------------------------------


def _crc(n: int, body: bytes) -> bytes:
    """The checked format's trailer: CRC-32 over n (u64 LE), the tag byte and the payload."""
    return zlib.crc32(body, zlib.crc32(n.to_bytes(8, "little"))).to_bytes(CHECK_BYTES, "little")


def encode_positions(
    indices: Sequence[int] | np.ndarray, n: int, codec: Codec | None = None, *, checked: bool = True
) -> bytes:
    """Encode a kept set of context positions as one tag byte plus the payload of `codec` (plus the CRC-32).

    With ``codec=None`` every applicable codec is sized and the smallest wins (ties go to the earliest in
    `Codec`), so the result is never larger than the bitmap (``ceil(n/8) + 1 + CHECK_BYTES`` bytes). ``n`` is not
    written: the receiver supplies it to `decode_positions` (it is covered by the CRC). ``checked=False`` writes
    the v1 format (no CRC). Raises ValueError for an invalid set or n, or for ``NONE``/``ALL`` asked for a set
    they cannot express.
    """
    n = _check_n_encode(n)
    idx = _as_index_array(indices, n)
    sizes = _payload_sizes(idx, n)
    if codec is None:
        chosen = min(sizes, key=lambda c: (sizes[c][0], int(c)))
    else:
        chosen = Codec(codec)
        if chosen not in sizes:
            raise ValueError(f"codec {chosen.name} cannot express a set of {idx.size} of {n} positions")
    values = sizes[chosen][1]
    if chosen in (Codec.NONE, Codec.ALL):
        payload = b""
    elif chosen == Codec.BITMAP:
        payload = _bitmap_payload(idx, n)
    elif chosen == Codec.ELIAS_FANO:
        payload = _ef_payload(idx, n)
    else:
        assert values is not None
        payload = _varint_bytes(values)
    if not checked:
        return bytes([int(chosen)]) + payload
    body = bytes([CHECKED | int(chosen)]) + payload
    return body + _crc(n, body)


def encoded_size(indices: Sequence[int] | np.ndarray, n: int, *, checked: bool = True) -> dict[str, int]:
    """Total bytes (tag and, when ``checked``, CRC included) of every codec applicable to this set, keyed by
    lower-case codec name: for reports that compare codecs, and against `study_bytes`; the choice is the minimum.
    """
    n = _check_n_encode(n)
    idx = _as_index_array(indices, n)
    extra = 1 + (CHECK_BYTES if checked else 0)
    return {codec.name.lower(): size + extra for codec, (size, _) in _payload_sizes(idx, n).items()}


def study_bytes(k: int) -> int:
    """Bytes the source study spent on k kept positions (one int32 each): the baseline to beat."""
    k = operator.index(k)
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    return 4 * k


# ----------------------------------------------------------------------------------------------------------
# Public API: decode
# ----------------------------------------------------------------------------------------------------------


def _check_n_decode(n: int, max_n: int) -> int:
    """n from the receiver must be sane before anything is sized from it; failures are PositionSetError."""
    try:
        value = operator.index(n)
        limit = operator.index(max_n)
    except TypeError as exc:
        raise PositionSetError(f"n and max_n must be integers, got {type(n).__name__}") from exc
    if isinstance(n, bool):
        raise PositionSetError("n must be an integer, got bool")
    if limit < 0 or limit > _N_LIMIT:
        raise PositionSetError(f"max_n must be in [0, {_N_LIMIT}], got {limit}")
    if value < 0 or value > limit:
        raise PositionSetError(f"n must be in [0, {limit}] (max_n), got {value}")
    return value


def _decode_bitmap(payload: bytes, n: int) -> np.ndarray:
    """Exact length and zero padding are required, so each set has exactly one bitmap."""
    expected = -(-n // 8)
    if len(payload) != expected:
        raise PositionSetError(f"bitmap for n={n} needs {expected} bytes, got {len(payload)}")
    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), bitorder="little")
    if bool(bits[n:].any()):
        raise PositionSetError(f"bitmap padding bits beyond n={n} are set")
    return np.flatnonzero(bits[:n]).astype(np.int64)


def _decode_delta(payload: bytes, n: int) -> np.ndarray:
    """The count is checked against n and the bytes left (each varint takes one or more) before parsing."""
    max_len = _varint_len(n)
    k, pos = _read_varint(payload, 0, max_len, "count")
    if k > n:
        raise PositionSetError(f"count mismatch: {k} positions claimed but n={n}")
    if k > len(payload) - pos:
        raise PositionSetError(f"truncated: count {k} needs {k} or more bytes, {len(payload) - pos} left")
    values = _parse_varints(np.frombuffer(payload, dtype=np.uint8, offset=pos), k, max_len, "delta")
    if k == 0:
        return values
    values[1:] += 1
    # Each value is < 2**42 and each partial sum before the first one past n is < n, so the first out-of-range
    # partial sum is exact even if a hostile stream would overflow later ones.
    idx = np.cumsum(values)
    if bool(np.any(idx >= n)):
        raise PositionSetError(f"index out of range: a position is >= n={n}")
    return idx


def _decode_ranges(payload: bytes, n: int) -> np.ndarray:
    """The run count is checked against n (at most ceil(n/2) maximal runs) and the bytes left first."""
    max_len = _varint_len(n)
    m, pos = _read_varint(payload, 0, max_len, "run count")
    if m > (n + 1) // 2:
        raise PositionSetError(f"count mismatch: {m} kept runs claimed, n={n} allows at most {(n + 1) // 2}")
    if 2 * m > len(payload) - pos:
        raise PositionSetError(f"truncated: {m} runs need {2 * m} or more bytes, {len(payload) - pos} left")
    values = _parse_varints(np.frombuffer(payload, dtype=np.uint8, offset=pos), 2 * m, max_len, "runs")
    if m == 0:
        return values
    values[1:] += 1
    bounds = np.cumsum(values)  # bounds[2i] = start of kept run i, bounds[2i+1] = its end (exclusive)
    if bool(np.any(bounds > n)):
        raise PositionSetError(f"index out of range: runs extend past n={n}")
    starts = bounds[0::2]
    lengths = bounds[1::2] - starts
    before = np.cumsum(lengths) - lengths
    total = int(lengths.sum())
    return np.arange(total, dtype=np.int64) + np.repeat(starts - before, lengths)


def _decode_elias_fano(payload: bytes, n: int) -> np.ndarray:
    """The stream length follows from (k, n), so it is checked before a single bit is unpacked."""
    k, pos = _read_varint(payload, 0, _varint_len(n), "count")
    if k > n:
        raise PositionSetError(f"count mismatch: {k} positions claimed but n={n}")
    total_bits = _ef_total_bits(n, k)
    expected = -(-total_bits // 8)
    if len(payload) - pos != expected:
        got = len(payload) - pos
        kind = "truncated" if got < expected else "trailing bytes"
        raise PositionSetError(f"{kind}: Elias-Fano k={k}, n={n} needs {expected} bytes, got {got}")
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8, offset=pos), bitorder="little")
    if bool(bits[total_bits:].any()):
        raise PositionSetError("Elias-Fano padding bits are set")
    low = _ef_low_bits(n, k)
    weights = np.left_shift(1, np.arange(low, dtype=np.int64))
    low_parts = bits[: k * low].reshape(k, low).astype(np.int64) @ weights
    ones = np.flatnonzero(bits[k * low : total_bits])
    if ones.size != k:
        raise PositionSetError(f"count mismatch: Elias-Fano upper bits hold {ones.size} values, expected {k}")
    idx = ((ones - np.arange(k)) << low) | low_parts
    if bool(np.any(idx >= n)):
        raise PositionSetError(f"index out of range: a position is >= n={n}")
    if bool(np.any(np.diff(idx) <= 0)):
        raise PositionSetError("positions are not strictly increasing")
    return idx


def decode_positions(data: bytes, n: int, *, max_n: int = 1 << 24, require_checksum: bool = False) -> np.ndarray:
    """Decode bytes from `encode_positions` against the receiver's own n; return sorted int64 positions.

    Raises PositionSetError for any invalid input (CRC mismatch, unknown tag, truncation, trailing bytes,
    non-minimal or over-long varints, counts that disagree with n or the data, out-of-range or non-increasing
    positions, set padding bits), for n outside ``[0, max_n]``, and for a v1 (unchecked) set when
    ``require_checksum``. Work is bounded by ``len(data)`` plus the size of the result.
    """
    n = _check_n_decode(n, max_n)
    try:
        payload = bytes(memoryview(data))
    except TypeError as exc:
        raise PositionSetError(f"data must be bytes-like, got {type(data).__name__}") from exc
    if not payload:
        raise PositionSetError("empty position set payload (no tag byte)")
    tag, payload = payload[0], payload[1:]
    if tag & CHECKED:
        if len(payload) < CHECK_BYTES:
            raise PositionSetError(f"truncated: a checked set needs {CHECK_BYTES} CRC bytes, got {len(payload)}")
        payload, check = payload[:-CHECK_BYTES], payload[-CHECK_BYTES:]
        if _crc(n, bytes([tag]) + payload) != check:
            raise PositionSetError(f"CRC mismatch: the set is corrupt, or was encoded for another n than {n}")
        tag &= ~CHECKED
    elif require_checksum:
        raise PositionSetError("unchecked (v1) position set where a CRC-checked one is required")
    try:
        codec = Codec(tag)
    except ValueError as exc:
        raise PositionSetError(f"unknown position-set codec tag {tag}") from exc
    if codec in (Codec.NONE, Codec.ALL):
        if payload:
            raise PositionSetError(f"trailing bytes: {codec.name} has no payload, got {len(payload)} bytes")
        return np.arange(n, dtype=np.int64) if codec == Codec.ALL else np.zeros(0, dtype=np.int64)
    if codec == Codec.BITMAP:
        return _decode_bitmap(payload, n)
    if codec == Codec.DELTA_VARINT:
        return _decode_delta(payload, n)
    if codec == Codec.RANGES:
        return _decode_ranges(payload, n)
    return _decode_elias_fano(payload, n)


# ----------------------------------------------------------------------------------------------------------
# Cross-tokenizer alignment
# ----------------------------------------------------------------------------------------------------------


def _offsets_array(offsets: Sequence[tuple[int, int]] | np.ndarray, name: str) -> np.ndarray:
    """Offsets as an (m, 2) int64 array; malformed spans would silently skew coverage, so reject them."""
    arr = np.asarray(offsets)
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integer (start, end) pairs, got shape {arr.shape}, {arr.dtype}")
    arr = arr.astype(np.int64)
    if bool(np.any(arr[:, 0] < 0)) or bool(np.any(arr[:, 1] < arr[:, 0])):
        raise ValueError(f"{name} must satisfy 0 <= start <= end for every token")
    return arr


def align_positions(
    src_offsets: Sequence[tuple[int, int]] | np.ndarray,
    kept_src: Sequence[int] | np.ndarray,
    dst_offsets: Sequence[tuple[int, int]] | np.ndarray,
    min_overlap: float = 0.5,
) -> np.ndarray:
    """Map kept token indices of one tokenizer onto another tokenizer of the same context string.

    Why: the study ran Scout only between sizes of one model family, which share a tokenizer, so a position
    index meant the same text at both ends. Across families (the study's open question) the edge's token 17 is
    not the cloud's token 17; the common ground is the character string. The kept source tokens cover a set of
    characters; a destination token with span ``[s, e)`` is kept when at least ``min_overlap`` of its ``e -
    s`` characters (and at least one) are covered. A zero-length destination token (BOS, special tokens) at
    ``p`` is kept when ``p`` falls inside a kept source span (``start <= p < end``) or a kept zero-length
    source token sits at the same ``p``. Tokens whose offsets overlap (several tokens for one multi-byte
    character) are judged on their own spans, so identity is exact for non-overlapping tokenizations.

    Offsets are ``(start, end)`` character pairs for *every* context token (as from a fast tokenizer's
    ``return_offsets_mapping``); ``kept_src`` may be in any order. Returns sorted int64 destination indices.
    Vectorised: the kept spans are merged into disjoint intervals, and each destination span's covered length
    is a difference of prefix sums found by binary search, so the cost is O((k + m) log k) with no
    per-character arrays.
    """
    if not 0.0 <= min_overlap <= 1.0:  # also rejects NaN
        raise ValueError(f"min_overlap must be in [0, 1], got {min_overlap}")
    src = _offsets_array(src_offsets, "src_offsets")
    dst = _offsets_array(dst_offsets, "dst_offsets")
    kept = np.asarray(kept_src)
    if kept.size == 0:
        kept = np.zeros(0, dtype=np.int64)
    elif kept.ndim != 1 or kept.dtype.kind not in "iu":
        raise ValueError(f"kept_src must be 1-D integers, got shape {kept.shape}, {kept.dtype}")
    elif int(kept.min()) < 0 or int(kept.max()) >= src.shape[0]:
        raise ValueError(f"kept_src indices must lie in [0, {src.shape[0]})")
    if dst.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)

    spans = src[kept.astype(np.int64)]
    empty_src = spans[:, 0] == spans[:, 1]
    zero_points = np.unique(spans[empty_src, 0])
    spans = spans[~empty_src]
    spans = spans[np.argsort(spans[:, 0], kind="stable")]

    # Merge kept spans into disjoint sorted intervals [merged_start, merged_end).
    if spans.shape[0]:
        reach = np.maximum.accumulate(spans[:, 1])
        opens = np.ones(spans.shape[0], dtype=bool)
        opens[1:] = spans[1:, 0] > reach[:-1]
        first = np.flatnonzero(opens)
        last = np.concatenate((first[1:] - 1, [spans.shape[0] - 1]))
        merged_start = spans[first, 0]
        merged_end = reach[last]
    else:
        merged_start = merged_end = np.zeros(0, dtype=np.int64)
    covered_prefix = np.concatenate(([0], np.cumsum(merged_end - merged_start)))
    sentinel = np.iinfo(np.int64).max
    start_ext = np.concatenate((merged_start, [sentinel]))

    def covered_before(x: np.ndarray) -> np.ndarray:
        """Kept characters in [0, x): whole intervals ending at or before x, plus a part of the next one."""
        i = np.searchsorted(merged_end, x, side="right")
        return covered_prefix[i] + np.clip(x - start_ext[i], 0, None)

    s, e = dst[:, 0], dst[:, 1]
    length = e - s
    covered = covered_before(e) - covered_before(s)
    keep = (length > 0) & (covered > 0) & (covered >= min_overlap * length - _OVERLAP_EPS)
    point = length == 0
    if bool(point.any()):
        p = s[point]
        i = np.searchsorted(merged_end, p, side="right")
        inside = start_ext[i] <= p
        keep[point] = inside | np.isin(p, zero_points)
    return np.flatnonzero(keep).astype(np.int64)
