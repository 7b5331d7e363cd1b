"""Shrinking a prompt to the visual tokens that survive encoder-side pruning."""
from __future__ import annotations

import torch

from .ops import true_first, visual_mask

# per-token inputs that must follow input_ids, and what fills their padding
PER_TOKEN_INPUTS = {"attention_mask": 0, "labels": -100, "token_type_ids": 0, "mm_token_type_ids": 0}


def shrink_prompt(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    image_token_id: int | tuple[int, ...],
    tokens_per_image: list[int],
    kept_per_image: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the first ``kept_per_image[i]`` of the ``tokens_per_image[i]`` placeholders of image i.

    Images are taken in prompt order (row by row); ``image_token_id`` may name several placeholder ids (images and
    videos), whose runs are then the items in prompt order. Returns ``(columns, valid)``: for each sample, the
    original columns that survive, re-padded on the left (on the right only if the input is right-padded), and
    a bool mask of the real (non-padding) entries. Placeholder tokens are identical, so which ones survive
    does not matter; the features carry the choice.
    """
    b, n = input_ids.shape
    positions = torch.nonzero(visual_mask(input_ids, image_token_id))  # row-major: (row, col)
    if positions.shape[0] != sum(tokens_per_image):
        raise ValueError(
            f"input_ids hold {positions.shape[0]} image tokens but the images need {sum(tokens_per_image)}"
        )
    keep = torch.ones(b, n, dtype=torch.bool, device=input_ids.device)
    start = 0
    for total, kept in zip(tokens_per_image, kept_per_image):
        drop = positions[start + kept : start + total]
        keep[drop[:, 0], drop[:, 1]] = False
        start += total
    if attention_mask is not None:
        keep_real = keep & attention_mask.bool()
    else:
        keep_real = keep
    lengths = keep_real.sum(-1)
    width = int(lengths.max())
    # left unless the input is right-padded: an unpadded batch whose rows now differ in length is padded on the left,
    # so that every row still ends with its last token (generate() and logits[:, -1] read that column)
    left = not (attention_mask is not None and bool((attention_mask[:, -1] == 0).any()))
    order = true_first(keep_real)[:, :width]  # surviving columns of each row first, in their original order
    slot = torch.arange(width, device=input_ids.device).expand(b, width)
    if left:  # row r's survivors fill the last lengths[r] slots
        slot = slot - (width - lengths)[:, None]
    valid = (slot >= 0) & (slot < lengths[:, None])
    cols = torch.gather(order, 1, slot.clamp(0, max(width - 1, 0))).masked_fill(~valid, 0)
    return cols, valid


def apply_columns(x: torch.Tensor, cols: torch.Tensor, valid: torch.Tensor, fill: int) -> torch.Tensor:
    """Gather a (B, L) per-token tensor to the surviving columns, padding with ``fill``."""
    out = torch.gather(x, 1, cols)
    return out.masked_fill(~valid, fill)
