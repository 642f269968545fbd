"""What this host's hardware can serve: decides quantization schemes and their parameters."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def has_vnni() -> bool:
    """AVX-512 VNNI or AVX-VNNI: int8 dot products without the saturating AVX2 fallback."""
    return bool({"avx512_vnni", "avx_vnni"} & cpu_flags())


def has_amx() -> bool:
    """AMX tiles (Sapphire Rapids and later): vLLM's CPU build then runs int8 GEMMs with
    symmetric activations on its AMX kernel, which takes bf16/fp16 activations only."""
    return "amx_tile" in cpu_flags()


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a CPU-only torch build, or no driver: no GPU to use either way
        return 0


def describe() -> str:
    gpus = gpu_count()
    isa = "AVX-512" if "avx512f" in cpu_flags() else ("AVX2" if "avx2" in cpu_flags() else "no AVX2")
    return f"{gpus} GPU(s), CPU with {isa}{' + VNNI' if has_vnni() else ', no VNNI'}{' + AMX' if has_amx() else ''}"
