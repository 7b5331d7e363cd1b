"""The tiny LLaVA of ``vlprune.vllm_plugin.checkpoints`` (saved to disk for vLLM), its prompt and images."""
from __future__ import annotations

import numpy as np
from PIL import Image

import vlprune

from vlprune.vllm_plugin.checkpoints import (  # noqa: F401  (re-exported for the tests)
    TINY_GRID as GRID,
    TINY_PATCH as PATCH,
    build_tiny_llava,
    save_tiny_clip,
    save_tiny_llava,
)

PROMPT = "user : <image> what color is the circle ? assistant :"
QUESTION = "what color is the circle ?"


def images(n: int, seed: int = 0) -> list[Image.Image]:
    """``n`` random RGB images of the tower's size."""
    rng = np.random.default_rng(seed)
    side = GRID * PATCH
    return [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(n)]


def generate(model, processor, text: str, image, method: str | None, keep: int | None, max_new: int, **apply_kw):
    """transformers' greedy ``max_new`` tokens (pruned with ``vlprune.apply`` unless ``method`` is None) and the
    kept patches (None unpruned)."""
    inputs = processor(text=text, images=image, return_tensors="pt")
    if method is not None:
        vlprune.apply(model, method, keep, processor=processor, **apply_kw)
    try:
        out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False)
        kept = vlprune.last_selection(model).indices[0] if method is not None else None
    finally:
        if method is not None:
            vlprune.remove(model)
    return out[0, -max_new:].tolist(), kept
