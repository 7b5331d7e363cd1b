"""Renumbered positions inside the LLM (the official VisionDrop convention), as pure tensor helpers.

vlprune's in-LLM stages keep every surviving token's original position (RoPE ids gathered, never renumbered).
A stage may instead renumber: after it drops tokens, the survivors take positions 0..L'-1 in a given order
(VisionDrop's official code: text, dominant visual tokens, contextual tokens, text). The pruner then needs
(1) the rotary tables at the new positions, (2) a mask that is causal in position order when that order is not
the order of the sequence, and (3) during decoding, the new token's tables shifted back by the number of prompt
tokens dropped before that layer.
"""
from __future__ import annotations

import torch


def renumbered(image_pos: torch.Tensor, order: torch.Tensor, length: int) -> torch.Tensor:
    """Positions (B, L) after a renumbering drop: 0..L-1 in sequence order, except that the kept visual tokens
    (``image_pos`` (B, k), one contiguous run per sample) take their run's positions in ``order`` (B, k), the
    rank of each (slot order) in the new ordering."""
    b = image_pos.shape[0]
    pos = torch.arange(length, device=image_pos.device).expand(b, length).clone()
    return pos.scatter_(1, image_pos, image_pos[:, :1] + order)


def position_causal_mask(mask: torch.Tensor | None, pos: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A 4-D mask (B, 1, L, L) that lets query i see key j only if ``pos[j] <= pos[i]``, combined with ``mask``
    (the layer's own 4-D mask over the same tokens: bool, additive, or None for plain causal; None gives an
    additive mask of ``dtype``, which eager and SDPA attention both read)."""
    allowed = (pos.unsqueeze(1) <= pos.unsqueeze(2)).unsqueeze(1)  # (B, 1, L, L)
    if mask is None:
        return torch.zeros(allowed.shape, dtype=dtype, device=pos.device).masked_fill(~allowed, torch.finfo(dtype).min)
    if mask.dtype == torch.bool:
        return mask & allowed
    return mask.masked_fill(~allowed, torch.finfo(mask.dtype).min)


def shift_rope(cos: torch.Tensor, sin: torch.Tensor, cos_s: torch.Tensor, sin_s: torch.Tensor,
               scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables at position ``p - s`` from those at ``p`` and ``s`` (angle subtraction, element by element):
    tables of the form ``a * cos(p * theta)`` with ``scale = a`` (the table at position 0)."""
    return (cos * cos_s + sin * sin_s) / scale, (sin * cos_s - cos * sin_s) / scale
