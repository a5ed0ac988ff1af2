"""The fuzz targets (`scout_testbed.fuzz`): every parser of bytes that cross a process or come from a file.

Each target's seeds are made by the project's own encoders (small caches, every codec and quantizer setting that
changes the header; position sets of every codec; a calibrated-looking plan; one valid instance of every bus
message; slices of the packaged traces and datasets), so the mutations start from the accepted inputs.
Imports of the project happen inside the functions: `targets()` is called by the atheris child inside its
instrumentation context, so the modules are instrumented as they load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

from scout_testbed.fuzz import (
    MAX_LEN,
    Rejected,
    Result,
    Target,
    havoc,
    load_corpus,
    maxrss,
    mutate_blob,
    mutate_delta,
    mutate_json_bytes,
    mutate_lines,
    mutate_positions,
    mutate_zstd,
    record,
    run_one,
)

_SHA = hashlib.sha256(b"doc").hexdigest()
_BLOB_SHA = hashlib.sha256(b"blob").hexdigest()


def _caches() -> list[object]:
    """Tiny caches: two layers, bf16 and fp32, a pruned one, one whose values have another head_dim."""
    import torch

    from scout.kvcache import KVCache

    g = torch.Generator().manual_seed(0)

    def kv(layers: int, heads: int, seq: int, dim: int, dtype: torch.dtype, v_dim: int | None = None) -> KVCache:
        keys = [torch.randn(heads, seq, dim, generator=g).to(dtype) for _ in range(layers)]
        values = [torch.randn(heads, seq, v_dim or dim, generator=g).to(dtype) for _ in range(layers)]
        return KVCache(keys, values, torch.arange(seq))

    pruned = kv(2, 2, 12, 8, torch.bfloat16)
    pruned = pruned.select(torch.tensor([0, 3, 4, 9, 11]))
    return [kv(2, 2, 12, 8, torch.bfloat16), kv(1, 1, 5, 4, torch.float32), pruned, kv(2, 1, 7, 8, torch.float16, 4)]


@cache
def blob_seeds() -> tuple[bytes, ...]:
    """scout-kv blobs of every bit width, both axes, symmetric and not, raw and quantized layers mixed."""
    from scout.codec.registry import get_codec

    out = []
    for i, kv in enumerate(_caches()):
        for spec in ("bf16", "int8", "int4-token", "int2", "mixed:0=16", "int4-study", "int8:keep=0"):
            codec = get_codec(spec)
            out.append(codec.to_blob(codec.encode(kv), model_fingerprint=f"model-{i}", meta={"k": "v"}))
    return tuple(out)


@cache
def delta_seeds() -> tuple[bytes, ...]:
    from scout.codec.registry import get_codec

    out = []
    for i, kv in enumerate(_caches()):
        for spec in ("delta-int4", "delta-int8-token:group=3", "delta-int2:group=2"):
            codec = get_codec(spec)
            out.append(codec.to_blob(codec.encode(kv), model_fingerprint=f"model-{i}"))
    return tuple(out)


@cache
def zstd_seeds() -> tuple[bytes, ...]:
    from scout.codec.registry import get_codec

    out = []
    for kv in _caches()[:2]:
        for spec in ("int4+zstd", "bf16+zstd1", "delta-int4+zstd"):
            codec = get_codec(spec)
            out.append(codec.to_blob(codec.encode(kv), model_fingerprint="m"))
    return tuple(out)


def _parse_blob(data: bytes) -> object:
    from scout.codec.wire import decode_blob

    return decode_blob(data).kvcache()  # dequantize too: what a decoder does next must not crash either


def _parse_delta(data: bytes) -> object:
    from scout.codec.delta import decode_delta_blob, delta_decode

    return delta_decode(decode_delta_blob(data))


def _parse_zstd(data: bytes) -> object:
    from scout.codec.entropy import decompress_blob
    from scout.codec.wire import peek_header

    raw = decompress_blob(data)
    if raw[:8] == b"SKVDELT1":
        return _parse_delta(raw)
    peek_header(raw)
    return _parse_blob(raw)


def position_seeds() -> list[bytes]:
    """``n`` (u32 LE) + an encoded set, for every codec that applies, checked and (a few) unchecked v1."""
    import numpy as np

    from scout.positions import Codec, encode_positions

    rng = np.random.default_rng(0)
    sets = [([], 0), ([], 13), (list(range(13)), 13), ([0, 2, 4, 6], 8), ([1, 5, 9], 16), ([300], 1000)]
    sets += [([*range(50, 180), 400, 999], 1000), (np.flatnonzero(rng.random(333) < 0.75).tolist(), 333)]
    out = []
    for idx, n in sets:
        for codec in Codec:
            for checked in (True, False) if n == 16 else (True,):
                with contextlib.suppress(ValueError):  # NONE/ALL for a set they cannot express
                    out.append(struct.pack("<I", n) + encode_positions(idx, n, codec, checked=checked))
    return out


def _parse_positions(data: bytes) -> object:
    from scout.positions import PositionSetError, decode_positions

    if len(data) < 4:
        raise PositionSetError("fuzz input shorter than its n prefix")
    return decode_positions(data[4:], struct.unpack_from("<I", data)[0], max_n=1 << 20)


def plan_seeds() -> list[bytes]:
    from scout.codec.mixed import MixedPlan
    from scout.codec.quant import BitPlan, QuantSpec

    plans = [
        MixedPlan(BitPlan(4, {0: 16}), QuantSpec(4), "0123456789abcdef", 24, "qwen", {"table": [[0, 0.5]]}),
        MixedPlan(BitPlan(8, {1: 4, 2: 2}), QuantSpec(8, "token", "token", 64, True), "ff", 3),
    ]
    return [json.dumps(p.to_json()).encode() for p in plans]


def _parse_plan(data: bytes) -> object:
    from scout.codec.mixed import MixedPlan

    plan = MixedPlan.loads(data, expected_fingerprint=None)
    return plan.per_layer


def message_samples() -> list[object]:
    """One valid instance of every message model (the DecodeRequest in a KV mode and in scout mode)."""
    from scout.positions import encode_positions
    from scout_runtime.errors import ErrorCode
    from scout_runtime.messages import (
        AskReply,
        AskRequest,
        DecodeRequest,
        DecodeResult,
        EncodeReply,
        EncodeRequest,
        ErrorReply,
        Health,
        LinkState,
        Plan,
        PlanRequest,
    )

    plan = Plan(request_id="r1", mode="int8", retention=0.5, bit_plan="int8", expected_bytes=1234, reason="fits")
    key = f"scout:blob:car-7:{_BLOB_SHA}"
    common = {"request_id": "r1", "device_id": "car-7", "model": "m", "model_fingerprint": "0123456789abcdef"}
    positions = DecodeRequest.encode_positions(encode_positions([1, 5, 9], 100))
    return [
        AskRequest(
            request_id="r1", device_id="car-7", document="Paris is in France.", question="Where?", deadline_ms=9
        ),
        AskReply(request_id="r1", device_id="car-7", answer="Paris", mode="int8", bytes_sent=1, timings={"a": 1.0}),
        PlanRequest(request_id="r1", device_id="car-7", context_tokens=1024, deadline_ms=2000, elapsed_ms=12.5),
        plan,
        DecodeRequest(
            **common,
            reply_to="_INBOX.a",
            mode="int8",
            blob_key=key,
            blob_bytes=4,
            blob_sha256=_BLOB_SHA,
            context_tokens=100,
            suffix_token_ids=[1, 2],
            question="Q",
        ),
        DecodeRequest(
            **common,
            reply_to="_INBOX.a",
            mode="scout",
            context_tokens=100,
            document_ref=_SHA,
            positions=positions,
            question="Q",
        ),
        DecodeResult(request_id="r1", device_id="car-7", answer="Paris", mode="int8", model="m", generated_tokens=2),
        EncodeRequest(
            **common,
            reply_to="_INBOX.a",
            mode="int4",
            bit_plan="int4",
            raw_blob_key=key,
            raw_blob_bytes=4,
            raw_blob_sha256=_BLOB_SHA,
            positions=positions,
            context_start=2,
            context_tokens=100,
            prompt_tokens=110,
            question="Q",
        ),
        EncodeReply(
            request_id="r1", device_id="car-7", blob_key=key, blob_bytes=4, blob_sha256=_BLOB_SHA, kept_tokens=3
        ),
        ErrorReply(code=ErrorCode.BLOB_MISSING, message="gone", request_id="r1"),
        LinkState(device_id="car-7", rate_bps=1e8, source="shaper", at=1700000000.0),
        Health(role="selector", instance="pod-1", ready=True, checks={"bus": True}, at=1.0),
    ]


def _message_target(sample: object) -> Target:
    from scout_runtime.errors import ScoutError
    from scout_runtime.messages import parse

    cls = type(sample)
    seeds = sample.to_bytes()  # type: ignore[attr-defined]

    def run(data: bytes) -> object:
        msg = parse(cls, data)
        if hasattr(msg, "kept_positions") and getattr(msg, "positions", None) is not None:
            msg.kept_positions()  # the decoder's next step on a scout-mode request
        return msg

    name = f"msg-{cls.type_name()}"  # type: ignore[attr-defined]
    return Target(name, run, (ScoutError,), lambda: [seeds], mutate_json_bytes)


def _scratch() -> Path:
    """A per-process scratch folder for the file targets (tmpfs where there is one: one write per input)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    return Path(tempfile.mkdtemp(prefix="scout-fuzz-", dir=base))


