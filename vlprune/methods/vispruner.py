"""VisPruner (Zhang et al., 2025, "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token
Pruning in VLMs"): important tokens by [CLS] attention, then diverse tokens from the rest by repeated
ToMe-style bipartite removal of near-duplicates (official code: at most 8 removals per round)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..cuda_graph import GraphedCall
from ..ops import descending_order, gather_rows, spatial_sort
from ..registry import register_method
from .base import Selection, SignalSource


@dataclass
class VisPrunerConfig:
    """important_ratio: share of the budget taken by [CLS] attention (official code 0.5; README: 0.75 at 64).
    removals_per_round: near-duplicates removed per bipartite round (official: 8)."""

    important_ratio: float = 0.5
    removals_per_round: int = 8

    def __post_init__(self) -> None:
        if not 0.0 <= self.important_ratio <= 1.0:
            raise ValueError(f"important_ratio must be in [0, 1], got {self.important_ratio}")
        if self.removals_per_round < 1:
            raise ValueError("removals_per_round must be >= 1")


def remove_duplicates(features: torch.Tensor, candidates: torch.Tensor, target: int, per_round: int = 8) -> torch.Tensor:
    """Shrink the ordered list ``candidates`` (B, M) to ``target`` indices by bipartite duplicate removal.

    The official loop (Theia-4869/VisPruner, ``llava_arch.py`` ``encode_images``): each round splits the current
    list alternately into ``a`` (even places) and ``b`` (odd places), scores every ``a`` token by its highest
    cosine similarity to ``b`` and removes the ``r = min(per_round, len - target)`` most redundant ``a`` tokens;
    the next list is the surviving ``a`` tokens, most redundant first (the official ``argsort(descending)[r:]``),
    then ``b`` in its order. The list is never re-sorted, so its starting order matters (VisPruner: descending
    [CLS] attention). Extension where the official code breaks (odd length, or fewer ``a`` tokens than ``r``):
    ``a`` holds ``ceil(len / 2)`` tokens and ``r`` is at most ``len(a)``; this equals the official result
    wherever that runs as written (docs/methods/vispruner.md). Ties go to the lower place in the list.
    Returns (B, target) indices in list order.
    """
    if target <= 0:
        return candidates[:, :0]
    unit = F.normalize(features.float(), dim=-1)
    # all pairwise similarities among the candidates, once (one GEMM instead of one per round); each round
    # then reads its a x b block. ``pos`` holds places in ``candidates``; ``remaining = candidates[pos]``.
    cand_unit = gather_rows(unit, candidates)
    sim_all = cand_unit @ cand_unit.transpose(1, 2)  # (B, M, M)
    pos = torch.arange(candidates.shape[1], device=candidates.device).expand_as(candidates)
    while pos.shape[1] > target:  # target >= 1, so b is never empty here
        a, b = pos[:, 0::2], pos[:, 1::2]
        r = min(per_round, pos.shape[1] - target, a.shape[1])
        rows = torch.gather(sim_all, 1, a.unsqueeze(-1).expand(-1, -1, sim_all.shape[2]))
        sim = torch.gather(rows, 2, b.unsqueeze(1).expand(-1, a.shape[1], -1))
        redundancy = sim.max(dim=-1).values  # (B, |a|)
        # the r most redundant go; gathering the rest (in descending redundancy, as official) instead of
        # boolean-indexing a keeps the loop free of host syncs
        kept_a = torch.gather(a, 1, descending_order(redundancy)[:, r:])
        pos = torch.cat([kept_a, b], dim=1)
    return torch.gather(candidates, 1, pos)


# on a GPU the rounds (about ten small kernels each, hundreds of rounds at LLaVA-NeXT's 2880 patches) are launched
# once, from a CUDA graph per input shape
_remove_duplicates_graphed = GraphedCall(remove_duplicates)


def important_count(keep: int, ratio: float) -> int:
    """``int(T * r)``: the official important-token count (floor, in Python floats)."""
    return int(keep * ratio)


def select(source: SignalSource, keep: int, cfg: VisPrunerConfig) -> Selection:
    feats = source.features()
    n_important = important_count(keep, cfg.important_ratio)
    order = descending_order(source.cls_attention())  # (B, N): [CLS] attention, highest first
    important, rest = order[:, :n_important], order[:, n_important:]
    diverse = _remove_duplicates_graphed(feats, rest, target=keep - n_important, per_round=cfg.removals_per_round)
    kept = spatial_sort(torch.cat([important, diverse], dim=1))
    return Selection(features=gather_rows(feats, kept), indices=kept)


register_method("vispruner", config=VisPrunerConfig, paper="VisPruner (ICCV 2025)", encoder=select)
