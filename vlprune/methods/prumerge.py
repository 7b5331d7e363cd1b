"""LLaVA-PruMerge and PruMerge+ (Shang et al., ICCV 2025, "LLaVA-PruMerge: Adaptive Token Reduction for Efficient
Large Multimodal Models"; official code 42Shawn/LLaVA-PruMerge, ``llava/model/multimodal_encoder/clip_encoder.py``
``token_prune_merge_advanced`` / ``token_prune_merge_advanced_plus``).

Sec. 3.2: the patches whose [CLS] attention is an upper IQR outlier (``a > Q3 + 1.5 IQR``) are kept (adaptive
count); each kept token is updated with its 32 most key-similar tokens weighted by their [CLS] attention
(``y_i = x_i + sum_{j in kNN(i)} a_j x_j``, the official ``updated_center``), and one extra token
``sum_{j not kept} a_j x_j`` stands for every pruned patch. PruMerge+ adds spatially uniform samples to the kept
set before merging. vlprune runs both at a fixed budget ``keep`` (docs/methods/prumerge.md): ``keep - 1`` kept
patches plus the extra token; ``adaptive_kept`` gives the official adaptive choice (tested, not registered).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..ops import descending_order, gather_rows, mask_from_indices, spatial_sort, true_first
from ..registry import register_method
from .base import Selection, SignalSource

ORDERS = ("raster", "attention")


@dataclass
class PruMergeConfig:
    """cluster_size: key-nearest tokens merged into each kept token (official: 32).
    order: kept tokens in raster order ("raster", default: LLaVA-NeXT lays tokens out by grid row) or, as the
    official code hands them to LLaVA-1.5, by descending [CLS] attention ("attention"). The extra token comes first
    (it stands for no patch; the official code appends it last)."""

    cluster_size: int = 32
    order: str = "raster"

    def __post_init__(self) -> None:
        if self.cluster_size < 1:
            raise ValueError(f"cluster_size must be >= 1, got {self.cluster_size}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")


@dataclass
class PruMergePlusConfig(PruMergeConfig):
    """uniform_share: share of the ``keep - 1`` kept patches that are spatially uniform samples. The official
    adaptive code samples every ``int(int(N / n_outliers) / 3)``-th patch, about three samples per outlier: 0.75."""

    uniform_share: float = 0.75

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.uniform_share <= 1.0:
            raise ValueError(f"uniform_share must be in [0, 1], got {self.uniform_share}")


def outlier_count(cls_attention: torch.Tensor, factor: float = 1.5) -> list[int]:
    """Patches per row of (B, N) whose [CLS] attention exceeds the upper IQR fence ``Q3 + factor * IQR`` (the
    official ``outlier_dectection``, per image; the official code pools the quartiles over the batch, equal at B=1).
    Quartiles interpolate linearly, as ``np.percentile``, in float64."""
    a = cls_attention.double()
    q1, q3 = torch.quantile(a, 0.25, dim=-1, keepdim=True), torch.quantile(a, 0.75, dim=-1, keepdim=True)
    return (a.float() > q3 + factor * (q3 - q1)).sum(-1).tolist()


def adaptive_kept(cls_attention: torch.Tensor, plus: bool = False) -> list[torch.Tensor]:
    """The official adaptive kept patches of each image (Sec. 3.2), a list of (L_b,) index tensors: the
    ``int(N * r)`` patches of highest [CLS] attention (r = outlier share, descending order), and for PruMerge+
    then every ``s``-th patch of ``0 .. N-2`` not already kept, ``s = int(int(1 / r) / 3)`` (ascending; the official
    code strides ``range(0, 575, s)`` for N = 576). Extension where the official code stops (no outlier, or
    ``s = 0``): no kept patch, resp. ``s = 1``. Variable length, so not what ``select`` runs (see the docs)."""
    n = cls_attention.shape[-1]
    out = []
    for row, count in zip(descending_order(cls_attention), outlier_count(cls_attention)):
        ratio = count / n
        top = row[: int(n * ratio)]
        if plus and count:
            grid = torch.arange(0, n - 1, max(1, int(int(1 / ratio) / 3)), device=row.device)
            top = torch.cat([top, grid[~torch.isin(grid, top)]])
        out.append(top)
    return out


def uniform_samples(kept: torch.Tensor, n: int, count: int) -> torch.Tensor:
    """``count`` patches spread uniformly in raster order over the patches not in ``kept`` (B, L): the one at place
    ``floor(j * M / count)`` of the M remaining ones, j = 0..count-1 (PruMerge+'s spatial supplement at a fixed
    count; the official code strides the whole raster and drops the already kept). Returns (B, count)."""
    rest = true_first(~mask_from_indices(kept, n))[:, : n - kept.shape[1]]  # ascending
    places = torch.arange(count, device=kept.device) * rest.shape[1] // max(count, 1)
    return rest[:, places]


def cluster_merge(
    features: torch.Tensor, keys: torch.Tensor, attention: torch.Tensor, kept: torch.Tensor, cluster_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """PruMerge's merge: every kept token i becomes ``x_i + sum_j a_j x_j`` over the ``cluster_size`` patches
    j != i of highest key cosine similarity to i (kept or not; weights are the raw [CLS] attention, not
    normalised, as official); the extra token is ``sum_{j not kept} a_j x_j``.
    features (B, N, D), keys (B, N, Dk), attention (B, N), kept (B, L). Returns (tokens (B, L, D), extra (B, D))."""
    b, n, _ = features.shape
    feats, a = features.float(), attention.float()
    unit = F.normalize(keys.float(), dim=-1)
    sim = gather_rows(unit, kept) @ unit.transpose(1, 2)  # (B, L, N)
    sim.scatter_(2, kept.unsqueeze(-1), float("-inf"))  # not itself
    k = min(cluster_size, n - 1)
    near = descending_order(sim.reshape(-1, n))[:, :k].reshape(b, -1, k)  # (B, L, k)
    weights = torch.zeros_like(sim).scatter_(2, near, torch.gather(a.unsqueeze(1).expand_as(sim), 2, near))
    tokens = gather_rows(feats, kept) + weights @ feats
    dropped = (~mask_from_indices(kept, n)).float() * a
    extra = (dropped.unsqueeze(1) @ feats).squeeze(1)
    return tokens.to(features.dtype), extra.to(features.dtype)


def signals(source: SignalSource) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] attention (B, N) and keys (B, N, Dk) PruMerge reads: as official, one softmax over the full width of
    the tower's last block and its full-width keys, where the source has them (CLIP towers: LLaVA-1.5, LLaVA-NeXT);
    else the last block's head-mean [CLS] attention and the source's keys (Qwen2.5-VL, no [CLS])."""
    full_width = getattr(source, "last_block_full_width", None)
    if full_width is not None:
        return full_width()
    return source.last_cls_attention(), source.keys()


