"""Small helpers shared by the experiments: turning generations into scored predictions."""

from __future__ import annotations

from typing import Any

import torch

from scout.datasets import Example
from scout.inference import Generation
from scout.kvcache import KVCache
from scout.metrics import clean_generation, mmlu_predict, score
from scout.models import LoadedModel
from scout.prompts import CHOICE_LETTERS


def scored(ex: Example, gen: Generation, **extra: Any) -> dict[str, Any]:
    """The cleaned prediction with its metrics (and any extra facts about the condition)."""
    pred = clean_generation(gen.text)
    return {"pred": pred, **score(ex, pred), **extra}


def choice_token_ids(tokenizer: Any) -> list[int]:
    """Token ids of ' A', ' B', ' C', ' D' (what follows 'Answer:'), first token of each."""
    return [tokenizer(" " + letter, add_special_tokens=False)["input_ids"][0] for letter in CHOICE_LETTERS]


@torch.inference_mode()
def choice_scored(lm: LoadedModel, ex: Example, kv: KVCache, last_token: int, **extra: Any) -> dict[str, Any]:
    """MMLU: the answer is the choice letter with the highest next-token logit after the cached prompt."""
    cache = kv.to(device=lm.device, dtype=lm.model.dtype).to_hf(lm.model.config)
    pos = torch.tensor([[kv.next_position]], device=lm.device)
    logits = (
        lm.model(input_ids=torch.tensor([[last_token]], device=lm.device), past_key_values=cache, position_ids=pos)
        .logits[0, -1]
        .float()
    )
    ids = choice_token_ids(lm.tokenizer)
    index = mmlu_predict(logits[ids].cpu().numpy())
    return {"pred": CHOICE_LETTERS[index], **score(ex, index), **extra}
