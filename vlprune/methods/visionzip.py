"""VisionZip (Yang et al., CVPR 2025): dominant tokens by [CLS] attention of the feature layer, contextual
tokens by merging the rest into uniformly strided targets by key similarity (official 64 = 54 + 10)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..ops import gather_rows, mask_from_indices, spatial_sort, topk_indices, true_first
from ..registry import register_method
from .base import Selection, SignalSource


@dataclass
class VisionZipConfig:
    """contextual_ratio: share of the budget spent on contextual (merged) tokens (official 10/64).
    include_cls: the [CLS] feature counts as one dominant token, as in the official code (dominant-1 patches).
    Token order handed to the LLM: [CLS], dominant patches (spatial order), contextual tokens (as official)."""

    contextual_ratio: float = 10 / 64
    include_cls: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.contextual_ratio < 1.0:
            raise ValueError(f"contextual_ratio must be in [0, 1), got {self.contextual_ratio}")


def contextual_merge(
    features: torch.Tensor, keys: torch.Tensor, rest: torch.Tensor, n_contextual: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge the non-dominant tokens ``rest`` (B, M) into ``n_contextual`` uniformly strided targets.

    Every non-target token joins the target with the most similar (cosine) key; a contextual token is
    ``target + mean(assigned)`` as in the official implementation. Returns (tokens (B, C, D),
    target patch indices (B, C), assign (B, M) target slot of each rest token).
    """
    b, m = rest.shape
    step = max(1, m // n_contextual)
    # targets: every step-th rest token (n_contextual of them, since step <= m / n_contextual); integer indices
    # rather than a boolean mask keep this free of host syncs
    positions = torch.arange(m, device=rest.device)
    is_target = (positions % step == 0) & (positions < n_contextual * step)
    order = true_first(is_target)
    targets, others = order[:n_contextual], order[n_contextual:]
    unit = F.normalize(gather_rows(keys.float(), rest), dim=-1)
    sim = unit[:, others] @ unit[:, targets].transpose(1, 2)  # (B, M-C, C)
    choice = sim.argmax(-1)
    one_hot = F.one_hot(choice, n_contextual).float()  # (B, M-C, C)
    rest_feats = gather_rows(features, rest).float()
    summed = one_hot.transpose(1, 2) @ rest_feats[:, others]
    counts = one_hot.sum(1).clamp(min=1).unsqueeze(-1)
    tokens = rest_feats[:, targets] + summed / counts
    assign = torch.empty(b, m, dtype=torch.long, device=rest.device)
    assign.scatter_(1, targets.expand(b, -1), torch.arange(n_contextual, device=rest.device).expand(b, -1))
    assign.scatter_(1, others.expand(b, -1), choice)
    return tokens.to(features.dtype), rest[:, targets], assign


def select(source: SignalSource, keep: int, cfg: VisionZipConfig) -> Selection:
    feats = source.features()
    b, n, _ = feats.shape
    if keep >= n:  # full budget: nothing to prune or merge
        every = torch.arange(n, device=feats.device).expand(b, n)
        return Selection(features=feats, indices=every, assign=every.clone())
    cls = source.cls_feature() if cfg.include_cls else None
    n_ctx = min(int(keep * cfg.contextual_ratio + 0.5), keep - 1)
    n_dom = keep - n_ctx - (1 if cls is not None else 0)
    if n_dom < 1:  # budget too small for [CLS] + contextual: spend it on patches
        cls, n_dom = None, keep - n_ctx
    dominant = spatial_sort(topk_indices(source.cls_attention(), n_dom))
    parts = [gather_rows(feats, dominant)]
    indices = [dominant]
    assign = torch.full((b, n), -1, dtype=torch.long, device=feats.device)
    assign.scatter_(1, dominant, torch.arange(n_dom, device=feats.device).expand(b, n_dom) + (cls is not None))
    if n_ctx > 0:
        rest_mask = ~mask_from_indices(dominant, n)
        rest = true_first(rest_mask)[:, : n - n_dom]  # the non-dominant indices, ascending
        ctx, targets, slot = contextual_merge(feats, source.keys(), rest, n_ctx)
        parts.append(ctx)
        indices.append(targets)
        assign.scatter_(1, rest, slot + n_dom + (cls is not None))
    if cls is not None:
        parts.insert(0, cls.unsqueeze(1))
    return Selection(features=torch.cat(parts, 1), indices=torch.cat(indices, 1), assign=assign)


register_method("visionzip", config=VisionZipConfig, paper="VisionZip (CVPR 2025)", encoder=select)
