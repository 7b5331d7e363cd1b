"""CUDA-graph replay against eager execution (issue 6), on the device machine: VisPruner's duplicate removal and
the CLIP text tower, equal results and the time of one call (host + GPU, synchronised), median of 20.

    python3 tools/device/graph_check.py
"""
from __future__ import annotations

import os
import statistics
import time

import torch

from vlprune.methods.vispruner import _remove_duplicates_graphed, remove_duplicates
from vlprune.speed import build


def timed(fn, reps: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    ms = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ms.append(1e3 * (time.perf_counter() - t))
    return statistics.median(ms)


def main() -> None:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    for b, n, m, target in [(8, 576, 544, 32), (1, 2880, 2720, 160), (1, 2880, 2400, 480)]:
        feats = torch.randn(b, n, 1024, device=dev, generator=g).bfloat16()
        cand = torch.sort(torch.rand(b, n, device=dev, generator=g).argsort(-1)[:, :m], -1).values
        with torch.inference_mode():
            eager = remove_duplicates(feats, cand, target)
            graphed = _remove_duplicates_graphed(feats, cand, target=target, per_round=8)
            same = torch.equal(eager, graphed)
            t_e = timed(lambda: remove_duplicates(feats, cand, target))
            t_g = timed(lambda: _remove_duplicates_graphed(feats, cand, target=target, per_round=8))
        print(f"remove_duplicates B={b} N={n} M={m} -> {target}: equal {same}; eager {t_e:.2f} ms, graph {t_g:.2f} ms")

    bm = build("llava-1.5-7b", 2, None, torch.bfloat16, dev)
    clip = bm.clip_text
    words = "what color is the red circle left of the blue square how many green".split()
    for b in (1, 8):
        qs = [" ".join(words[: 5 + i]) for i in range(b)]
        with torch.inference_mode():
            os.environ["VLPRUNE_CUDA_GRAPHS"] = "0"
            te, me, ee = clip.encode(qs)
            t_e = timed(lambda: clip.encode(qs))
            os.environ["VLPRUNE_CUDA_GRAPHS"] = "1"
            tg, mg, eg = clip.encode(qs)
            t_g = timed(lambda: clip.encode(qs))
        diff_t = (te.float() - tg.float())[me].abs().max().item()
        diff_e = (ee.float() - eg.float()).abs().max().item()
        scale = te.float()[me].abs().max().item()
        print(f"CLIP text tower B={b}: masks equal {torch.equal(me, mg)}, max |diff| tokens {diff_t:.2e}, "
              f"eos {diff_e:.2e} (values up to {scale:.2f}); eager {t_e:.2f} ms, graph {t_g:.2f} ms")


if __name__ == "__main__":
    main()
