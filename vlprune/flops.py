"""Analytic LLM-side FLOPs of the visual tokens (desap.txt appendix B.2, eqs. 6-7; FastV/PyramidDrop)."""
from __future__ import annotations

import inspect
from typing import Any

from .presets import ModelShape
from .registry import get_method


def layer_flops(n: int, d: int, m: int) -> float:
    """One decoder layer over n visual tokens: 4 n d^2 + 2 n^2 d + 3 n d m (eq. 6)."""
    return 4 * n * d * d + 2 * n * n * d + 3 * n * d * m


def visual_flops(tokens_per_layer: list[int], d: int, m: int) -> float:
    """Sum of eq. 6 over the layers, each with its own visual-token count (eq. 7)."""
    return float(sum(layer_flops(n, d, m) for n in tokens_per_layer))


def tokens_per_layer(method: str | None, keep: int | None, shape: ModelShape, n_tokens: int | None = None,
                     **options: Any) -> list[int]:
    """Visual tokens each LLM layer processes under ``method`` at budget ``keep`` (None: the full model).

    Encoder-side methods give every layer ``keep``; in-LLM methods count layer by layer: the layers before a
    stage see the previous count (FastV's first K layers see every token). The tokens no method prunes
    (``shape.fixed_tokens``: Video-LLaVA's frame [CLS] tokens) are added to every layer.
    """
    n = n_tokens or shape.visual_tokens
    fixed = shape.fixed_tokens
    if method in (None, "none", "full") or keep is None:
        return [n + fixed] * shape.layers
    spec = get_method(method)
    cfg = spec.config_cls(**options)
    if spec.encoder is not None:
        enc = getattr(__import__(spec.encoder.__module__, fromlist=["_"]), "encoder_tokens", None)
        current = enc(keep, cfg, n) if (enc is not None and spec.plan is not None) else min(keep, n)
    else:
        current = n
    counts = [current] * shape.layers
    if spec.plan is not None:
        # schedules capped by the unpruned count, as ``vlprune.apply`` builds them (VisionDrop's 1.5 x keep)
        capped = {"tokens_per_image": n} if "tokens_per_image" in inspect.signature(spec.plan).parameters else {}
        stages = spec.plan(keep, shape.layers, cfg, **capped)
        if any(getattr(s, "adaptive", False) for s in stages):
            raise ValueError(f"{method} with these options decides per sample how many visual tokens it keeps "
                             "(SparseVLM version='v1': rank(A) * scale + bias), so no analytic FLOPs exist; count "
                             "a run's tokens per layer instead (vlprune.methods.sparsevlm.measured_tokens_per_layer)")
        for stage in sorted(stages, key=lambda s: s.layer):
            before = counts[stage.layer]
            k = min(stage.keep, before)
            if k < before and stage.extra is not None:  # tokens kept beyond the budget (SparseVLM's recycled ones)
                k = min(before, k + stage.extra(before, k))
            for layer in range(stage.layer, shape.layers):
                counts[layer] = min(k, counts[layer])
    return [c + fixed for c in counts]


def method_tflops(method: str | None, keep: int | None, shape: ModelShape, n_tokens: int | None = None,
                  **options: Any) -> float:
    return visual_flops(tokens_per_layer(method, keep, shape, n_tokens, **options), shape.hidden, shape.ffn) / 1e12
