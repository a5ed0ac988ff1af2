"""Fuzzing of every parser that takes bytes from the network, the store or a file (issue 22).

Why mutations of valid encodings: random bytes die at the first length or magic check, so they test nothing
behind it. Every target here starts from encodings made by the project's own encoders and mutates them with
knowledge of the format: JSON headers are edited as JSON (a field of the wrong type, a huge or negative integer,
a nested structure, a dropped key), and checksums (the wire format's SHA-256, a position set's CRC-32, a delta
frame's length) are re-computed after the edit, so that the checks *behind* the checksum are reached too.
Byte-level havoc (flips, interesting integers, insertions, splices) runs alongside.

Each input has exactly one outcome: ``accepted``, ``rejected`` (the parser's typed error), ``untyped`` (any
other exception: a bug), ``slow`` (over 1 s) or ``memory`` (the process's peak RSS grew by over 256 MB during
it). RSS is a high-water mark, so the run's total peak-RSS growth is reported as well: while it stays under
256 MB, no single input can have used more.

Two engines: `fuzz` (plain Python, deterministic from a seed; the CI test and the fallback) and, when `atheris`
is installed, `run_atheris` (libFuzzer's coverage feedback over the instrumented `scout` and `scout_runtime`
code, with the structure-aware mutator as its custom mutator). Module-level imports are the standard library
only, so the atheris child can instrument the project's modules as they are first imported.
"""

from __future__ import annotations

import json
import random
import resource
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUTCOMES = ("accepted", "rejected", "untyped", "slow", "memory")
SLOW_S = 1.0
MEMORY_BYTES = 256 * 1024 * 1024
MAX_LEN = 1 << 16
"""Largest input a mutation may produce (seeds are a few KB; a bigger input only tests the size limits)."""
_INTERESTING_INTS = (0, 1, -1, 2, 7, 8, 255, 256, 4096, 65535, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64)
_INTERESTING_JSON: tuple[Any, ...] = (
    *_INTERESTING_INTS,
    10**8,
    10**100,
    -(2**63),
    None,
    True,
    False,
    0.5,
    "",
    "x",
    "16",
    "bfloat16",
    "channel",
    [],
    [0, 0, 0],
    {},
    {"a": 1},
    [[[[[]]]]],
)
_RAW_TOKENS = (b"1" * 5000, b"1e999", b"NaN", b"-Infinity", b"[" * 5000, b'"\xff"', b"-0", b"9" * 30)


class Rejected(ValueError):
    """A file checker (`check_trace_file`, `check_dataset_file`) reported a problem: its typed answer."""


@dataclass(frozen=True)
class Target:
    """One parser under test: how to call it, what it may raise, valid inputs, and a format-aware mutator."""

    name: str
    parse: Callable[[bytes], object]
    typed: tuple[type[BaseException], ...]
    seeds: Callable[[], list[bytes]]
    mutate: Callable[[bytes, random.Random], bytes]


@dataclass
class Result:
    """Counts per outcome for one target, with the first few untyped failures (input and message) kept."""

    target: str
    counts: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    slowest_s: float = 0.0
    rss_growth_bytes: int = 0
    failures: list[tuple[bytes, str]] = field(default_factory=list)

    @property
    def inputs(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "inputs": self.inputs,
            "counts": {k: self.counts.get(k, 0) for k in OUTCOMES},
            "seconds": round(self.seconds, 3),
            "inputs_per_s": round(self.inputs / self.seconds, 1) if self.seconds else None,
            "slowest_s": round(self.slowest_s, 4),
            "rss_growth_mb": round(self.rss_growth_bytes / 2**20, 1),
            "failures": [{"input_hex": d[:512].hex(), "error": e} for d, e in self.failures],
        }

    def merge(self, other: Result) -> None:
        self.counts.update(other.counts)
        self.seconds += other.seconds
        self.slowest_s = max(self.slowest_s, other.slowest_s)
        self.rss_growth_bytes = max(self.rss_growth_bytes, other.rss_growth_bytes)
        self.failures += other.failures[: max(0, 20 - len(self.failures))]


def maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_one(target: Target, data: bytes) -> tuple[str, str, float]:
    """(outcome, error text for an untyped failure, seconds) of one input."""
    rss0, t0 = maxrss(), time.perf_counter()
    detail = ""
    try:
        target.parse(data)
        outcome = "accepted"
    except target.typed:
        outcome = "rejected"
    except Exception as e:  # the point: anything else is a finding
        frame = traceback.extract_tb(e.__traceback__)[-1]
        outcome, detail = "untyped", f"{type(e).__name__}: {str(e)[:200]} ({Path(frame.filename).name}:{frame.lineno})"
    elapsed = time.perf_counter() - t0
    if outcome != "untyped":
        if maxrss() - rss0 > MEMORY_BYTES:
            outcome = "memory"
        elif elapsed > SLOW_S:
            outcome = "slow"
    return outcome, detail, elapsed


def replay(target: Target, inputs: Iterable[bytes]) -> Result:
    """Run `target` on each input as is (a saved corpus)."""
    result = Result(target.name)
    rss0, t0 = maxrss(), time.perf_counter()
    for data in inputs:
        record(result, data, *run_one(target, data))
    result.seconds = time.perf_counter() - t0
    result.rss_growth_bytes = maxrss() - rss0
    return result


def record(result: Result, data: bytes, outcome: str, detail: str, elapsed: float) -> None:
    result.counts[outcome] += 1
    result.slowest_s = max(result.slowest_s, elapsed)
    if outcome == "untyped" and len(result.failures) < 20:
        result.failures.append((data, detail))


def fuzz(target: Target, inputs: int, *, seed: int = 0, corpus: Iterable[bytes] = ()) -> Result:
    """`inputs` mutations of the seeds and the saved corpus, deterministic for a given `seed` (no coverage
    feedback: accepted mutants join the parent pool, a little like a corpus, so mutations stack)."""
    rng = random.Random(seed)
    pool = [*target.seeds(), *corpus]
    result = Result(target.name)
    rss0, t0 = maxrss(), time.perf_counter()
    for _ in range(inputs):
        data = target.mutate(rng.choice(pool), rng)[:MAX_LEN]
        outcome, detail, elapsed = run_one(target, data)
        record(result, data, outcome, detail, elapsed)
        if outcome == "accepted" and len(pool) < 512 and rng.random() < 0.2:
            pool.append(data)
    result.seconds = time.perf_counter() - t0
    result.rss_growth_bytes = maxrss() - rss0
    return result


