"""What this CPU's matmuls run on, and the dtype it runs fast: bf16 only where the CPU has bf16 instructions
(AVX-512 BF16 or AMX); elsewhere oneDNN emulates bf16 and a prefill takes several times longer than in fp32."""
from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The ``flags`` of /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(flags: frozenset[str] | None = None) -> bool:
    """bf16 matmuls in hardware: AMX-BF16 or AVX-512 BF16 (x86), or Arm's BF16 extension."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"amx_bf16", "avx512_bf16", "bf16"})


def matmul_path(flags: frozenset[str] | None = None) -> str:
    """One line: torch's CPU kernel level and how bf16 matmuls run, e.g. ``AVX2; bf16 emulated (no AVX-512 BF16/AMX)``."""
    flags = cpu_flags() if flags is None else flags
    level = torch.backends.cpu.get_cpu_capability()
    if "amx_bf16" in flags:
        bf16 = "bf16 on AMX"
    elif flags & {"avx512_bf16", "bf16"}:
        bf16 = "bf16 native (AVX-512 BF16)" if "avx512_bf16" in flags else "bf16 native"
    else:
        bf16 = "bf16 emulated (no AVX-512 BF16/AMX: slower than fp32)"
    lib = "oneDNN" if torch.backends.mkldnn.is_available() else "no oneDNN"
    return f"{level}, {lib}; {bf16}"


def pick_dtype(requested: str, device: str | torch.device, flags: frozenset[str] | None = None) -> tuple[str, str]:
    """``(dtype, why)``: ``requested`` unless it is ``auto``; auto = bf16 on a GPU (fp16 on one without bf16) or a
    CPU with bf16 hardware, else fp32."""
    if requested != "auto":
        return requested, "asked for"
    if torch.device(device).type == "cuda":
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            return "fp16", "auto: this GPU has no bf16"
        return "bf16", "auto: GPU"
    if torch.device(device).type != "cpu":
        return "bf16", "auto: accelerator"
    if native_bf16(flags):
        return "bf16", "auto: this CPU has bf16 hardware"
    return "fp32", "auto: this CPU has no bf16 hardware, where bf16 is slower than fp32"
