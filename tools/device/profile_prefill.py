"""One profiled prefill per method on a bench model (issue 6): where the host and the GPU spend a pruned prefill.

Writes ``OUT/trace_MODEL_METHOD.json.gz`` (chrome trace: open in Perfetto) and prints, per method, the ops that
cost the most host time and the kernels that cost the most GPU time, and the GPU's busy share of the window.

Usage on the device machine (repo root, PYTHONPATH set as in gpu_bench.sh):
    python3 tools/device/profile_prefill.py MODEL LAYERS BATCH KEEP METHODS OUT
"""
from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

from prefill_case import bench_model, patched_prefill, synchronize


def gpu_busy_ms(trace: dict) -> tuple[float, float]:
    """(union of GPU kernel/memcpy intervals, span from the first to the last GPU event), ms."""
    spans = sorted((e["ts"], e["ts"] + e.get("dur", 0)) for e in trace["traceEvents"]
                   if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "ts" in e)
    if not spans:
        return 0.0, 0.0
    busy, (lo, hi) = 0.0, spans[0]
    for a, b in spans[1:]:
        if a > hi:
            busy += hi - lo
            lo, hi = a, b
        else:
            hi = max(hi, b)
    busy += hi - lo
    return busy / 1e3, (spans[-1][1] - spans[0][0]) / 1e3


def main(model: str, layers: int, batch: int, keep: int, methods: list[str], out: Path) -> None:
    bm, inputs = bench_model(model, layers, batch)
    for method in methods:
        with patched_prefill(bm, inputs, method, keep) as prefill:
            for _ in range(3):
                prefill()
            synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                prefill()
                synchronize()
        raw = out / f"trace_{model}_{method}.json"
        prof.export_chrome_trace(str(raw))
        trace = json.loads(raw.read_text())
        with open(raw, "rb") as src, gzip.open(f"{raw}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        raw.unlink()
        busy, span = gpu_busy_ms(trace)
        print(f"== {model} L{layers} b{batch} {method}@{keep}: GPU busy {busy:.1f} ms of a {span:.1f} ms GPU span")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=50))
        print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=8, max_name_column_width=50))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5].split(","),
         Path(sys.argv[6]))
