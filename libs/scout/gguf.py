"""GGUF to safetensors, once per model: dequantise with transformers and write a plain checkpoint.

Why a module of its own: `scout.models` decides *which* weights to load and where they are cached; this is the one
place that knows how a GGUF becomes a folder transformers loads in seconds (tied weights, dropped quantisation
config, fp32 values kept exactly)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

WEIGHTS_FILE = "model.safetensors"


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def convert_gguf(gguf_dir: Path, gguf_name: str, out: Path) -> None:
    """Dequantise a GGUF with transformers and save it as a plain fp32 safetensors checkpoint.

    `save_pretrained` refuses a GGUF-loaded model, so the weights go through `safetensors.torch.save_model`
    (which also handles tied embeddings) and the config is written without its `quantization_config`.
    fp32 keeps the dequantised values exactly; loading casts to the requested dtype.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    out.mkdir(parents=True)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.dtype = "float32"
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    tok.save_pretrained(out)
    save_file(_untied_state_dict(model), str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    del model


def _untied_state_dict(model: Any) -> dict[str, Any]:
    """The state dict with each shared tensor stored once, under the name transformers reloads it from.

    Tied weights (e.g. `lm_head.weight` sharing `model.embed_tokens.weight`) must be written under the input
    embedding's name: transformers 5 re-ties either way, but 4.x only re-ties from the embedding and would
    otherwise leave it uninitialised.
    """
    tied = model._tied_weights_keys if isinstance(getattr(model, "_tied_weights_keys", None), (list, tuple)) else []
    tied_names = set(tied) | ({"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set())
    by_storage: dict[tuple[int, int, tuple[int, ...]], str] = {}
    out: dict[str, Any] = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        kept = by_storage.get(key)
        if kept is None:
            by_storage[key] = name
            out[name] = tensor.contiguous()
        elif kept in tied_names and name not in tied_names:  # prefer the embedding's name over lm_head's
            del out[kept]
            by_storage[key] = name
            out[name] = tensor.contiguous()
    return out


# ----------------------------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------------------------
