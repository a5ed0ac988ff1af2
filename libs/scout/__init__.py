"""Scout: decide per request what crosses a thin uplink between an edge model and a cloud model.

The core library is pure computation (no network I/O): model specs and loading (`scout.models`), the KV cache value
type (`scout.kvcache`), prompt layout (`scout.prompts`), and the prefill/generate core (`scout.inference`).
Heavy modules (torch, transformers) are imported lazily by the CLI so that `scout --help` stays instant.
"""

__version__ = "0.1.0"
