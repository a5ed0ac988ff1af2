"""`scout bench stages`: measured stage times per mode for one model pair, as the planner's `StageTimes`.

Why: the deadline planner (`scout.policy.planner`) decides with ``prefill + score + encode + transfer + decode +
generate``; every term but the transfer is compute that must be measured, not assumed, and it grows with the
context, so each stage is stored as ``fixed_s + per_token_s * context_tokens`` (`StageCost`), fitted by least
squares to the medians at two or three context lengths.

What is timed: the real pipeline functions (`scout.pipeline`), exactly what the services run, on a document of
the requested number of context tokens (SQuAD v2 paragraphs joined and cut to length, a SQuAD question):

* edge: `edge_prefill` (tokenize, the scoring prefill, Q2C scores) -> ``prefill`` (tokenize + prefill), ``score``;
* KV modes (``full``/``int8``/``int4``/``int2``/``mixed``…, named as the operating-point tables name them,
  `scout_eval.codec_modes`): ``encode`` = `raw_kv_blob` + `encode_uplink` (the study's quantizer
  variants, which the pipeline's plan names do not cover, go through the same decode -> `quantize_cache` ->
  `encode_blob` steps); ``decode`` = `answer_from_blob`'s verify + rebuild + feeding the last prompt token — on
  the **edge** model, since a KV cache only works with the model that made it;
* ``scout``: ``encode`` = the position set (`EdgeResult.position_set`); ``decode`` = `answer_from_document`'s
  re-prefill by the **cloud** model of the visible tokens only (kept context + prompt, at their original
  positions: it scales with ``scout_retention``); ``text``: its full re-prefill (no edge stages);
* ``local``: `answer_local` (the edge continues from its own cache);
* ``generate``: a request may generate up to ``max_new_tokens``; answers stop early at a newline, so the time per
  decode step is measured on every answer with at least two tokens (pooled per model, fitted against the context
  length) and the stage is budgeted as ``(max_new_tokens - 1)`` steps (the first token comes with ``decode``).

Times are **CPU seconds of this process** (``time.process_time``), not wall time: the machine these stage times
were measured on is shared (a concurrent evaluation, services tests), and waiting for a core is not compute. Each
pipeline call's own wall-clock split (e.g. prefill vs score) is scaled by the call's CPU/wall ratio; with one
torch thread on an idle machine the two coincide. Wall times are kept in the records (``*_wall``).

KV modes are timed at retention 1 (a kept subset only shortens encode and decode, so these are upper bounds for
``@r`` points). The transfer is not timed here: the planner computes it from bytes and bandwidth. Both ends run on
this machine's CPU with ``threads`` torch threads, so the edge/cloud asymmetry of a real deployment (a faster cloud)
is *not* in these numbers; the report says so. One run writes the pair's `StageTimes` and, for each model whose KV
path was timed, a single-model one (``M->M``), which single-model operating-point tables need.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from scout.machine import machine_info
from scout.policy.planner import ModeStages, StageCost, StageTimes
from scout_eval.markdown import markdown_table

__all__ = [
    "DEFAULT_CODECS",
    "StagesBenchConfig",
    "build_stage_times",
    "fit_linear",
    "run_stages_bench",
    "stage_file_name",
]

DEFAULT_CODECS = [
    "bf16",
    "int8",
    "int4",
    "int2",
    "int4:keep=0",
    "int4-study",
    "int4-study:keep=0",
    "mixed@reports/plans/{model}-int4-study.json",
]
"""The codecs of the evaluation runs (`scripts/run-evals.sh`) plus the pipeline's mixed plan; ``{model}`` stands for
each timed model (a calibrated plan belongs to one model); a plan file that does not exist is skipped."""


class StagesBenchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    edge_model: str
    cloud_model: str
    lengths: list[int] = Field(default_factory=lambda: [256, 512, 1024], min_length=2)
    repeats: int = Field(default=3, ge=1)
    max_new_tokens: int = Field(default=16, ge=1)
    codecs: list[str] = Field(default_factory=lambda: list(DEFAULT_CODECS))
    kv_models: list[str] | None = None
    """Models whose KV path is timed (default: the edge and, when it differs, the cloud model)."""
    scout_retention: float = Field(default=0.5, gt=0, le=1)
    text: bool = False
    """Also time text mode (the cloud's full re-prefill of the document; off the tables)."""
    dtype: str = "fp32"
    """The evaluation runs' compute dtype (`scripts/run-evals.sh` runs fp32: about twice as fast as bf16 on these
    CPUs without bf16 instructions)."""
    threads: int = Field(default=1, ge=1)
    out: Path = Path("reports/stages")


def stage_file_name(edge: str, cloud: str) -> str:
    """``<edge>__<cloud>.json``, ``<model>.json`` for one model (as the operating-point tables are named)."""
    return f"{edge}.json" if edge == cloud else f"{edge}__{cloud}.json"


# ----------------------------------------------------------------------------------------------------------------
# fitting and assembly (pure: tested without models)
# ----------------------------------------------------------------------------------------------------------------
def fit_linear(ns: Sequence[float], seconds: Sequence[float]) -> tuple[StageCost, float]:
    """Least-squares ``fixed_s + per_token_s * n`` through the points, constrained to non-negative terms (a
    negative slope from timing noise becomes a constant at the median; a negative intercept a line through 0).
    Returns the cost and the largest relative residual (how linear the stage really is)."""
    x = np.asarray(ns, dtype=np.float64)
    y = np.asarray(seconds, dtype=np.float64)
    if x.size == 0 or x.size != y.size:
        raise ValueError("fit_linear needs as many lengths as times, at least one")
    if np.any(y < 0) or not np.all(np.isfinite(y)):
        raise ValueError("stage times must be finite and >= 0")
    if x.size == 1 or np.ptp(x) == 0:
        fixed, slope = float(np.median(y)), 0.0
    else:
        slope, fixed = (float(v) for v in np.polyfit(x, y, 1))
        if slope < 0:
            fixed, slope = float(np.median(y)), 0.0
        elif fixed < 0:
            fixed, slope = 0.0, float(np.dot(x, y) / np.dot(x, x))
    cost = StageCost(fixed_s=fixed, per_token_s=slope)
    pred = cost.fixed_s + cost.per_token_s * x
    scale = np.maximum(np.abs(y), 1e-9)
    return cost, float(np.max(np.abs(pred - y) / scale))


def _medians(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """Per context length: the median context tokens and the median of ``key`` over repeats."""
    by_len: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        by_len.setdefault(int(r["length"]), []).append(r)
    ns, ys = [], []
    for length in sorted(by_len):
        rows = by_len[length]
        ns.append(float(statistics.median(r["n"] for r in rows)))
        ys.append(float(statistics.median(r[key] for r in rows)))
    return ns, ys


def _fit(records: Sequence[dict[str, Any]], key: str, fits: dict[str, Any], label: str) -> StageCost:
    ns, ys = _medians(records, key)
    cost, resid = fit_linear(ns, ys)
    fits[label] = {
        "n": ns,
        "median_s": ys,
        "fixed_s": cost.fixed_s,
        "per_token_s": cost.per_token_s,
        "max_rel_residual": resid,
    }
    return cost


def _step_records(records: Sequence[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    """Seconds per decode step of every answer ``model`` generated with at least two tokens."""
    out = []
    for r in records:
        if r.get("generator") == model and r.get("tokens", 0) >= 2:
            out.append({"length": r["length"], "n": r["n"], "step_s": r["generate"] / (r["tokens"] - 1)})
    return out


def _scaled(cost: StageCost, k: int) -> StageCost:
    return StageCost(fixed_s=cost.fixed_s * k, per_token_s=cost.per_token_s * k)


def build_stage_times(
    records: Sequence[dict[str, Any]],
    edge: str,
    cloud: str,
    *,
    max_new_tokens: int,
    source: str = "",
) -> tuple[dict[str, StageTimes], dict[str, Any]]:
    """`StageTimes` of ``edge->cloud`` and of every single model whose KV path was measured, from the raw
    measurement records `run_stages_bench` writes (see the module docstring). Returns them by file name, with the
    fitted lines and residuals for the report."""
    from scout_eval.op_tables import pair_name

    fits: dict[str, Any] = {}
    gen: dict[str, StageCost] = {}
    for model in dict.fromkeys([edge, cloud]):
        steps = _step_records(records, model)
        if steps:
            gen[model] = _scaled(_fit(steps, "step_s", fits, f"{model}: decode step"), max_new_tokens - 1)

    def of(kind: str, model: str, mode: str | None = None) -> list[dict[str, Any]]:
        return [r for r in records if r["kind"] == kind and r["model"] == model and (mode is None or r["mode"] == mode)]

    def edge_part(model: str) -> tuple[StageCost, StageCost]:
        rows = of("edge", model)
        for r in rows:
            r["tokenize_prefill"] = r["tokenize"] + r["prefill"]
        return _fit(rows, "tokenize_prefill", fits, f"{model}: prefill"), _fit(rows, "score", fits, f"{model}: score")

    def kv_modes(model: str) -> dict[str, ModeStages]:
        if model not in gen or not of("edge", model):
            return {}
        prefill, score = edge_part(model)
        out: dict[str, ModeStages] = {}
        for mode in dict.fromkeys(r["mode"] for r in of("kv", model)):
            rows = of("kv", model, mode)
            out[mode] = ModeStages(
                prefill=prefill,
                score=score,
                encode=_fit(rows, "encode", fits, f"{model} {mode}: encode"),
                decode=_fit(rows, "decode", fits, f"{model} {mode}: decode"),
                generate=gen[model],
            )
        if of("local", model):
            out["local"] = ModeStages(
                prefill=prefill,
                decode=_fit(of("local", model), "decode", fits, f"{model} local: decode"),
                generate=gen[model],
            )
        return out

    result: dict[str, StageTimes] = {}
    kv_models = sorted({r["model"] for r in records if r["kind"] == "kv"})
    per_model = {m: modes for m in kv_models if (modes := kv_modes(m))}
    if edge != cloud and of("edge", edge):
        modes = dict(per_model.get(edge, {}))
        prefill, score = edge_part(edge)
        if of("scout", cloud) and cloud in gen and of("edge", edge):
            rows = of("scout", cloud)
            modes["scout"] = ModeStages(
                prefill=prefill,
                score=score,
                encode=_fit(rows, "encode", fits, f"{edge}->{cloud} scout: encode"),
                decode=_fit(rows, "decode", fits, f"{cloud} scout: re-prefill of the kept tokens"),
                generate=gen[cloud],
            )
        if of("text", cloud) and cloud in gen and of("edge", edge):
            tok = _fit(of("edge", edge), "tokenize", fits, f"{edge}: tokenize")
            modes["text"] = ModeStages(
                prefill=tok,
                decode=_fit(of("text", cloud), "decode", fits, f"{cloud} text: prefill"),
                generate=gen[cloud],
            )
        if modes:
            result[stage_file_name(edge, cloud)] = StageTimes(
                model_pair=pair_name(edge, cloud), source=source, modes=modes
            )
    for model, modes in per_model.items():
        single = {k: v for k, v in modes.items() if k != "local"}
        result[stage_file_name(model, model)] = StageTimes(
            model_pair=pair_name(model, model), source=source, modes=single
        )
    return result, fits


# ----------------------------------------------------------------------------------------------------------------
# measurement
# ----------------------------------------------------------------------------------------------------------------
def make_document(tokenizer: Any, n_tokens: int) -> tuple[str, str]:
    """A SQuAD v2 question and a document of about ``n_tokens`` tokens: its paragraphs (the question's own first,
    so the answer is in it) joined and cut to length on a token boundary."""
    from scout.datasets import load_examples

    examples = load_examples("squad_v2", n=300, seed=0, answerable_only=True)
    question = examples[0].question
    text = ""
    for ex in examples:
        text += ex.context + "\n\n"
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) > n_tokens + 16:
            break
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n_tokens]
    return question, tokenizer.decode(ids)


def _cpu_timed(fn: Callable[[], Any], timings: Callable[[Any], dict[str, float]] | None = None) -> tuple[Any, dict]:
    """Run ``fn``; return its result and its stage timings in CPU seconds of this process (see the module
    docstring): the call's own wall-clock split (``timings(result)``) scaled by CPU time / wall time of the call,
    or the whole call's CPU time under ``"total"``; the raw wall-clock values are kept with a ``_wall`` suffix."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    factor = cpu / wall if wall > 0 else 1.0
    split = timings(out) if timings is not None else {"total": wall}
    scaled = {k: v * factor for k, v in split.items()}
    scaled.update({f"{k}_wall": v for k, v in split.items()})
    return out, scaled


def _encode(cm: Any, raw: bytes, edge: Any, fingerprint: str, head_dim: int) -> tuple[bytes, float]:
    from scout.codec.quant import quantize_cache
    from scout.codec.wire import decode_blob, encode_blob
    from scout.pipeline import encode_uplink

    if not cm.axes and not cm.plan_file:
        up = encode_uplink(
            raw,
            model_fingerprint=fingerprint,
            bit_plan=cm.plan_name,
            positions=None,
            context_start=edge.context_start,
            context_tokens=edge.context_tokens,
        )
        return up.data, up.seconds
    t0 = time.perf_counter()  # the same steps as encode_uplink, with the codec's own QuantSpec
    decoded = decode_blob(raw, expected_fingerprint=fingerprint)
    qc = quantize_cache(decoded.kvcache(), cm.bit_plan(), cm.quant_spec(head_dim))
    data = encode_blob(
        qc, model_fingerprint=fingerprint, original_seq_len=decoded.orig_seq_len, meta={"bit_plan": cm.plan_name}
    )
    return data, time.perf_counter() - t0


def run_stages_bench(cfg: StagesBenchConfig, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Time every stage (see the module docstring), fit, and write the `StageTimes` JSONs, the raw measurements
    and a Markdown report into ``cfg.out``."""
    import torch

    from scout.inference import warmup
    from scout.models import load_model
    from scout.pipeline import (
        answer_from_blob,
        answer_from_document,
        answer_local,
        edge_prefill,
        raw_kv_blob,
        same_tokenizer,
    )
    from scout_eval.codec_modes import codec_modes, plan_file_of

    torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    kv_models = cfg.kv_models or list(dict.fromkeys([cfg.edge_model, cfg.cloud_model]))
    cfg.out.mkdir(parents=True, exist_ok=True)
    stem = Path(stage_file_name(cfg.edge_model, cfg.cloud_model)).stem
    log_path = cfg.out / f"{stem}.records.jsonl"
    records = _load_records(log_path, cfg)
    done = {(r["unit"], r["length"], r["repeat"]) for r in records}
    units = [f"kv:{m}" for m in kv_models] + (["scout"] if cfg.cloud_model != cfg.edge_model else [])
    pending = [(u, n, r) for u in units for n in cfg.lengths for r in range(cfg.repeats) if (u, n, r) not in done]
    if not pending:  # everything measured already: refit and rewrite the outputs without loading a model
        return _write_outputs(cfg, records, stem, t_start)
    edge_lm = load_model(cfg.edge_model, dtype=cfg.dtype, device="cpu")
    cloud_lm = (
        edge_lm if cfg.cloud_model == cfg.edge_model else load_model(cfg.cloud_model, dtype=cfg.dtype, device="cpu")
    )
    lms = {cfg.edge_model: edge_lm, cfg.cloud_model: cloud_lm}
    for lm in lms.values():
        warmup(lm)

    def modes_of(model: str) -> dict[str, Any]:
        codecs = [c.replace("{model}", model) for c in cfg.codecs]
        missing = [c for c in codecs if (plan := plan_file_of(c)) is not None and not Path(plan).is_file()]
        for c in missing:
            progress(f"{model}: skipping {c} (no such plan file)")
        return codec_modes([c for c in codecs if c not in missing])

    model_modes = {m: modes_of(m) for m in kv_models}
    mx = cfg.max_new_tokens
    cross = None if same_tokenizer(edge_lm.spec, cloud_lm.spec) else edge_lm.tokenizer
    docs: dict[int, tuple[str, str]] = {}

    def add(rows: list[dict[str, Any]]) -> None:
        with open(log_path, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        records.extend(rows)

    def kv_unit(model: str, length: int, rep: int) -> Any:
        lm = lms[model]
        question, document = docs[length]
        load = os.getloadavg()[0]
        edge, t_edge = _cpu_timed(lambda: edge_prefill(lm, question=question, document=document), _timings)
        n = edge.context_tokens
        base = {"unit": f"kv:{model}", "length": length, "n": n, "repeat": rep, "model": model, "load": load}
        rows = [{**base, "kind": "edge", **t_edge}]
        raw, t_raw = _cpu_timed(lambda: raw_kv_blob(edge, lm.spec.fingerprint))
        for cm in model_modes[model].values():
            (data, _), t_enc = _cpu_timed(lambda cm=cm: _encode(cm, raw, edge, lm.spec.fingerprint, lm.spec.head_dim))
            ans, t_ans = _cpu_timed(
                lambda data=data: answer_from_blob(lm, data, suffix_ids=edge.suffix_ids(), max_new_tokens=mx),
                _timings,
            )
            rows.append(
                {
                    **base,
                    "kind": "kv",
                    "mode": cm.mode,
                    "codec": cm.codec,
                    "encode": t_raw["total"] + t_enc["total"],
                    "encode_wall": t_raw["total_wall"] + t_enc["total_wall"],
                    "bytes": len(data),
                    "generator": model,
                    "tokens": len(ans.token_ids),
                    **t_ans,
                }
            )
        if model == cfg.edge_model:
            ans, t_ans = _cpu_timed(lambda: answer_local(lm, edge, max_new_tokens=mx), _timings)
            rows.append({**base, "kind": "local", "generator": model, "tokens": len(ans.token_ids), **t_ans})
        add(rows)
        progress(f"{model} KV path at {n} context tokens, repeat {rep + 1}/{cfg.repeats}")
        return edge

    def scout_unit(length: int, rep: int, edge: Any) -> None:
        question, document = docs[length]
        load = os.getloadavg()[0]
        edge = edge or edge_prefill(edge_lm, question=question, document=document)
        n = edge.context_tokens
        base = {"unit": "scout", "length": length, "n": n, "repeat": rep, "model": cfg.cloud_model, "load": load}
        base["generator"] = cfg.cloud_model
        positions, t_pos = _cpu_timed(lambda: edge.position_set(cfg.scout_retention))
        ans, t_ans = _cpu_timed(
            lambda: answer_from_document(
                cloud_lm,
                question=question,
                document=document,
                positions=positions,
                context_tokens=n,
                edge_tokenizer=cross,
                max_new_tokens=mx,
            ),
            _timings,
        )
        rows = [{**base, "kind": "scout", "encode": t_pos["total"], "encode_wall": t_pos["total_wall"]}]
        rows[0].update({"bytes": len(positions), "tokens": len(ans.token_ids), **t_ans})
        if cfg.text:
            ans, t_ans = _cpu_timed(
                lambda: answer_from_document(cloud_lm, question=question, document=document, max_new_tokens=mx),
                _timings,
            )
            rows.append({**base, "kind": "text", "tokens": len(ans.token_ids), **t_ans})
        add(rows)
        progress(f"{cfg.cloud_model} scout at {n} context tokens, repeat {rep + 1}/{cfg.repeats}")

    # The pair first (edge KV path + scout), the cloud's own KV path last: an interrupted run still yields the
    # pair's stage times, and a rerun with the same settings resumes from the records file.
    others = [m for m in kv_models if m != cfg.edge_model]
    result: dict[str, Any] = {}
    for phase in ("pair", "others"):
        for rep in range(cfg.repeats):
            for length in cfg.lengths:
                if length not in docs:
                    docs[length] = make_document(edge_lm.tokenizer, length)
                if phase == "pair":
                    edge = None
                    if cfg.edge_model in kv_models and (f"kv:{cfg.edge_model}", length, rep) not in done:
                        edge = kv_unit(cfg.edge_model, length, rep)
                    if cfg.cloud_model != cfg.edge_model and ("scout", length, rep) not in done:
                        scout_unit(length, rep, edge)
                else:
                    for model in others:
                        if (f"kv:{model}", length, rep) not in done:
                            kv_unit(model, length, rep)
                result = _write_outputs(cfg, records, stem, t_start)
    return result


def _timings(result: Any) -> dict[str, float]:
    return dict(result.timings)


def _load_records(path: Path, cfg: StagesBenchConfig) -> list[dict[str, Any]]:
    """Records of an earlier run with the same settings (resume), else none (the file is started afresh)."""
    key = cfg.model_dump(mode="json", exclude={"out", "repeats", "kv_models"})
    header = {"config": key}
    if path.is_file():
        lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        if lines and lines[0] == header:
            return lines[1:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(header) + "\n", encoding="utf-8")
    return []


def bench_command(cfg: dict[str, Any]) -> str:
    """The command that reproduces (or resumes) a run, codecs spelled out: their default follows the eval runs,
    which change, and a run resumes only with the same codec list."""
    return (
        f"scout bench stages --edge-model {cfg['edge_model']} --cloud-model {cfg['cloud_model']} "
        f"--lengths {','.join(map(str, cfg['lengths']))} --repeats {cfg['repeats']} "
        f"--max-new-tokens {cfg['max_new_tokens']} --dtype {cfg['dtype']} --codecs '{','.join(cfg['codecs'])}'"
        + (" --text" if cfg.get("text") else "")
    )


def _write_outputs(cfg: StagesBenchConfig, records: list[dict[str, Any]], stem: str, t_start: float) -> dict[str, Any]:
    machine = machine_info(load_average=True)
    lengths = sorted({int(r["length"]) for r in records})
    reps = max((int(r["repeat"]) for r in records), default=0) + 1
    source = (
        f"{bench_command(cfg.model_dump(mode='json'))} "
        f"(measured so far: lengths {','.join(map(str, lengths))}, up to {reps} repeat(s)): "
        f"medians over repeats, linear fit in context tokens; {cfg.threads} torch thread(s) on "
        f"{machine['cpu_count']} shared CPUs ({machine['device']}); both ends on this machine"
    )
    stage_times, fits = build_stage_times(
        records, cfg.edge_model, cfg.cloud_model, max_new_tokens=cfg.max_new_tokens, source=source
    )
    for name, st in stage_times.items():
        st.save(cfg.out / name)
    result = {
        "config": cfg.model_dump(mode="json"),
        "machine": machine,
        "seconds": time.perf_counter() - t_start,
        "files": sorted(stage_times),
        "report": f"{stem}.md",
        "fits": fits,
        "load_during": [float(np.min([r["load"] for r in records])), float(np.max([r["load"] for r in records]))],
        "records": f"{stem}.records.jsonl",
        "measurements": len(records),
    }
    (cfg.out / f"{stem}.md").write_text(render_markdown(result, stage_times), encoding="utf-8")
    return result


def render_markdown(result: dict[str, Any], stage_times: dict[str, StageTimes]) -> str:
    cfg, machine = result["config"], result["machine"]
    ms = 1000.0
    lines = [
        f"# Stage times: {cfg['edge_model']} -> {cfg['cloud_model']}",
        "",
        f"Regenerate: `{bench_command(cfg)}` (OMP_NUM_THREADS={cfg['threads']}). "
        f"{cfg['dtype']}, {machine['threads']} torch thread(s), {machine['cpu_count']} CPUs shared with other work "
        f"(1-minute load average {result['load_during'][0]:.1f}-{result['load_during'][1]:.1f} during the "
        "measurements; CPU time keeps the waiting out, shared caches and memory bandwidth still slow it), "
        f"{result['measurements']} measurements. Raw records: `{result['records']}`.",
        "",
        "Times are CPU seconds of the benchmark process (not wall time: the machine is shared; with one thread "
        "on an idle machine they coincide). Each stage is the median over repeats at each length, fitted as "
        "`fixed + per_token x context tokens` "
        "(`StageCost`). *generate* is budgeted as `(max_new_tokens - 1)` decode steps at the measured time per step "
        "(answers stop early at a newline; the first token comes with *decode*). KV modes run the **edge** model at "
        "both ends (a KV cache only works with its own model); scout and text re-prefill with the **cloud** model. "
        "Both ends ran on this CPU: a real cloud GPU would shrink decode and generate, which these numbers do not "
        "show. Files: " + ", ".join(f"`{f}`" for f in result["files"]) + ".",
        "",
    ]
    for name, st in stage_times.items():
        n_show = sorted({int(x) for x in cfg["lengths"]})
        top = n_show[-1]
        lines += [f"## `{name}` ({st.model_pair}): total compute per mode, ms", ""]
        rows = []
        for mode, m in st.modes.items():
            rows.append(
                [
                    mode,
                    *((m.before_transfer_s(n) + m.after_transfer_s(n)) * ms for n in n_show),
                    m.prefill.at(top) * ms + m.score.at(top) * ms,
                    m.encode.at(top) * ms,
                    m.decode.at(top) * ms,
                    m.generate.at(top) * ms,
                ]
            )
        lines += [
            markdown_table(
                [
                    "mode",
                    *(f"total @{n}" for n in n_show),
                    f"prefill+score @{top}",
                    f"encode @{top}",
                    f"decode @{top}",
                    f"generate @{top}",
                ],
                rows,
            ),
            "",
        ]
    lines += ["## Fits (medians per length, seconds)", ""]
    fit_rows = [
        [
            label,
            ", ".join(f"{int(n)}" for n in f["n"]),
            ", ".join(f"{y:.4f}" for y in f["median_s"]),
            f["fixed_s"] * ms,
            f["per_token_s"] * 1e6,
            f"{100 * f['max_rel_residual']:.1f}",
        ]
        for label, f in result["fits"].items()
    ]
    lines += [
        markdown_table(["stage", "context tokens", "median s", "fixed ms", "per token µs", "max residual %"], fit_rows),
        "",
    ]
    return "\n".join(lines)
