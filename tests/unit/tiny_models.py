"""A small random-init Qwen2 for the unit tests that need real attention and a real transformers cache.

Why one builder: the KV-cache bridge, the quantizer, the calibration and the GGUF export tests each need a model
with real modules but no weights to download; one configuration (and one seeding rule) keeps their caches' shapes
and values from drifting apart between files.
"""

from __future__ import annotations

from typing import Any

import torch

TINY_QWEN2: dict[str, Any] = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 1000,
}
"""The base configuration: two layers of two KV heads of 16 dims, so caches are small and their shapes exact."""


def tiny_qwen2(*, seed: int = 0, **config: Any) -> tuple[Any, Any]:
    """``(Qwen2Config, Qwen2ForCausalLM in eval mode)``, `config` overriding `TINY_QWEN2`. The seed is set right
    before the weights are drawn, so a call gives the same model every time and a test's next draws (token ids)
    continue from the same generator state."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**{**TINY_QWEN2, **config})
    torch.manual_seed(seed)
    return cfg, Qwen2ForCausalLM(cfg).eval()
