"""CUDA-graph replay against eager execution (issue 6), on the device machine: VisPruner's duplicate removal,
the CLIP text tower, and DeSAP's recomputed signals ([CLS] attention, decoupled attention) and selection (alignment,
ranking, merge) at the LLaVA-1.5-7B shape; equal results and the time of one call (host + GPU, synchronised),
median of 20.

    python3 tools/device/graph_check.py
"""
from __future__ import annotations

import os
import statistics
import time

import torch

from vlprune.methods.desap import _select_graphed, select_from_signals
from vlprune.methods.vispruner import _remove_duplicates_graphed, remove_duplicates
from vlprune.models.clip_signals import (_cls_attention_graphed, _decoupled_graphed, cls_attention_row,
                                         decoupled_joint)
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

    tower = bm.model.model.vision_tower
    blocks = tower.encoder.layers
    for b in (1, 8):
        hidden = torch.randn(b, 577, 1024, device=dev, generator=g).bfloat16()
        cls_kw = {"block": blocks[-2]}
        dec_kw = {"block": blocks[-1], "post_layernorm": tower.post_layernorm, "projection": clip.visual_projection,
                  "mode": "qq"}
        with torch.inference_mode():
            for name, fn, graphed, kw in (("[CLS] attention", cls_attention_row, _cls_attention_graphed, cls_kw),
                                          ("decoupled attention", decoupled_joint, _decoupled_graphed, dec_kw)):
                e, gr = fn(hidden, **kw), graphed(hidden, **kw)
                diff = (e.float() - gr.float()).abs().max().item()
                t_e = timed(lambda: fn(hidden, **kw))
                t_g = timed(lambda: graphed(hidden, **kw))
                print(f"{name} B={b}: max |diff| {diff:.2e}; eager {t_e:.2f} ms, graph {t_g:.2f} ms")
            feats = hidden[:, 1:]
            salient = cls_attention_row(hidden, **cls_kw)
            joint = decoupled_joint(hidden, **dec_kw)
            text, mask, eos = clip.encode([" ".join(words[: 5 + i]) for i in range(b)])
            args = (feats, salient, joint, text, mask, eos)
            kw = {"k1": 32, "k2": 32}
            e, gr = select_from_signals(*args, **kw), _select_graphed(*args, **kw)
            same = all(torch.equal(x, y) for x, y in zip(e[1:], gr[1:]))
            diff = (e[0].float() - gr[0].float()).abs().max().item()
            t_e = timed(lambda: select_from_signals(*args, **kw))
            t_g = timed(lambda: _select_graphed(*args, **kw))
            print(f"DeSAP selection @64 B={b}: kept/task/assign equal {same}, merged max |diff| {diff:.2e}; "
                  f"eager {t_e:.2f} ms, graph {t_g:.2f} ms")


if __name__ == "__main__":
    main()
