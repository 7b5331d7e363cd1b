"""Equal-compute budgets (``vlprune eval --match-flops``): an in-LLM method's keep chosen so that the LLM FLOPs of
its visual tokens (:func:`vlprune.flops.method_tflops`, eqs. 6-7) equal those of an encoder-side method at the
requested keep (every layer sees ``keep`` tokens)."""
from __future__ import annotations

from typing import Any

from .flops import method_tflops
from .presets import ModelShape
from .registry import get_method


def prunes_in_llm(method: str) -> bool:
    """Whether ``method`` drops tokens inside the LLM (FastV, ASAP, VisionDrop's stages, ...)."""
    return get_method(method).plan is not None


def matched_keep(method: str, keep: int, shape: ModelShape, n_tokens: int | None = None,
                 **options: Any) -> tuple[int | None, float, float]:
    """``(keep', its TFLOPs, target TFLOPs)``: the largest keep' whose TFLOPs under ``method`` do not exceed the
    target, an encoder-side method's at ``keep``. keep' is None when even keep' = 1 costs more (e.g. FastV's
    first K layers see every token: on a 2-layer LLM pruning after layer 1 can never be as cheap as 16 tokens
    throughout); the TFLOPs are then the method's floor, the least any keep costs (not always keep 1's: PDrop)."""
    n = n_tokens or shape.visual_tokens
    target = method_tflops("random", keep, shape, n)
    best: int | None = None
    best_t = floor = float("inf")
    for k in range(1, n + 1):  # FLOPs need not grow with keep (PDrop): a scan is cheap arithmetic and proves nothing
        try:
            t = method_tflops(method, k, shape, n, **options)
        except ValueError:  # a budget the method's schedule cannot take (e.g. more tokens than the image has)
            continue
        floor = min(floor, t)
        if t <= target * (1 + 1e-9):
            best, best_t = k, t
    return best, (best_t if best is not None else floor), target
