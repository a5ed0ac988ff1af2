"""What a benchmark or a report records about the machine it ran on.

Why in the core library: the CLI's benchmarks and the test harness's reports (``scout_testbed``) both record it, and
the harness must not import the CLI (it sits below it); this needs nothing but the standard library and torch.
"""

from __future__ import annotations

import os
import platform
from typing import Any

__all__ = ["machine_info"]


def machine_info(*, load_average: bool = False) -> dict[str, Any]:
    """Python and torch versions, torch's thread count, CPUs, the compute device and the platform; with
    ``load_average``, the 1/5/15-minute load too (on a shared machine it says how much the times are worth)."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "platform": platform.platform(),
    }
    if load_average and hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info
