"""The KV codec on the real SmolLM2-135M and real SQuAD v2 prompts: INT8 fidelity, every mode through the wire
and back into generation, calibration, and the codec bench's report files.

Thresholds, stated once:
* INT8 vs bf16, token-exact over the first 8 greedy answer tokens, on 16 prompts: at least 12 of 16 agree.
  KIVI INT8 moves K and V by about 0.3 % / 0.5 % relative RMS, the size of one bf16 rounding (2^-9 relative), so
  it can only flip greedy choices that are (near-)ties. SmolLM2-135M has such ties: on these prompts the measured
  agreement was 14/16, and the divergence examined sat at a step whose bf16 top-2 log-prob margin was 0.0 nats
  (an exact tie of bf16 logits). 12/16 leaves room for two more tie flips from kernel changes, and still fails
  for a broken quantizer (KIVI INT4 already diverged on 4 of these 16 when measured).
* First-step distribution: INT8's mean KL over the 16 prompts must stay below 0.01 nats (measured here 0.002;
  INT2 measured 0.48) and below a tenth of INT2's, which shows the KL actually sees quantization damage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from scout.codec.calibrate import calibrate
from scout.codec.delta import decode_delta_blob, delta_decode, delta_encode, encode_delta_blob
from scout.codec.entropy import compress_blob, decompress_blob
from scout.codec.mixed import MixedPlan, PlanFingerprintError
from scout.codec.quant import BitPlan, QuantSpec, dequantize_cache, quantize_cache
from scout.codec.wire import decode_blob, encode_blob
from scout.datasets import load_examples
from scout.inference import generate_from_cache, prefill
from scout.kvcache import KVCache
from scout.prompts import prompt_for_example

pytestmark = pytest.mark.models
MAX_NEW = 8
N_PROMPTS = 16
MIN_AGREE = 12


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """One torch thread for this module, restored afterwards: on a loaded 2-core machine two OpenMP threads
    contend with other processes and run many times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def squad16() -> list[Any]:
    # The conftest sample's filters and seed, twice as many: its first 8 are `squad_answerable`.
    return load_examples("squad_v2", n=N_PROMPTS, seed=7, answerable_only=True, max_context_chars=700)


@torch.inference_mode()
def _first_logp(lm: Any, kv: KVCache, last: int) -> torch.Tensor:
    pos = torch.tensor([[kv.next_position]])
    out = lm.model(input_ids=torch.tensor([[last]]), past_key_values=kv.to_hf(lm.model.config), position_ids=pos)
    return torch.log_softmax(out.logits[0, -1].float(), -1)


def test_int8_cache_answers_like_bf16(smol: Any, squad16: list[Any], record_property: Any) -> None:
    agree = 0
    kl8: list[float] = []
    kl2: list[float] = []
    for ex in squad16:
        ids = prompt_for_example(smol.tokenizer, ex).input_ids
        kv = prefill(smol, ids[:-1]).kv
        q8 = dequantize_cache(quantize_cache(kv, 8))
        ref = generate_from_cache(smol, kv, ids[-1:], max_new_tokens=MAX_NEW).token_ids
        got = generate_from_cache(smol, q8, ids[-1:], max_new_tokens=MAX_NEW).token_ids
        agree += got == ref
        p = _first_logp(smol, kv, ids[-1])
        for cache, sink in ((q8, kl8), (dequantize_cache(quantize_cache(kv, 2)), kl2)):
            q = _first_logp(smol, cache, ids[-1])
            sink.append(float((p.exp() * (p - q)).sum()))
    rate = agree / len(squad16)
    mean8, mean2 = sum(kl8) / len(kl8), sum(kl2) / len(kl2)
    record_property("int8_agreement", rate)
    print(f"\nINT8 vs bf16: {agree}/{len(squad16)} token-exact ({rate:.3f})", end="; ")
    print(f"first-step KL INT8 {mean8:.5f}, INT2 {mean2:.5f}")
    assert agree >= MIN_AGREE, f"INT8 agreed on {agree}/{len(squad16)} prompts"
    assert mean8 < 0.01
    assert mean2 > 10 * mean8


