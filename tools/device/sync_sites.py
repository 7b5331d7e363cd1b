"""Where a pruned prefill makes the host wait for the GPU (issue 6).

For each method: one warm prefill of a bench model under ``torch.cuda.set_sync_debug_mode("warn")``; every
synchronising call is counted by its innermost vlprune frame and innermost transformers frame. A sync after the
vision tower is queued stalls the host until the tower is done, and the GPU then idles while the host launches
the next kernels: these are the places that make a pruning step slow on a GPU and cheap on a CPU.

Usage on the device machine (repo root, PYTHONPATH set as in gpu_bench.sh):
    python3 tools/device/sync_sites.py MODEL LAYERS BATCH KEEP METHODS
e.g. python3 tools/device/sync_sites.py llava-1.5-7b 4 8 64 none,desap,vispruner,visionzip,fastv,random
"""
from __future__ import annotations

import collections
import sys
import traceback
import warnings

import torch

from prefill_case import bench_model, patched_prefill, synchronize


def _site(frames: list, marker: str) -> str:
    hits = [f for f in frames if marker in f.filename]
    if not hits:
        return "-"
    f = hits[-1]
    return f"{f.filename.split(marker)[-1]}:{f.lineno} {f.name}"


def sync_sites(fn) -> collections.Counter:
    """Run ``fn`` once with sync warnings on; count the (vlprune frame, transformers frame) of each sync."""
    found: collections.Counter = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return
        frames = traceback.extract_stack()[:-1]
        ours = [f for f in frames if "tools/device" not in f.filename]
        found[(_site(ours, "/vlprune/"), _site(ours, "/transformers/"))] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
    return found


def main(model: str, layers: int, batch: int, keep: int, methods: list[str]) -> None:
    bm, inputs = bench_model(model, layers, batch)  # on a CPU: a smoke run, no syncs to find
    print(f"== {model} layers {layers} batch {batch} keep {keep}")
    for method in methods:
        try:
            with patched_prefill(bm, inputs, method, keep) as prefill:
                prefill()  # warm: lazy initialisation syncs are not the steady state
                synchronize()
                sites = sync_sites(prefill)
        except (ValueError, NotImplementedError) as e:
            print(f"-- {method}: skipped ({e})")
            continue
        print(f"-- {method}: {sum(sites.values())} syncs")
        for (ours, theirs), n in sites.most_common():
            print(f"   {n:4d}  {ours:55s} | {theirs}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5].split(","))
