"""The inputs issue 22 reported (and the fuzzer found), built from valid encodings: each must be a typed error.

Also used to (re)write the saved corpus: ``python tests/fuzz/fuzz_regressions.py`` is not needed in CI; the corpus
files are committed, and `test_fuzz_corpus.py` checks that every case here is in it.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import torch

from scout.codec.delta import delta_encode, encode_delta_blob
from scout.kvcache import KVCache
from scout.positions import encode_positions
from scout_testbed.fuzz import _split_blob, seal_blob
from scout_testbed.fuzz_targets import plan_seeds


def _blob_edit(blob: bytes, edit) -> bytes:
    parts = _split_blob(blob)
    assert parts is not None
    header, payload = parts
    edit(header)
    return seal_blob(header, payload)


def _layers_edit(fn):
    def edit(header: dict) -> None:
        layers = json.loads(header["__metadata__"]["layers"])
        fn(layers)
        header["__metadata__"]["layers"] = json.dumps(layers)

    return edit


def wire_cases() -> dict[str, bytes]:
    from scout.codec.wire import encode_blob

    blob = encode_blob(KVCache([torch.zeros(1, 2, 4)], [torch.zeros(1, 2, 4)], torch.arange(2)), model_fingerprint="m")
    cases = {}
    for value in ([], {}, None, 16):
        cases[f"dtype-{type(value).__name__}"] = _blob_edit(
            blob, _layers_edit(lambda ls, v=value: ls[0]["k"].__setitem__("dtype", v))
        )
    return cases


def _frame(anchors: bytes, deltas: bytes) -> bytes:
    return b"SKVDELT1" + struct.pack("<Q", len(anchors)) + anchors + deltas


def delta_cases() -> dict[str, bytes]:
    g = torch.Generator().manual_seed(0)
    kv = KVCache([torch.randn(1, 6, 4, generator=g)], [torch.randn(1, 6, 4, generator=g)], torch.arange(6))
    frame = encode_delta_blob(delta_encode(kv, group=3), model_fingerprint="m")
    (n,) = struct.unpack_from("<Q", frame, 8)
    anchors, deltas = frame[16 : 16 + n], frame[16 + n :]

    def group(value: str):
        def edit(header: dict) -> None:
            user = json.loads(header["__metadata__"]["user"])
            user["delta.group"] = value
            header["__metadata__"]["user"] = json.dumps(user, sort_keys=True, separators=(",", ":"))

        return edit

    cases = {}
    for value in (str(2**64), str(2**63), "\u0661\u0660", "+3"):
        cases[f"group-{value[:8]}"] = _frame(_blob_edit(anchors, group(value)), _blob_edit(deltas, group(value)))
    # values with another head_dim in the deltas than in the anchors (keys agree): accepted before, then crashed
    kv2 = KVCache([torch.randn(1, 6, 4, generator=g)], [torch.randn(1, 6, 8, generator=g)], torch.arange(6))
    other = encode_delta_blob(delta_encode(kv2, group=3), model_fingerprint="m")
    (n2,) = struct.unpack_from("<Q", other, 8)
    cases["value-head-dim"] = _frame(anchors, other[16 + n2 :])
    return cases


def plan_cases() -> dict[str, bytes]:
    seed = json.loads(plan_seeds()[0])
    huge = json.loads(json.dumps(seed))
    huge["model"]["num_layers"] = 10**8
    huge["plan"]["per_layer"] = [4]
    text = json.dumps(seed).encode()
    return {
        "leading-ff": b"\xff" + text,
        "nested": b"[" * 5_000 + b"]" * 5_000,
        "int-5000-digits": text.replace(b'"version": 1', b'"version": ' + b"1" * 5000),
        "layers-1e8": json.dumps(huge).encode(),
        "layers-key-unicode": text.replace(b'"0": 16', b'"\\u0661": 16'),
        "empty-fingerprint": text.replace(b'"fingerprint": "0123456789abcdef"', b'"fingerprint": ""'),
    }


def positions_cases() -> dict[str, bytes]:
    """The issue's set ([0, 2, 4, 6] of 8) with each bit flipped: all must now be errors (n prefix: u32 LE)."""
    data = encode_positions([0, 2, 4, 6], 8)
    cases = {}
    for bit in range(8 * len(data)):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        cases[f"flip-{bit}"] = struct.pack("<I", 8) + bytes(flipped)
    body = bytes([0x82]) + bytes([0b01010101])
    cases["crc-for-other-n"] = (
        struct.pack("<I", 8) + body + zlib.crc32(body, zlib.crc32((9).to_bytes(8, "little"))).to_bytes(4, "little")
    )
    return cases


def dataset_cases() -> dict[str, bytes]:
    return {
        "nested": b'{"id": "a", "question": ' + b"[" * 5_000 + b"\n",
        "int-5000-digits": b'{"id": ' + b"1" * 5000 + b', "question": "q", "answers": []}\n',
    }


CASES = {
    "wire": wire_cases,
    "delta": delta_cases,
    "plan": plan_cases,
    "positions": positions_cases,
    "dataset-jsonl": dataset_cases,
}


def write_corpus(folder: Path) -> int:
    """Seed the saved corpus: every target's seeds (valid encodings) and every case above; returns the count."""
    from scout_testbed.fuzz import save_input
    from scout_testbed.fuzz_targets import targets

    count = 0
    for name, target in targets().items():
        for data in target.seeds():
            save_input(folder, name, data)
            count += 1
    for name, build in CASES.items():
        for data in build().values():
            save_input(folder, name, data)
            count += 1
    return count


if __name__ == "__main__":
    print(write_corpus(Path(__file__).parent / "corpus"), "inputs written")