def _merged_selection(source: SignalSource, attention: torch.Tensor, kept: torch.Tensor,
                      cfg: PruMergeConfig) -> Selection:
    """Selection of ``[extra, merged kept tokens]`` for the kept patches (B, L), in ``cfg.order``."""
    feats = source.features()
    b, n, _ = feats.shape
    if cfg.order == "raster":
        kept = spatial_sort(kept)
    tokens, extra = cluster_merge(feats, signals(source)[1], attention, kept, cfg.cluster_size)
    slots = kept.shape[1]
    assign = torch.zeros(b, n, dtype=torch.long, device=feats.device)  # every pruned patch: the extra token
    assign.scatter_(1, kept, torch.arange(1, slots + 1, device=feats.device).expand(b, slots))
    return Selection(features=torch.cat([extra.unsqueeze(1), tokens], 1), indices=kept, assign=assign)


def _full(source: SignalSource) -> Selection:
    feats = source.features()
    b, n, _ = feats.shape
    every = torch.arange(n, device=feats.device).expand(b, n)
    return Selection(features=feats, indices=every, assign=every.clone())


def select(source: SignalSource, keep: int, cfg: PruMergeConfig) -> Selection:
    """PruMerge at a fixed budget: the ``keep - 1`` patches of highest [CLS] attention + the extra token."""
    n = source.features().shape[1]
    if keep >= n:  # full budget: nothing to prune or merge
        return _full(source)
    attention = signals(source)[0]
    kept = descending_order(attention)[:, : keep - 1]
    return _merged_selection(source, attention, kept, cfg)


def select_plus(source: SignalSource, keep: int, cfg: PruMergePlusConfig) -> Selection:
    """PruMerge+ at a fixed budget: ``keep - 1 - u`` top-[CLS]-attention patches, then ``u = round(uniform_share *
    (keep - 1))`` uniform samples of the rest (:func:`uniform_samples`), merged as PruMerge, + the extra token."""
    n = source.features().shape[1]
    if keep >= n:
        return _full(source)
    u = int((keep - 1) * cfg.uniform_share + 0.5)
    attention = signals(source)[0]
    top = descending_order(attention)[:, : keep - 1 - u]
    kept = torch.cat([top, uniform_samples(top, n, u)], 1)
    return _merged_selection(source, attention, kept, cfg)


_KEPT = ("keep-1 entries: the patches kept ({}), each merged with its 32 key-nearest tokens; the extra token "
         "(first, no index) sums every pruned patch (assign 0)")
register_method("prumerge", config=PruMergeConfig, paper="LLaVA-PruMerge (ICCV 2025)", encoder=select,
                kept=_KEPT.format("top [CLS] attention"))
register_method("prumerge+", config=PruMergePlusConfig, paper="LLaVA-PruMerge+ (ICCV 2025)", encoder=select_plus,
                kept=_KEPT.format("top [CLS] attention + spatially uniform samples"))