def _file_target(name: str, seeds: Callable[[], list[bytes]], check: Callable[[Path], None]) -> Target:
    folder = _scratch() / "squad_v2"
    folder.mkdir()
    path = folder / "input"

    def run(data: bytes) -> object:
        path.write_bytes(data)
        return check(path)

    return Target(name, run, (Rejected,), seeds, mutate_lines)


def trace_seeds() -> list[bytes]:
    from scout.dataroot import packaged_dir

    out = [b"t_s,mbps\n0.0,1.5\n0.5,2\n1.0,0\n"]
    for csv in sorted((packaged_dir() / "traces").glob("*.csv")):
        out.append(b"\n".join(csv.read_bytes().split(b"\n")[:24]) + b"\n")
    return out


def _check_trace(path: Path) -> None:
    from scout.channel.traces import check_trace_file

    problem = check_trace_file(path)
    if problem is not None:
        raise Rejected(problem)


def dataset_seeds() -> list[bytes]:
    from scout.dataroot import packaged_dir

    out = []
    for jsonl in sorted((packaged_dir() / "datasets").glob("*/*.jsonl")):
        lines = []
        for line in jsonl.read_bytes().split(b"\n")[:3]:
            rec = json.loads(line)
            rec["context"] = str(rec.get("context", ""))[:200]
            lines.append(json.dumps(rec).encode())
        out.append(b"\n".join(lines) + b"\n")
    return out