def _modes(kv: KVCache, smol: Any) -> dict[str, tuple[bytes, Any]]:
    """Every mode: (blob, decoder returning a KVCache)."""
    fp = smol.spec.fingerprint

    def blob_of(cache: Any) -> bytes:
        return encode_blob(cache, model_fingerprint=fp)

    def dec(blob: bytes) -> KVCache:
        return decode_blob(blob, expected_fingerprint=fp).kvcache()

    def ddec(blob: bytes) -> KVCache:
        return delta_decode(decode_delta_blob(blob, expected_fingerprint=fp))

    mixed = MixedPlan(BitPlan(4, {0: 16, 7: 8}), QuantSpec(4), fp, kv.num_layers)
    base = {
        "bf16": (blob_of(kv), dec),
        "int8": (blob_of(quantize_cache(kv, 8)), dec),
        "int4": (blob_of(quantize_cache(kv, 4)), dec),
        "int2": (blob_of(quantize_cache(kv, 2)), dec),
        "mixed": (blob_of(mixed.quantize(kv)), dec),
        "delta+int8": (encode_delta_blob(delta_encode(kv, bits=8), model_fingerprint=fp), ddec),
        "delta+int4": (encode_delta_blob(delta_encode(kv, bits=4), model_fingerprint=fp), ddec),
    }
    out = dict(base)
    for name, (blob, decoder) in base.items():
        out[f"{name}+zstd"] = (compress_blob(blob), lambda b, d=decoder: d(decompress_blob(b)))
    return out


def test_every_mode_round_trips_and_generates(smol: Any, squad_answerable: list[Any]) -> None:
    ids = prompt_for_example(smol.tokenizer, squad_answerable[0]).input_ids
    kv = prefill(smol, ids[:-1]).kv
    reference = generate_from_cache(smol, kv, ids[-1:], max_new_tokens=4)
    expected = {
        "int8": dequantize_cache(quantize_cache(kv, 8)),
        "int4": dequantize_cache(quantize_cache(kv, 4)),
        "int2": dequantize_cache(quantize_cache(kv, 2)),
        "delta+int4": delta_decode(delta_encode(kv, bits=4)),
    }
    sizes: dict[str, int] = {}
    for name, (blob, decoder) in _modes(kv, smol).items():
        rebuilt = decoder(blob)
        sizes[name] = len(blob)
        assert rebuilt.num_layers == kv.num_layers and torch.equal(rebuilt.positions, kv.positions), name
        assert rebuilt.dtype == kv.dtype, name
        base = name.removesuffix("+zstd")
        if base == "bf16":
            assert rebuilt.equal(kv), name
        elif base in expected:
            assert rebuilt.equal(expected[base]), name  # the wire (and zstd) add no error of their own
        gen = generate_from_cache(smol, rebuilt, ids[-1:], max_new_tokens=4)
        assert gen.finish in {"eos", "newline", "length"}
        if base == "bf16":
            assert gen.token_ids == reference.token_ids
    assert sizes["int2"] < sizes["int4"] < sizes["mixed"] < sizes["int8"] < sizes["bf16"]
    assert sizes["delta+int4"] > sizes["int4"]  # raw anchors cost bytes
    assert all(sizes[f"{m}+zstd"] < sizes[m] for m in ("bf16", "int8", "int4"))


