"""The study's claims, tested on Scout's own measurements: `scout eval report` writes `CLAIMS.md` + `claims.json`.

Why a module and not a hand-written note: a verdict ("held", "did not hold") is only as good as the numbers under
it, and those change every time a run is extended. Each check below names the claim, reads the saved per-sample
results of every run that can speak to it, computes the comparison with a paired test (same samples, same
prompts) or a relative CI, and applies a stated rule. The claims are paraphrased from the two source studies
(Paper A: task-aware KV compression; Paper B: Scout); no figure of the study is copied into an output.

Verdict rules (alpha = 0.05, two-sided, Bonferroni over the comparisons of one check within one run):
* "A beats B": ``held`` if A − B > 0 with adjusted p < alpha; ``reversed`` if A − B < 0 with adjusted p < alpha;
  else ``no significant difference``.
* "X is near-lossless (≥ T % of the reference)": ``held`` if the relative CI's lower bound ≥ T; ``did not hold``
  if its upper bound < T; else ``inconclusive`` (the CI straddles T).
* Bottleneck layer: the layer ranked first by the calibration's single-layer sensitivity (KL of the next-token
  distribution with only that layer quantized), read from the committed bit plan.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scout.stats import (
    adjust_pvalues,
    bootstrap_ci,
    paired_bootstrap_diff,
    paired_t_test,
    relative_ci,
    wilcoxon_test,
)
from scout_eval.codec_modes import plan_file_of
from scout_eval.run_folder import RUN_FILE, iter_runs, read_samples

ALPHA = 0.05


@dataclass
class Evidence:
    """One comparison on one run."""

    run: str
    comparison: str
    n: int
    value: str
    verdict: str
    numbers: dict[str, float] = field(default_factory=dict)


@dataclass
class Claim:
    key: str
    claim: str
    rule: str
    evidence: list[Evidence] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if not self.evidence:
            return "not measured yet"
        verdicts = sorted({e.verdict for e in self.evidence})
        return verdicts[0] if len(verdicts) == 1 else "mixed: " + ", ".join(verdicts)


def _runs(root: Path, experiment: str) -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    out = []
    for run_dir in iter_runs(root):
        info = json.loads((run_dir / RUN_FILE).read_text())
        if info.get("experiment") == experiment:
            out.append((f"{experiment}/{run_dir.name}", info, read_samples(run_dir)))
    return out


def _paired(rows: list[dict[str, Any]], a: str, b: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    both = [r for r in rows if a in r["conditions"] and b in r["conditions"]]
    x = np.array([float(r["conditions"][a][metric]) for r in both])
    y = np.array([float(r["conditions"][b][metric]) for r in both])
    return x, y


def _beats(run: str, rows: list[dict[str, Any]], metric: str, pairs: list[tuple[str, str]]) -> list[Evidence]:
    """ "A beats B" for each pair present in the run, Bonferroni-adjusted over the pairs."""
    measured = []
    for a, b in pairs:
        x, y = _paired(rows, a, b, metric)
        if x.size < 2:
            continue
        _, p = paired_t_test(x, y)
        diff, lo, hi = paired_bootstrap_diff(x, y)
        measured.append((a, b, x, y, p, diff, lo, hi))
    adjusted = adjust_pvalues([m[4] for m in measured], "bonferroni") if measured else []
    out = []
    for (a, b, x, y, p, diff, lo, hi), p_adj in zip(measured, adjusted, strict=True):
        p_w = wilcoxon_test(x, y)[1]
        if p_adj < ALPHA and diff > 0:
            verdict = "held"
        elif p_adj < ALPHA and diff < 0:
            verdict = "reversed"
        else:
            verdict = "no significant difference"
        value = (
            f"{metric} {x.mean():.3f} vs {y.mean():.3f}; diff {diff:+.3f} [{lo:+.3f}, {hi:+.3f}]; "
            f"p_t {p:.3g} (Bonferroni {p_adj:.3g}), p_Wilcoxon {p_w:.3g}"
        )
        numbers = {"a": float(x.mean()), "b": float(y.mean()), "diff": diff, "lo": lo, "hi": hi, "p_adj": p_adj}
        out.append(Evidence(run, f"{a} vs {b}", int(x.size), value, verdict, numbers))
    return out


def _near_lossless(
    run: str, rows: list[dict[str, Any]], metric: str, cond: str, ref: str, target: float
) -> list[Evidence]:
    x, y = _paired(rows, cond, ref, metric)
    if x.size < 2:
        return []
    rel, lo, hi = relative_ci(x, y)
    if math.isnan(rel):
        return []
    if lo >= target:
        verdict = "held"
    elif hi < target:
        verdict = "did not hold"
    else:
        verdict = "inconclusive"
    value = f"{rel:.1f} % of {ref} [{lo:.1f}, {hi:.1f}] ({metric} {x.mean():.3f} vs {y.mean():.3f})"
    return [
        Evidence(run, f"{cond} / {ref} ≥ {target:g} %", int(x.size), value, verdict, {"rel": rel, "lo": lo, "hi": hi})
    ]


def _model_of(info: dict[str, Any]) -> str:
    return str(info.get("config", {}).get("model", ""))


def build_claims(root: Path, plans_dir: Path | None = None) -> list[Claim]:
    """Every claim with the evidence the saved runs under ``root`` (and the bit plans in ``plans_dir``) give."""
    plans_dir = plans_dir if plans_dir is not None else root.parent / "plans"
    selection = _runs(root, "selection")
    quant = _runs(root, "quantization")
    scout = _runs(root, "scout")

    q2c_snapkv = Claim(
        "q2c_vs_snapkv",
        "Paper A §1: Q2C selection beats SnapKV (and H2O, random) at 25 % retention; the authors' later re-run "
        "says Q2C ≈ SnapKV ≫ H2O.",
        "A beats B (paired t-test, Bonferroni over the three pairs per retention)",
    )
    for run, info, rows in selection:
        metric = info["metric"]
        for r in ("0.25", "0.75"):
            pairs = [(f"q2c@{r}", f"{b}@{r}") for b in ("snapkv", "h2o", "random")]
            q2c_snapkv.evidence += _beats(run, rows, metric, pairs)

    int8 = Claim(
        "int8_near_lossless",
        "Paper A §2: INT8 KV is near-lossless (≥ 99 % of the 16-bit answer quality).",
        "near-lossless with T = 99 %",
    )
    int4 = Claim(
        "int4_fragile",
        "Paper A §2: INT4 is model-specific and can lose much quality; the study's per-token INT4 lost most of it.",
        "near-lossless with T = 95 % (a failure here means INT4 costs quality on this model)",
    )
    mixed = Claim(
        "mixed_int4_recovers",
        "Paper A §2: keeping layer 0 at 16 bits ('mixed INT4') recovers the study-quantizer's INT4 loss; a "
        "calibrated per-layer plan should do at least as well.",
        "A beats B (paired), for layer-0-kept and calibrated plans against plain study INT4",
    )
    delta = Claim(
        "delta_hurts",
        "Paper A §3: delta (anchor) encoding before INT4 quantization hurts quality versus direct INT4.",
        "A beats B (paired): direct INT4 against delta + INT4 (and INT8 likewise)",
    )
    for run, info, rows in quant:
        metric, ref = info["metric"], info["reference"]
        int8.evidence += _near_lossless(run, rows, metric, "int8", ref, 99.0)
        for c in ("int4", "int4-study"):
            int4.evidence += _near_lossless(run, rows, metric, c, ref, 95.0)
        conds = set(rows[0]["conditions"]) if rows else set()
        plan_conds = sorted(c for c in conds if plan_file_of(c) is not None)  # either spelling
        mixed.evidence += _beats(
            run, rows, metric, [(c, "int4-study") for c in ["int4-study:keep=0", *plan_conds] if c in conds]
        )
        delta.evidence += _beats(
            run, rows, metric, [(c, f"delta-{c}") for c in ("int4", "int8") if c in conds and f"delta-{c}" in conds]
        )

    bottleneck = Claim(
        "int4_bottleneck_layer",
        "Paper A §2: the INT4 loss comes almost entirely from one layer (layer 0 for the study's model).",
        "bottleneck layer = rank 1 of the calibration's single-layer sensitivity; 'held' if it is layer 0",
    )
    for plan_path in sorted(plans_dir.glob("*-int4-study.json")) if plans_dir.is_dir() else []:
        ev = json.loads(plan_path.read_text()).get("evidence", {})
        layers = {int(entry["layer"]): entry for entry in ev.get("layers", [])}
        ranking = ev.get("ranking") or []
        if not ranking or not layers:
            continue
        top, kl = int(ranking[0]), [float(layers[i]["kl_mean"]) for i in sorted(layers)]
        share = kl[top] / sum(kl) if sum(kl) > 0 else math.nan
        value = (
            f"most sensitive layer {top} (KL {kl[top]:.4f}, {100 * share:.0f} % of the summed single-layer KL); "
            f"layer 0 ranks {ranking.index(0) + 1 if 0 in ranking else '?'} of {len(ranking)}; "
            f"{len(ev.get('protected', []))} layers protected to reach KL ≤ {ev.get('quality_target_kl')}"
        )
        bottleneck.evidence.append(
            Evidence(
                f"plans/{plan_path.name}",
                "single-layer INT4 (study quantizer) sensitivity",
                int(ev.get("n_prompts", 0)),
                value,
                "held" if top == 0 else "did not hold",
                {"top_layer": float(top), "share": share},
            )
        )

    overlap = Claim(
        "scout_overlap",
        "Paper B §1: same-family edge and cloud models pick similar positions (about four in five shared at 75 % "
        "retention).",
        "mean overlap of the edge's kept set with the cloud's own at each retention, with a bootstrap CI (reported)",
    )
    focusing = Claim(
        "attention_focusing",
        "Paper B §1: the cloud answering from the edge's positions can beat its own selection ('attention "
        "focusing'); the study found it for one pair and the reverse for others.",
        "A beats B (paired): scout@r against own@r, Bonferroni over retentions",
    )
    for run, info, rows in scout:
        metric = info["metric"]
        retentions = sorted({c.split("@", 1)[1] for c in (rows[0]["conditions"] if rows else {}) if "@" in c})
        for r in retentions:
            vals = np.array(
                [float(x["conditions"][f"scout@{r}"]["overlap"]) for x in rows if f"scout@{r}" in x["conditions"]]
            )
            if vals.size >= 2:
                m, lo, hi = bootstrap_ci(vals)
                shown = f"{100 * m:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"
                overlap.evidence.append(
                    Evidence(run, f"overlap at {r}", int(vals.size), shown, "measured", {"mean": m, "lo": lo, "hi": hi})
                )
        focusing.evidence += _beats(run, rows, metric, [(f"scout@{r}", f"own@{r}") for r in retentions])

    mmlu = Claim(
        "mmlu_int8_int4",
        "MMLU accuracy under INT8 and INT4 KV (the study's multiple-choice task).",
        "near-lossless with T = 99 % (INT8) and 95 % (INT4)",
    )
    for run, info, rows in quant:
        if "mmlu" in run:
            mmlu.evidence += _near_lossless(run, rows, info["metric"], "int8", info["reference"], 99.0)
            mmlu.evidence += _near_lossless(run, rows, info["metric"], "int4", info["reference"], 95.0)
    return [q2c_snapkv, int8, int4, bottleneck, mixed, delta, overlap, focusing, mmlu]


def render_claims(claims: list[Claim]) -> str:
    lines = [
        "# The study's claims on Scout's measurements",
        "",
        "Regenerated by `scout eval report` from the saved runs (`libs/scout_eval/claims.py` states the rules). "
        "Claims are paraphrased from the source studies; every number below is computed from this folder.",
        "",
        "| claim | verdict |",
        "|---|---|",
    ]
    lines += [f"| {c.key} | {c.verdict} |" for c in claims]
    for c in claims:
        lines += ["", f"## {c.key}: {c.verdict}", "", c.claim, "", f"Rule: {c.rule}.", ""]
        if not c.evidence:
            lines.append("No run measures this yet.")
            continue
        lines += ["| run | comparison | n | result | verdict |", "|---|---|---|---|---|"]
        lines += [f"| {e.run} | {e.comparison} | {e.n} | {e.value} | {e.verdict} |" for e in c.evidence]
    return "\n".join(lines) + "\n"


def write_claims(root: Path, plans_dir: Path | None = None) -> list[Claim]:
    claims = build_claims(root, plans_dir)
    (root / "CLAIMS.md").write_text(render_claims(claims), encoding="utf-8")
    payload = [{**asdict(c), "verdict": c.verdict} for c in claims]
    (root / "claims.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return claims
