"""`scout.pipeline`: the pure computations the services share with the in-process path (real SmolLM2, no servers)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from scout.codec.quant import BitPlan
from scout.codec.wire import BlobChecksumError, BlobFingerprintError, decode_blob, encode_blob
from scout.datasets import Example
from scout.pipeline import (
    DEFAULT_MIXED_PLAN,
    PolicyConfig,
    answer_from_blob,
    answer_from_document,
    answer_inprocess,
    bit_plan_for,
    bit_plan_name,
    edge_prefill,
    encode_uplink,
    parse_bit_plan,
    plan_request,
    raw_kv_blob,
    uplink_payload_bytes,
    visible_positions,
)
from scout.positions import encode_positions

pytestmark = pytest.mark.models


# --- bit plans ---------------------------------------------------------------------------------------------------
def test_bit_plan_names_round_trip() -> None:
    assert parse_bit_plan("bf16") == BitPlan.uniform(16)
    assert parse_bit_plan("int8") == BitPlan.uniform(8)
    assert parse_bit_plan("int4") == BitPlan.uniform(4)
    plan = parse_bit_plan("mixed:0=16,5=8")
    assert plan.default == 4 and dict(plan.overrides) == {0: 16, 5: 8}
    assert bit_plan_name(plan) == "mixed:0=16,5=8"
    assert bit_plan_name(BitPlan.uniform(8)) == "int8"
    assert parse_bit_plan("mixed:") == BitPlan.uniform(4)
    for bad in ("int3", "mixed:0=3", "mixed:0=16,0=8", "mixed:a=16", "MIXED:0=16", "", "mixed:0=16;rm -rf"):
        with pytest.raises(ValueError):
            parse_bit_plan(bad)
    assert [bit_plan_for(m) for m in ("full", "int8", "int4", "mixed", "scout", "text", "local")] == [
        "bf16",
        "int8",
        "int4",
        DEFAULT_MIXED_PLAN,
        "positions",
        "none",
        "none",
    ]


def test_visible_positions_keep_everything_outside_the_context() -> None:
    vis = visible_positions(10, 2, 5, np.array([1, 3]))
    assert vis.tolist() == [0, 1, 3, 5, 7, 8, 9]
    assert visible_positions(4, 1, 2, np.array([], dtype=np.int64)).tolist() == [0, 3]
    with pytest.raises(ValueError):
        visible_positions(10, 8, 5, np.array([0]))
    with pytest.raises(ValueError):
        visible_positions(10, 2, 5, np.array([5]))


def test_payload_bytes_by_mode() -> None:
    assert uplink_payload_bytes("int8", blob_bytes=1234) == 1234
    assert uplink_payload_bytes("scout", positions=b"\x01\x02", question="Why?") == 2 + 4 + 32
    assert uplink_payload_bytes("text", question="Why?") == 4 + 32
    assert uplink_payload_bytes("local") == 0
    with pytest.raises(ValueError):
        uplink_payload_bytes("teleport")


# --- planning ----------------------------------------------------------------------------------------------------
def test_threshold_rule_climbs_with_the_rate(ref_lm: Any) -> None:
    policy = PolicyConfig.for_model(ref_lm.spec, mixed_plan="mixed:0=16")
    order = ["local", "scout", "int4", "mixed", "int8", "full"]
    seen = []
    for rate in (0.0, 1e3, 1e6, 3e7, 6e7, 1e8, 3e8, 1e9, 1e11):
        plan = plan_request(policy, context_tokens=200, deadline_s=1.0, bandwidth_bps=rate)
        assert plan.reason.startswith("threshold rule")
        if plan.mode in ("full", "int8", "int4", "mixed"):
            assert plan.transfer_s <= 0.5 * 1.0 and plan.bytes == policy.sizes[plan.mode][1].size_bytes(200)
        seen.append(order.index(plan.mode))
    assert seen == sorted(seen) and seen[0] == 0 and seen[-1] == len(order) - 1
    # Elapsed time eats the budget: a rate that sufficed for full no longer does.
    fresh = plan_request(policy, context_tokens=200, deadline_s=1.0, bandwidth_bps=1e9)
    late = plan_request(policy, context_tokens=200, deadline_s=1.0, elapsed_s=0.95, bandwidth_bps=1e9)
    assert order.index(late.mode) < order.index(fresh.mode)


def test_a_forced_mode_wins_and_is_sized(ref_lm: Any) -> None:
    policy = PolicyConfig.for_model(ref_lm.spec, mixed_plan="mixed:0=16")
    plan = plan_request(policy, context_tokens=100, deadline_s=1.0, bandwidth_bps=1e3, mode="int8", retention=0.5)
    assert (plan.mode, plan.retention, plan.bit_plan) == ("int8", 0.5, "int8")
    assert plan.bytes == policy.sizes["int8"][1].size_bytes(100, 0.5) and not plan.feasible
    scout = plan_request(policy, context_tokens=100, deadline_s=1.0, bandwidth_bps=1e3, mode="scout")
    assert scout.retention == policy.scout_retention and scout.bit_plan == "positions"
    assert math.isnan(scout.expected_quality)


def test_with_a_table_the_deadline_planner_decides(ref_lm: Any) -> None:
    from scout.policy.operating_points import OperatingPoint, OperatingPointTable

    policy = PolicyConfig.for_model(ref_lm.spec)
    points = [
        OperatingPoint.from_size(
            policy.sizes[mode][1],
            mode=mode,
            retention=r,
            plan=policy.sizes[mode][0],
            quality_mean=q,
            quality_lo=q - 1,
            quality_hi=q + 1,
            n=50,
            model_pair="smol->smol",
        )
        for mode, r, q in (("full", 1.0, 80.0), ("int8", 1.0, 79.5), ("scout", 0.5, 60.0), ("local", 1.0, 40.0))
    ]
    table = OperatingPointTable(points=points)
    tabled = PolicyConfig(table=table, sizes=policy.sizes)
    fast = plan_request(tabled, context_tokens=200, deadline_s=1.0, bandwidth_bps=1e10)
    slow = plan_request(tabled, context_tokens=200, deadline_s=1.0, bandwidth_bps=1e5)
    assert fast.mode == "full" and fast.expected_quality == 1.0
    assert (slow.mode, slow.retention) == ("scout", 0.5) and slow.expected_quality == 0.75


# --- edge and cloud computations ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def edge(ref_lm: Any, squad: list[Example]) -> Any:
    ex = squad[0]
    return edge_prefill(ref_lm, question=ex.question, document=ex.context)


def test_eviction_keeps_the_selected_context(ref_lm: Any, edge: Any) -> None:
    fp = ref_lm.spec.fingerprint
    raw = raw_kv_blob(edge, fp)
    decoded = decode_blob(raw, expected_fingerprint=fp)
    assert decoded.orig_seq_len == edge.prompt_tokens - 1 and decoded.cache.keys[0].dtype == torch.bfloat16
    kept = edge.kept(0.25)
    up = encode_uplink(
        raw,
        model_fingerprint=fp,
        bit_plan="int4",
        positions=edge.position_set(0.25),
        context_start=edge.context_start,
        context_tokens=edge.context_tokens,
    )
    assert up.kept_tokens == edge.prompt_tokens - 1 - edge.context_tokens + len(kept)
    out = decode_blob(up.data, expected_fingerprint=fp)
    expected = visible_positions(edge.prompt_tokens - 1, edge.context_start, edge.context_tokens, kept)
    assert torch.equal(out.positions, expected) and set(out.cache.bits()) == {4}
    full = encode_uplink(
        raw,
        model_fingerprint=fp,
        bit_plan="bf16",
        positions=None,
        context_start=edge.context_start,
        context_tokens=edge.context_tokens,
    )
    assert decode_blob(full.data).kvcache().equal(decoded.kvcache())


def test_encode_refuses_what_it_must_not_encode(ref_lm: Any, edge: Any) -> None:
    fp = ref_lm.spec.fingerprint
    raw = raw_kv_blob(edge, fp)
    common = {"positions": None, "context_start": edge.context_start, "context_tokens": edge.context_tokens}
    with pytest.raises(BlobFingerprintError):
        encode_uplink(raw, model_fingerprint="0123456789abcdef", bit_plan="int8", **common)
    flipped = bytearray(raw)
    flipped[-3] ^= 0x10
    with pytest.raises(BlobChecksumError):
        encode_uplink(bytes(flipped), model_fingerprint=fp, bit_plan="int8", **common)
    pruned = encode_blob(edge.handoff_kv().select(torch.arange(1, 5)), model_fingerprint=fp)
    with pytest.raises(ValueError, match="pruned"):
        encode_uplink(pruned, model_fingerprint=fp, bit_plan="int8", **common)
    with pytest.raises(ValueError):
        encode_uplink(raw, model_fingerprint=fp, bit_plan="mixed:99=16", **common)
    with pytest.raises(ValueError):
        encode_uplink(
            raw,
            model_fingerprint=fp,
            bit_plan="int8",
            positions=encode_positions([0], 1),
            context_start=edge.context_start,
            context_tokens=edge.prompt_tokens,
        )


def test_cloud_refuses_blobs_and_ids_it_must_not_decode(ref_lm: Any, edge: Any, squad: list[Example]) -> None:
    other = encode_blob(edge.handoff_kv(), model_fingerprint="0123456789abcdef")
    with pytest.raises(BlobFingerprintError):
        answer_from_blob(ref_lm, other, suffix_ids=edge.suffix_ids())
    raw = raw_kv_blob(edge, ref_lm.spec.fingerprint)
    for bad in ([], [ref_lm.spec.vocab_size], [-1]):
        with pytest.raises(ValueError):
            answer_from_blob(ref_lm, raw, suffix_ids=bad)
    ex = squad[0]
    with pytest.raises(ValueError, match="tokenizer"):
        answer_from_document(
            ref_lm, question=ex.question, document=ex.context, positions=encode_positions([0], 3), context_tokens=3
        )


def test_scout_positions_cross_tokenizers_by_character_spans(ref_lm: Any, squad: list[Example]) -> None:
    """An edge with another tokenizer (Qwen2.5's) keeping every context token: mapped onto SmolLM2's tokens it
    keeps every one of them, so the answer is SmolLM2's own full-set scout answer."""
    from scout.models import ModelNotAvailable, load_tokenizer
    from scout.prompts import build_prompt

    try:
        qwen = load_tokenizer("qwen2.5-coder-0.5b")
    except ModelNotAvailable as e:
        pytest.skip(str(e))
    ex = squad[1]
    n_qwen = len(build_prompt(qwen, question=ex.question, context=ex.context).context)
    n_smol = len(build_prompt(ref_lm.tokenizer, question=ex.question, context=ex.context).context)
    assert n_qwen != n_smol
    common = {"question": ex.question, "document": ex.context, "max_new_tokens": 4}
    aligned = answer_from_document(
        ref_lm,
        positions=encode_positions(np.arange(n_qwen), n_qwen),
        context_tokens=n_qwen,
        edge_tokenizer=qwen,
        **common,
    )
    own = answer_from_document(
        ref_lm, positions=encode_positions(np.arange(n_smol), n_smol), context_tokens=n_smol, **common
    )
    assert aligned.token_ids == own.token_ids


def test_inprocess_local_and_text(ref_lm: Any, squad: list[Example]) -> None:
    ex = squad[3]
    local = answer_inprocess(ref_lm, ref_lm, question=ex.question, document=ex.context, mode="local", max_new_tokens=6)
    text = answer_inprocess(ref_lm, ref_lm, question=ex.question, document=ex.context, mode="text", max_new_tokens=6)
    assert local.bytes_sent == 0 and local.answered_by == "edge" and local.token_ids
    assert text.answered_by == "cloud" and text.bytes_sent == len(ex.question.encode()) + 32
    assert {"tokenize", "prefill", "score", "plan", "decode", "generate", "total"} <= set(local.timings)


def test_a_plan_sizes_the_whole_hand_off_cache(ref_lm: Any, squad: list[Example]) -> None:
    """KV modes send the cache of every prompt token but the last: the context (or its kept part) *and* the
    instruction and question around it. The plan's bytes must count both; what it leaves out is only the blob's
    JSON header (not modelled), so the sent blob is a little larger than planned, never by a token's worth."""
    ex = squad[1]
    edge = edge_prefill(ref_lm, question=ex.question, document=ex.context)
    assert edge.extra_tokens == edge.prompt_tokens - 1 - edge.context_tokens > 0
    policy = PolicyConfig.for_model(ref_lm.spec)
    per_token = policy.sizes["full"][1].bytes_per_context_token
    for mode, r in (("full", 1.0), ("int8", 1.0), ("int4", 0.5), ("full", 0.25)):
        ans = answer_inprocess(
            ref_lm, ref_lm, question=ex.question, document=ex.context, mode=mode, retention=r, max_new_tokens=2
        )
        header = ans.bytes_sent - ans.plan.bytes
        # The JSON header (names, offsets, metadata of every layer's tensors) is less than one token of bf16 KV.
        assert 0 < header < per_token, (mode, r, ans.bytes_sent, ans.plan.bytes)
    # Sizing without the extra tokens under-counts by exactly their share of the payload.
    ctx_only = plan_request(policy, context_tokens=edge.context_tokens, deadline_s=9.0, bandwidth_bps=1e9, mode="full")
    whole = plan_request(
        policy,
        context_tokens=edge.context_tokens,
        extra_tokens=edge.extra_tokens,
        deadline_s=9.0,
        bandwidth_bps=1e9,
        mode="full",
    )
    assert whole.bytes - ctx_only.bytes == per_token * edge.extra_tokens
