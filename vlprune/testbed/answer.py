"""Answer scoring and the patch mask used by the object-recall diagnostic."""

from __future__ import annotations

import math
import string
from collections.abc import Sequence

import torch

__all__ = ["boxes_to_patch_mask", "is_correct", "normalize_answer"]

_STRIP = string.punctuation + "\u2019\u201c\u201d"


def normalize_answer(text: str) -> str:
    """Lower-case first word of ``text`` with surrounding punctuation removed."""
    for word in text.lower().split():
        word = word.strip(_STRIP)
        if word:
            return word
    return ""


def is_correct(prediction: str, answer: str) -> bool:
    """Exact match of the normalised first words."""
    return normalize_answer(prediction) == normalize_answer(answer) != ""


def boxes_to_patch_mask(boxes: Sequence[Sequence[int]], image_size: int | tuple[int, int], grid: int,
                        min_fraction: float = 0.0) -> torch.Tensor:
    """Which of the ``grid x grid`` patches (raster order) the boxes touch.

    Boxes are ``(x0, y0, x1, y1)`` pixel boxes with exclusive ends, in an image of
    ``image_size`` pixels (an int for square images or ``(width, height)``); the
    image is cut into ``grid`` equal cells per side, as the vision tower does.
    A patch counts when the area of its intersection with one box is more than
    ``min_fraction`` of the patch area (default 0: any overlap counts).
    Returns a ``BoolTensor`` of shape ``[grid * grid]``.
    """
    w, h = (image_size, image_size) if isinstance(image_size, int) else image_size
    mask = torch.zeros(grid, grid, dtype=torch.bool)
    cw, ch = w / grid, h / grid
    for x0, y0, x1, y1 in boxes:
        if x1 <= x0 or y1 <= y0:
            continue
        c0, c1 = max(0, math.floor(x0 / cw)), min(grid, math.ceil(x1 / cw))
        r0, r1 = max(0, math.floor(y0 / ch)), min(grid, math.ceil(y1 / ch))
        for r in range(r0, r1):
            oy = min(y1, (r + 1) * ch) - max(y0, r * ch)
            for c in range(c0, c1):
                ox = min(x1, (c + 1) * cw) - max(x0, c * cw)
                if ox > 0 and oy > 0 and ox * oy > min_fraction * cw * ch:
                    mask[r, c] = True
    return mask.flatten()
