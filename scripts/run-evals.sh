#!/usr/bin/env bash
# Every evaluation behind the committed reports, in priority order; each `scout eval run` is resumable, so rerun
# this script to continue where it stopped (a finished run is a no-op). Stage 1 is what the committed reports hold
# (or are being extended to), stage 2 extends every run to n=200 with the same seeded samples (a larger n extends a
# smaller one).
# One torch thread per run: on a 2-core machine two threads of one process collapse under any other load.
# Usage: scripts/run-evals.sh [stage]   (stage 1, 2 or all; default all)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
SCOUT="${SCOUT:-.venv/bin/scout}"
E=qwen2.5-coder-0.5b
C=qwen2.5-coder-1.5b
# Plan files keep the legacy spelling `mixed:<plan.json>` (canonically `mixed@<plan.json>`; both parse to the same
# codec): a resumed run refuses settings that differ from its run.json, and the committed runs were started so.
CODECS_E="bf16,int8,int4,int2,int4-study,int4-study:keep=0,mixed:reports/plans/$E-int4-study.json,delta-int4,delta-int8"
CODECS_C="bf16,int8,int4,int2,int4-study,int4-study:keep=0,mixed:reports/plans/$C-int4-study.json,delta-int4,delta-int8"
# HotpotQA's distractor contexts (ten paragraphs) have a median of 5,637 characters and only 1.5 % fit the
# default 3,000-character cap: allow up to 6,000 (about 1,400 tokens; ~55 % of the items, never truncated).
HOTPOT_CHARS=6000
stage="${1:-all}"

run() { echo "+ scout eval run $*" >&2; "$SCOUT" eval run "$@"; }

if [[ "$stage" == 1 || "$stage" == all ]]; then
  run selection --dataset squad_v2 --model "$E" --dtype fp32 --application evict --n 200
  run quantization --dataset mmlu --model "$E" --dtype fp32 --n 200 --codecs "bf16,int8,int4,int2"
  run quantization --dataset squad_v2 --model "$C" --dtype fp32 --n 100 --codecs "$CODECS_C"
  run selection --dataset hotpotqa --model "$E" --dtype fp32 --application evict --max-context-chars "$HOTPOT_CHARS" --n 60
  run scout --dataset squad_v2 --model "$E" --cloud-model "$C" --dtype fp32 --n 60
  run quantization --dataset squad_v2 --model "$E" --dtype fp32 --n 100 --codecs "$CODECS_E"
  run quantization --dataset mmlu --model "$C" --dtype fp32 --n 200 --codecs "bf16,int8,int4,int2"
  run scout --dataset squad_v2 --model smollm2-135m --cloud-model "$E" --dtype fp32 --n 30   # across tokenizers
  run combined --dataset squad_v2 --model "$E" --dtype fp32 --n 40
  run selection --dataset triviaqa --model "$E" --dtype fp32 --application evict --max-context-chars 6000 --n 60
fi
if [[ "$stage" == 2 || "$stage" == all ]]; then
  run quantization --dataset squad_v2 --model "$E" --dtype fp32 --n 200 --codecs "$CODECS_E"
  run scout --dataset squad_v2 --model "$E" --cloud-model "$C" --dtype fp32 --n 200
  run selection --dataset hotpotqa --model "$E" --dtype fp32 --application evict --max-context-chars "$HOTPOT_CHARS" --n 200
  run quantization --dataset squad_v2 --model "$C" --dtype fp32 --n 200 --codecs "$CODECS_C"
  run selection --dataset squad_v2 --model "$E" --dtype fp32 --n 60   # the study's mask method, for comparison
fi
"$SCOUT" eval report
