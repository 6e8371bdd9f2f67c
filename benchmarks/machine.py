"""The machine a benchmark ran on, recorded beside every figure.

These machines are not all the same CPU: the flags that decide numeric kernels (AVX2,
AVX-512, its BF16 and VNNI extensions, AMX) and the load average while measuring say how far
a figure can be compared with another. One home for it, so every report says the same.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU's model name and which of FLAGS it has (from /proc/cpuinfo)."""
    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name") and model in ("", "?", platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return model, [f for f in FLAGS if f in flags]


def machine() -> dict[str, Any]:
    """CPU model, its flags that matter, cores, memory, load averages and versions."""
    model, flags = cpu_model_and_flags()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu": model,
        "flags": flags,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(mem / 2**30, 1),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
