"""Facts about the machine a benchmark or a training run happened on (numpy-free, stdlib only)."""
from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU model as /proc/cpuinfo names it (x86 "model name", a Pi's "Hardware"), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""
