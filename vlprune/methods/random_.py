"""Random pruning baseline: K patches drawn uniformly without replacement, seeded and reproducible."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops import gather_rows, spatial_sort
from ..registry import register_method
from .base import Selection, SignalSource


@dataclass
class RandomConfig:
    """seed: the generator seed. Each image draws from (seed, a hash of its pixels), so a result does not
    depend on the image's position in a batch, and the same image always keeps the same patches."""

    seed: int = 0


def random_indices(image_keys: list[int], n: int, keep: int, seed: int) -> torch.Tensor:
    """(len(image_keys), keep) distinct indices in [0, n), spatially sorted; one stream per (seed, image key)."""
    rows = []
    for key in image_keys:
        gen = torch.Generator().manual_seed((seed * 1_000_003 + key) % (2**63))
        rows.append(torch.randperm(n, generator=gen)[:keep])
    return spatial_sort(torch.stack(rows))


def select(source: SignalSource, keep: int, cfg: RandomConfig) -> Selection:
    feats = source.features()
    kept = random_indices(source.image_keys(), feats.shape[1], keep, cfg.seed).to(feats.device)
    return Selection(features=gather_rows(feats, kept), indices=kept)


register_method("random", config=RandomConfig, paper="baseline", encoder=select)