def test_calibrate_on_smollm2(smol: Any, squad_answerable: list[Any], tmp_path: Path) -> None:
    from scout.metrics import clean_generation, score

    prompts = [prompt_for_example(smol.tokenizer, ex) for ex in squad_answerable[:2]]
    example = squad_answerable[3]
    target = 0.01
    r = calibrate(
        smol,
        prompts,
        quality_target=target,
        answer_tokens=3,
        examples=[example],
        f1_target=0.5,
        max_new_tokens=MAX_NEW,
        batch_size=16,
        progress=False,
    )
    assert len(r.layers) == smol.spec.num_layers == 30
    assert [row.layer for row in r.layers] == list(range(30))
    assert all(row.kl_mean >= 0 and len(row.kl_per_prompt) == 2 for row in r.layers)
    assert r.plan_kl <= target
    k = len(r.protected)
    assert r.protected == sorted(r.ranking[:k])
    assert all(c.kl_mean > target for c in r.curve if c.k < k)
    assert r.int8_kl is not None and r.int8_kl < r.uniform_low_kl
    # F1 on the example: the batched greedy's full-precision row equals plain generation from the example's cache
    ids = prompt_for_example(smol.tokenizer, example).input_ids
    gen = generate_from_cache(smol, prefill(smol, ids[:-1]).kv, ids[-1:], max_new_tokens=MAX_NEW)
    assert r.f1_full == pytest.approx(score(example, clean_generation(gen.text))["f1"])
    assert all(row.f1 is not None for row in r.layers) and r.f1_plan is not None
    f1_ok = r.f1_plan >= 0.5 * r.f1_full - 1e-9
    assert f1_ok or k == 30  # the F1 target holds, or everything ended up protected
    assert r.meets_target == f1_ok
    path = r.mixed_plan().save(tmp_path / "smol.json")
    plan = MixedPlan.load(path, expected_fingerprint=smol.spec.fingerprint)
    assert plan.protected == r.protected and plan.plan == r.plan
    with pytest.raises(PlanFingerprintError):
        MixedPlan.load(path, expected_fingerprint="0" * 16)


def test_codec_bench_writes_its_report(smol: Any, tmp_path: Path) -> None:
    from scout_cli.benchmarks.codec import run_codec_bench, write_codec_report

    res = run_codec_bench(smol, model="smollm2-135m", tokens=96, repeats=1, kl_tokens=4, plan_path=None)
    names = [r["mode"] for r in res["modes"]]
    assert names == [
        f"{m}{z}" for m in ("bf16", "int8", "int4", "int2", "mixed", "delta+int8", "delta+int4") for z in ("", "+zstd")
    ]
    rows = {r["mode"]: r for r in res["modes"]}
    assert rows["bf16"]["ratio_to_bf16"] == 1.0 and rows["bf16"]["quality"]["kl_next_tokens"] == 0.0
    for r in res["modes"]:
        assert r["transfer_s"] == pytest.approx(r["bytes"] * 8 / 100e6)
        assert r["codec_over_transfer"] == pytest.approx((r["encode_s"] + r["decode_s"]) / r["transfer_s"])
    assert rows["int8"]["bytes"] < rows["bf16"]["bytes"]
    assert res["kv_bytes"] == smol.spec.kv_bytes(96)
    paths = write_codec_report(res, tmp_path)
    assert [p.suffix for p in paths] == [".json", ".md", ".png"]
    assert json.loads(paths[0].read_text())["tokens"] == 96
    assert "| delta+int4 |" in paths[1].read_text()
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrate_command_saves_a_plan(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from scout_cli.commands.codec import register

    app, bench = typer.Typer(), typer.Typer()
    app.add_typer(bench, name="bench")
    register(app, bench)
    out = tmp_path / "plan.json"
    args = ["calibrate", "--model", "smollm2-135m", "--n", "1", "--answer-tokens", "2", "--target", "1", "--out"]
    result = CliRunner().invoke(app, [*args, str(out)])
    assert result.exit_code == 0, result.output
    assert "meets the target" in result.output
    doc = json.loads(out.read_text())
    assert doc["plan"]["per_layer"] == [4] * 30  # a target of 1 nat is met by uniform INT4
    assert doc["evidence"]["command"].startswith("scout calibrate --model smollm2-135m --n 1")
    assert len(doc["evidence"]["layers"]) == 30
    bad = CliRunner().invoke(app, ["calibrate", "--model", "smollm2-135m", "--quantizer", "nope"])
    assert bad.exit_code == 2
