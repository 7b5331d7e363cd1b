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
    plan = spec.family_plans.get(shape.family, spec.plan)  # FlowCut on LLaVA-NeXT: a cut after LLM layer 1
    if spec.encoder is not None:
        enc = getattr(__import__(spec.encoder.__module__, fromlist=["_"]), "encoder_tokens", None)
        tiles = {"tiles": -(-n // (shape.image_size // shape.patch_size) ** 2)} if shape.family == "llava_next" else {}
        current = enc(keep, cfg, n, **tiles) if (enc is not None and plan is not None) else min(keep, n)
    else:
        current = n
    counts = [current] * shape.layers
    if plan is not None:
        # schedules capped by the unpruned count, as ``vlprune.apply`` builds them (VisionDrop's 1.5 x keep)
        capped = {"tokens_per_image": n} if "tokens_per_image" in inspect.signature(plan).parameters else {}
        stages = plan(keep, shape.layers, cfg, **capped)
        if any(getattr(s, "adaptive", False) for s in stages):
            raise ValueError(f"{method} with these options decides per sample how many visual tokens it keeps "
                             "(SparseVLM version='v1': rank(A) * scale + bias), so no analytic FLOPs exist; count "
                             "a run's tokens per layer instead (vlprune.flops.measured_tokens_per_layer)")
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


def measured_tokens_per_layer(model: Any) -> list[list[int]]:
    """Visual tokens each decoder layer received, per sample, in the last prefill of a ``model`` patched with an
    in-LLM method (recycled/merged tokens included): the count for methods whose counts are data-dependent
    (SparseVLM ``version="v1"``), where :func:`tokens_per_layer` has no analytic answer."""
    from .api import _state

    pruner = getattr(_state(model), "pruner", None)
    if pruner is None or pruner.current is None or len(pruner.history) != len(pruner.stages):
        raise RuntimeError("measured_tokens_per_layer needs a model patched with an in-LLM method that ran a prompt")
    out = []
    for b, n in enumerate(pruner.current.orig_counts):
        after = {s.layer: int((h[b] >= 0).sum()) for s, h in zip(pruner.stages, pruner.history)}
        row: list[int] = []
        for i in range(len(pruner.layers)):
            row.append(after.get(i, row[-1] if row else n))
        out.append(row)
    return out


def measured_tflops(model: Any, shape: ModelShape) -> list[float] | None:
    """Per sample, eq. 6-7 TFLOPs of the last prefill's measured counts (:func:`measured_tokens_per_layer`) when the
    model's in-LLM stages are adaptive (their counts are data-dependent); None otherwise (use :func:`method_tflops`)."""
    from .api import _state

    pruner = getattr(_state(model), "pruner", None)
    if pruner is None or not any(getattr(s, "adaptive", False) for s in pruner.stages):
        return None
    return [visual_flops([c + shape.fixed_tokens for c in row], shape.hidden, shape.ffn) / 1e12
            for row in measured_tokens_per_layer(model)]
