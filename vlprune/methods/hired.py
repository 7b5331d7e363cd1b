"""HiRED (Arif et al., AAAI 2025, "HiRED: Attention-Guided Token Dropping for Efficient Inference of
High-Resolution Vision-Language Models"; official code hasanar1f/HiRED, ``modeling_llava_next.py``
``HiRED_token_selection`` / ``HiRED_sub_img_budgets``).

For one LLaVA-NeXT image of T tiles (the global image, then T-1 sub-images) and a budget of ``keep`` tokens
(Sec. 3): the global image gets ``min(int(alpha keep), S)`` tokens; the rest is split over the sub-images in
proportion to how many of the global image's ``int(S (1 - alpha))`` highest layer-0 [CLS] attention patches fall in
each one's share of the global image (the official code takes the i-th of T-1 equal raster chunks of the global
image's S patches), floored; every tile then keeps its top patches by the feature layer's [CLS] attention.
The design needs the global image and its sub-images, so it runs on LLaVA-NeXT only (``budget="global"``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops import descending_order
from ..registry import register_method
from .base import Selection, SignalSource


@dataclass
class HiREDConfig:
    """alpha: share of the budget for the global image, and 1 - alpha the share of its patches that vote for the
    sub-images (official default 0.5, the value of the paper's and repository's runs).
    early_layer: the ViT block whose [CLS] attention splits the budget (official: 0)."""

    alpha: float = 0.5
    early_layer: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.early_layer < 0:
            raise ValueError(f"early_layer must be >= 0, got {self.early_layer}")


def split_budget(early: torch.Tensor, n_sub: int, keep: int, alpha: float) -> tuple[int, list[int]]:
    """The official split of ``keep`` tokens: (global image's share, one share per sub-image).

    ``early`` (S,): the global image's [CLS] attention of the early layer. Its ``int(S (1 - alpha))`` top patches
    are counted in T-1 equal raster chunks; sub-image i gets ``int(count_i / sum(count) * budget)``, at most S
    (float32, as official; the shares may add up to less than the budget)."""
    s = early.shape[-1]
    full = min(int(keep * alpha), s)
    sub_total = min(keep - full, n_sub * s)
    if sub_total <= 0 or n_sub == 0:
        return full, [0] * n_sub
    if s % n_sub:
        raise ValueError(f"HiRED splits the global image's {s} patches into {n_sub} equal chunks: {s} % {n_sub} != 0")
    votes = torch.zeros(s, dtype=torch.bool, device=early.device)
    votes[descending_order(early[None])[0, : int(s * (1 - alpha))]] = True
    counts = votes.view(n_sub, -1).sum(-1)
    if int(counts.sum()) == 0:  # alpha = 1: no vote (the official code divides by zero)
        return full, [0] * n_sub
    return full, ((counts / counts.sum()) * sub_total).int().clamp(max=s).tolist()


def select_tiles(early: torch.Tensor, late: torch.Tensor, keep: int, alpha: float) -> torch.Tensor:
    """HiRED's kept mask (T, S) for one image: ``early`` (S,) the global image's early-layer [CLS] attention,
    ``late`` (T, S) every tile's feature-layer [CLS] attention (tile 0 = the global image); per tile its budget's
    top patches (ties to the lower index)."""
    full, subs = split_budget(early, late.shape[0] - 1, keep, alpha)
    order = descending_order(late)
    mask = torch.zeros_like(late, dtype=torch.bool)
    for t, budget in enumerate([full, *subs]):
        mask[t, order[t, :budget]] = True
    return mask


def select(source: SignalSource, keep: int, cfg: HiREDConfig) -> Selection:
    tiles = getattr(source, "image_tiles", None)
    if tiles is None:
        raise ValueError(
            "hired splits the budget across LLaVA-NeXT's global image and its sub-images: it needs a model with "
            "tiles (LlavaNextForConditionalGeneration with budget='global'); this source has none"
        )
    tile, patch, late, early = tiles(cfg.early_layer)  # members' (tile, patch); (T, S) attention maps
    feats = source.features()
    if keep >= feats.shape[1]:
        every = torch.arange(feats.shape[1], device=feats.device)[None]
        return Selection(features=feats, indices=every)
    mask = select_tiles(early[0], late, keep, cfg.alpha)
    kept = torch.nonzero(mask[tile, patch])[:, 0][None]  # the members kept (patches cut by unpadding are not)
    return Selection(features=feats[:, kept[0]], indices=kept)


register_method("hired", config=HiREDConfig, paper="HiRED (AAAI 2025)", encoder=select, families=("llava_next",),
                families_why="HiRED splits one image's budget across its global image and sub-images (tiles)",
                kept="at most keep patches of one LLaVA-NeXT image (the official shares are floored; patches cut by "
                     "unpadding are dropped), global image first, in patch-space order")