# ------------------------------------------------------------------------------------------------------------
# mutators
# ------------------------------------------------------------------------------------------------------------
def havoc(data: bytes, rng: random.Random, rounds: int = 0) -> bytes:
    """1-4 stacked byte-level edits: bit flips, interesting bytes and integers, insert, delete, duplicate."""
    buf = bytearray(data)
    for _ in range(rounds or rng.randint(1, 4)):
        op = rng.randrange(8)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[min(pos, len(buf) - 1)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2:
            width = rng.choice((1, 2, 4, 8))
            value = rng.choice(_INTERESTING_INTS) % (1 << (8 * width))
            buf[pos : pos + width] = value.to_bytes(width, "little")
        elif op == 3:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 4 and buf:
            del buf[pos : pos + rng.randint(1, 16)]
        elif op == 5 and buf:
            start = rng.randrange(len(buf))
            buf[pos:pos] = buf[start : start + rng.randint(1, 64)]
        elif op == 6:
            del buf[pos:]
        else:
            buf[pos:pos] = rng.choice(_RAW_TOKENS)[: rng.choice((1, 8, 5000))]
    return bytes(buf)


def _nodes(obj: Any, out: list[tuple[Any, Any]]) -> None:
    """Every (container, key) pair of a JSON value, depth first."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        out.append((obj, key))
        _nodes(value, out)


def mutate_json(obj: Any, rng: random.Random) -> Any:
    """One structural edit of a JSON value (in place where possible; returns the new root). A string that
    holds JSON itself (a blob's ``layers``) is edited as JSON and written back."""
    nodes: list[tuple[Any, Any]] = []
    _nodes(obj, nodes)
    if not nodes:
        return rng.choice(_INTERESTING_JSON)
    parent, key = rng.choice(nodes)
    value = parent[key]
    op = rng.randrange(6)
    if isinstance(value, str) and value[:1] in "[{" and op < 3:
        try:
            parent[key] = json.dumps(mutate_json(json.loads(value), rng), separators=(",", ":"))
            return obj
        except ValueError:
            pass
    if op == 0 and isinstance(parent, dict):
        del parent[key]
    elif op == 1 and isinstance(parent, dict):
        parent[rng.choice(("extra", "k", "v", "bits", "shape", "0"))] = rng.choice(_INTERESTING_JSON)
    elif op == 2 and isinstance(parent, list):
        parent.insert(key, parent[key]) if rng.random() < 0.5 else parent.pop(key)
    elif op == 3 and isinstance(value, int) and not isinstance(value, bool):
        parent[key] = value + rng.choice((-1, 1, value, -2 * value, 2**31, 2**64))
    elif op == 4 and isinstance(value, str) and value.isdigit():
        parent[key] = str(rng.choice((*_INTERESTING_INTS, 10**8, 10**30, -1)))
    else:
        parent[key] = json.loads(json.dumps(rng.choice(_INTERESTING_JSON)))
    return obj


def mutate_json_bytes(data: bytes, rng: random.Random) -> bytes:
    """A JSON document: structural edits (70 %), raw token splices, or byte havoc."""
    roll = rng.random()
    if roll < 0.7:
        try:
            return json.dumps(mutate_json(json.loads(data), rng)).encode()
        except (ValueError, RecursionError):
            pass
    if roll < 0.85:
        pos = rng.randrange(len(data) + 1)
        return data[:pos] + rng.choice(_RAW_TOKENS) + data[pos + rng.randint(0, 4) :]
    return havoc(data, rng)


# ------------------------------------------------------------------------------------------------------------
# the wire format, delta and zstd frames: mutate, then re-seal the checksum
# ------------------------------------------------------------------------------------------------------------
def _canonical(header: dict[str, Any]) -> bytes:
    """As `scout.codec.wire` hashes a header (sorted keys, no whitespace, ASCII)."""
    return json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _split_blob(blob: bytes) -> tuple[dict[str, Any], bytes] | None:
    if len(blob) < 8:
        return None
    (n,) = struct.unpack_from("<Q", blob)
    try:
        header = json.loads(blob[8 : 8 + n])
    except (ValueError, RecursionError):
        return None
    return (header, blob[8 + n :]) if isinstance(header, dict) else None


def _chunk_digests(meta: dict[str, Any], payload: bytes) -> str:
    """The v2 `xxh3_chunks` run for the payload, at the chunk size the header claims (a size the reader refuses
    anyway, or one too small to hash cheaply, keeps the old run: the mutation is then caught before the digests)."""
    from scout.codec.checksum import MIN_CHUNK_BYTES, digest128

    text = meta.get("xxh3_chunk")
    if not isinstance(text, str) or not text.isdigit() or len(text) > 12 or int(text) < MIN_CHUNK_BYTES:
        return str(meta.get("xxh3_chunks", ""))
    chunk = int(text)
    return "".join(digest128(payload[at : at + chunk]) for at in range(0, len(payload), chunk))


def seal_blob(header: dict[str, Any], payload: bytes) -> bytes:
    """A scout-kv blob from an (edited) header and payload, its checksums re-computed where it has them: v1's
    SHA-256, or v2's per-chunk and header XXH3-128 digests (so a mutation reaches the checks after them)."""
    import hashlib

    from scout.codec.checksum import CHUNKS_KEY, HEADER_KEY, SHA_KEY, digest128

    meta = header.get("__metadata__")
    if isinstance(meta, dict) and SHA_KEY in meta:
        meta.pop(SHA_KEY, None)
        digest = hashlib.sha256(_canonical(header))
        digest.update(payload)
        meta[SHA_KEY] = digest.hexdigest()
    elif isinstance(meta, dict) and (HEADER_KEY in meta or CHUNKS_KEY in meta):
        meta.pop(HEADER_KEY, None)
        if CHUNKS_KEY in meta:
            meta[CHUNKS_KEY] = _chunk_digests(meta, payload)
        try:
            meta[HEADER_KEY] = digest128(_canonical(header))
        except (ValueError, RecursionError):
            meta[HEADER_KEY] = "0" * 32
    try:
        head = _canonical(header)
    except (ValueError, RecursionError):
        head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + payload


def mutate_blob(blob: bytes, rng: random.Random) -> bytes:
    """A scout-kv blob: edit the header as JSON or the payload as bytes, then (90 %) re-seal the checksum."""
    parts = _split_blob(blob)
    if parts is None or rng.random() < 0.1:
        return havoc(blob, rng)
    header, payload = parts
    roll = rng.random()
    meta = header.get("__metadata__")
    if roll < 0.4 and isinstance(meta, dict) and meta:
        _mutate_meta(meta, rng)
    elif roll < 0.7:
        header = mutate_json(header, rng)
        if not isinstance(header, dict):
            return json.dumps(header).encode()
    elif payload:
        payload = _overwrite(payload, rng) if rng.random() < 0.7 else havoc(payload, rng)
    if rng.random() < 0.9:
        return seal_blob(header, payload)
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + payload


def _mutate_meta(meta: dict[str, Any], rng: random.Random) -> None:
    """Edit one `__metadata__` value and keep it a string (the map must be strings to get past the first check):
    JSON inside (``layers``, ``user``) as JSON, a decimal as another interesting decimal."""
    key = rng.choice(sorted(meta))
    value = meta[key]
    if not isinstance(value, str):
        meta[key] = str(value)
    elif value[:1] in "[{":
        try:
            meta[key] = json.dumps(mutate_json(json.loads(value), rng), separators=(",", ":"))
        except (ValueError, RecursionError):
            meta[key] = value[: rng.randrange(len(value) + 1)]
    elif value.isdigit() or rng.random() < 0.3:
        meta[key] = str(rng.choice((*_INTERESTING_INTS, 10**8, 10**30, int(value) + 1 if value.isdigit() else 3)))
    else:
        meta[key] = rng.choice(("", "x", "1", " 1", "+1", "1_0", "\u0661", value + "x"))


def _overwrite(data: bytes, rng: random.Random) -> bytes:
    """Length-preserving edits of a payload (flips, NaN/inf/zero bit patterns), so the tensor offsets still tile it
    and the values themselves are what the decoder meets behind the checksum."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(buf))
        pattern = rng.choice(
            (b"\xff", b"\x00\x7e", b"\x00\x7c", b"\x00\xfc", b"\xc0\x7f", b"\xff\xff\xff\x7f", b"\x80")
        )
        buf[pos : pos + len(pattern)] = pattern[: len(buf) - pos]
    return bytes(buf)


def mutate_delta(frame: bytes, rng: random.Random) -> bytes:
    """A delta frame: one of its two blobs mutated (and re-sealed), the anchor length re-written to match."""
    if len(frame) < 16 or rng.random() < 0.1:
        return havoc(frame, rng)
    (n,) = struct.unpack_from("<Q", frame, 8)
    first, second = frame[16 : 16 + n], frame[16 + n :]
    if rng.random() < 0.5:
        first = mutate_blob(first, rng)
    else:
        second = mutate_blob(second, rng)
    return frame[:8] + struct.pack("<Q", len(first)) + first + second


def mutate_zstd(frame: bytes, rng: random.Random) -> bytes:
    """A zstd frame: decompress, mutate the blob inside, compress again (80 %); else byte havoc of the frame."""
    import zstandard

    if rng.random() < 0.8:
        try:
            if not 0 <= zstandard.frame_content_size(frame) <= MAX_LEN:
                return havoc(frame, rng)
            inner = zstandard.ZstdDecompressor().decompress(frame, max_output_size=MAX_LEN)
        except (zstandard.ZstdError, MemoryError):
            return havoc(frame, rng)
        inner = mutate_delta(inner, rng) if inner[:8] == b"SKVDELT1" else mutate_blob(inner, rng)
        return zstandard.ZstdCompressor(level=1, write_content_size=True).compress(inner)
    return havoc(frame, rng)


def mutate_positions(data: bytes, rng: random.Random) -> bytes:
    """``n`` (u32 LE) + a position set: edit the set (re-computing a checked set's CRC, 80 %) or n."""
    from scout.positions import CHECK_BYTES, CHECKED

    if len(data) < 5 or rng.random() < 0.1:
        return havoc(data, rng)
    n, body = struct.unpack_from("<I", data)[0], data[4:]
    if rng.random() < 0.1:
        return struct.pack("<I", max(0, n + rng.choice((-8, -1, 1, 8, 1000)))) + body
    checked = bool(body[0] & CHECKED) and len(body) > CHECK_BYTES
    core = havoc(body[:-CHECK_BYTES] if checked else body, rng)
    if checked and core and core[0] & CHECKED and rng.random() < 0.8:
        import zlib

        core += zlib.crc32(core, zlib.crc32(n.to_bytes(8, "little"))).to_bytes(4, "little")
    return struct.pack("<I", n) + core


def mutate_lines(data: bytes, rng: random.Random) -> bytes:
    """A line-oriented text file (CSV, JSONL): edit one line as JSON or text, drop or repeat lines, or havoc."""
    lines = data.split(b"\n")
    i = rng.randrange(len(lines))
    roll = rng.random()
    if roll < 0.4:
        lines[i] = mutate_json_bytes(lines[i], rng) if lines[i][:1] == b"{" else havoc(lines[i], rng)
    elif roll < 0.55:
        lines.insert(i, lines[rng.randrange(len(lines))])
    elif roll < 0.65:
        del lines[i]
    elif roll < 0.85:
        fields = lines[i].split(b",")
        fields[rng.randrange(len(fields))] = rng.choice((b"nan", b"inf", b"-1", b"1e309", b"", b"0x10", *_RAW_TOKENS))
        lines[i] = b",".join(fields)
    else:
        return havoc(data, rng)
    return b"\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# the saved corpus, and the coverage-guided engine (atheris, one child process per target)
# ------------------------------------------------------------------------------------------------------------
def load_corpus(folder: Path, target: str) -> list[bytes]:
    """The saved inputs of one target (``<folder>/<target>/*``), in name order."""
    sub = folder / target
    return [p.read_bytes() for p in sorted(sub.iterdir()) if p.is_file()] if sub.is_dir() else []


def save_input(folder: Path, target: str, data: bytes) -> Path:
    """Save an input under a name derived from its content (saving it twice is harmless)."""
    import hashlib

    path = folder / target / f"{hashlib.sha1(data).hexdigest()[:16]}.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def atheris_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("atheris") is not None


def run_atheris(
    target: str, inputs: int, *, seed: int, corpus: Path | None, progress: Callable[[int], None] | None = None
) -> Result:
    """`inputs` coverage-guided inputs for one target, in a child process (libFuzzer owns its process and
    instrumentation must see the modules load). The child prints its count as it goes and leaves a JSON result."""
    import subprocess

    with tempfile.TemporaryDirectory(prefix="scout-fuzz-") as tmp:
        out, log = Path(tmp) / "result.json", Path(tmp) / "libfuzzer.log"
        cmd = [
            sys.executable,
            "-m",
            "scout_testbed.fuzz_targets",
            target,
            str(inputs),
            str(seed),
            str(out),
            str(corpus or ""),
        ]
        with open(log, "wb") as err:
            child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
            assert child.stdout is not None
            for line in child.stdout:
                if line.startswith("progress ") and progress is not None:
                    progress(int(line.split()[1]))
            code = child.wait()
        if not out.exists():
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"fuzz child for {target} exited {code} without a result:\n{tail}")
        obj = json.loads(out.read_text())
    result = Result(target, Counter(obj["counts"]), obj["seconds"], obj["slowest_s"], obj["rss_growth_bytes"])
    result.failures = [(bytes.fromhex(f["input_hex"]), f["error"]) for f in obj["failures"]]
    return result
