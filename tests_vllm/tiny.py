"""The tiny LLaVA of ``vlprune.vllm_plugin.checkpoints`` (saved to disk for vLLM), its prompt and images."""
from __future__ import annotations

import numpy as np
from PIL import Image

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