def _check_dataset(path: Path) -> None:
    from scout.datasets import check_dataset_file

    _, problems = check_dataset_file(path)
    if problems:
        raise Rejected(problems[0])


def targets() -> dict[str, Target]:
    """Every target by name."""
    from scout.codec.mixed import PlanFormatError
    from scout.codec.wire import BlobError
    from scout.positions import PositionSetError

    out = [
        Target("wire", _parse_blob, (BlobError,), lambda: list(blob_seeds()), mutate_blob),
        Target("delta", _parse_delta, (BlobError,), lambda: list(delta_seeds()), mutate_delta),
        Target("zstd", _parse_zstd, (BlobError,), lambda: list(zstd_seeds()), mutate_zstd),
        Target("positions", _parse_positions, (PositionSetError,), position_seeds, mutate_positions),
        Target("plan", _parse_plan, (PlanFormatError,), plan_seeds, _mutate_plan),
        *(_message_target(m) for m in message_samples()),
        _file_target("trace-csv", trace_seeds, _check_trace),
        _file_target("dataset-jsonl", dataset_seeds, _check_dataset),
    ]
    by_name: dict[str, Target] = {}
    for t in out:  # two DecodeRequest samples (KV and scout mode): one target, both seeds
        if t.name in by_name:
            first, second = by_name[t.name].seeds, t.seeds
            t = Target(t.name, t.parse, t.typed, lambda a=first, b=second: a() + b(), t.mutate)
        by_name[t.name] = t
    return by_name


def _mutate_plan(data: bytes, rng: random.Random) -> bytes:
    """Plan files: JSON edits, plus the issue's cases (a leading 0xff byte, deep nesting) now and then."""
    roll = rng.random()
    if roll < 0.03:
        return b"\xff" + data
    if roll < 0.06:
        depth = rng.choice((100, 5000, 100_000))
        return b"[" * depth + b"]" * depth
    return mutate_json_bytes(data, rng) if roll < 0.9 else havoc(data, rng)


def _child(name: str, inputs: int, seed: int, out: Path, corpus: str) -> None:
    """The atheris child of `run_atheris` (``python -m scout_testbed.fuzz_targets``): instrument the project's
    modules as they load, then run libFuzzer with the structure-aware mutator as its custom mutator."""
    import atheris

    with atheris.instrument_imports(include=["scout", "scout_runtime"]):
        target = targets()[name]
        seeds = target.seeds()  # the seed builders import more of the project: inside the context too
    work = Path(tempfile.mkdtemp(prefix="scout-fuzz-corpus-"))
    for i, data in enumerate([*seeds, *(load_corpus(Path(corpus), name) if corpus else [])]):
        (work / f"seed-{i}").write_bytes(data)
    result = Result(name)
    rss0, t0 = maxrss(), time.perf_counter()

    def one(data: bytes) -> None:
        record(result, data, *run_one(target, data))
        if result.inputs % 500 == 0:
            print(f"progress {result.inputs}", flush=True)
        if result.inputs >= inputs:
            result.seconds = time.perf_counter() - t0
            result.rss_growth_bytes = maxrss() - rss0
            body = result.to_json() | {"rss_growth_bytes": result.rss_growth_bytes}
            body["failures"] = [{"input_hex": d.hex(), "error": e} for d, e in result.failures]
            out.write_text(json.dumps(body))
            sys.stdout.flush()
            os._exit(0)

    def mutator(data: bytes, max_size: int, mut_seed: int) -> bytes:
        rng = random.Random(mut_seed)
        if rng.random() < 0.25:
            return atheris.Mutate(data, max_size)
        try:
            return target.mutate(data, rng)[:max_size]
        except Exception:  # a mutator bug must not end the run (libFuzzer exits on one, and hangs in exit)
            return atheris.Mutate(data, max_size)

    args = [sys.argv[0], f"-seed={seed + 1}", f"-max_len={MAX_LEN}", "-rss_limit_mb=4096", str(work)]
    atheris.Setup(args, one, custom_mutator=mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), sys.argv[5])
