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


def cpu_features() -> str:
    """x86 family, model and widest vector extension from /proc/cpuinfo, e.g. "family 25 model 1, AVX2": CPUs that
    share a model name ("AMD EPYC") can train at very different speeds. Empty where /proc/cpuinfo has no such
    fields (a Pi)."""
    try:
        fields: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip() and fields:
                break                                  # the first processor's block is enough
            k, _, v = line.partition(":")
            fields.setdefault(k.strip().lower(), v.strip())
    except OSError:
        return ""
    if "cpu family" not in fields:
        return ""
    flags = set(fields.get("flags", "").split())
    vec = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")) if flag in flags),
               "no AVX")
    return f"family {fields['cpu family']} model {fields.get('model', '?')}, {vec}"
