"""HoloV (Zou et al., NeurIPS 2025, "Don't Just Chase 'Highlighted Tokens' in MLLMs: Revisiting Visual Holistic
Context Retention"; official code obananas/HoloV, ``llava/model/utils.py`` ``HoloV``, called from
``llava/model/llava_arch.py`` with ``num_patches=16``).

For one LLaVA-1.5 image of N projected patch tokens and the feature layer's head-mean [CLS] attention ``a``:
1. Holistic partition: the N tokens, in raster order, are cut into C = 16 contiguous crops (the official code
   splits the flattened sequence: ``N // C`` tokens each, the first ``N % C`` crops one more).
2. Crop score: for a crop of n > 1 tokens with cosine similarities ``S`` (diagonal zeroed), every token's
   similarity variance ``var_i = sum_j (S_ij - mean_i)^2 / (n - 1)`` (``mean_i = sum_j S_ij / (n - 1)``), rescaled to
   the attention's magnitude, gives ``s_i = 1e3 a_i + alpha var_i * mean|1e3 a| / (mean|var| + eps)``; the crop
   scores ``mean_i s_i`` (a crop of one token scores its raw attention).
3. Budget allocation: crop c gets ``floor(w_c K)`` tokens, ``w_c = score_c / (sum score + eps)``; the tokens left
   over go one each to the crops of largest weight.
4. Inside each crop its top tokens by attention (descending); a crop whose share reaches its size keeps all its
   tokens (raster order) and the surplus is NOT passed on: the official code pads the image with zero tokens up to
   K (``overflow="pad"``, the default here, equal to the authors' code) -- or spends it elsewhere with
   ``overflow="refill"`` (vlprune's extension: the best remaining tokens by attention).
Token order handed to the LLM: crop by crop, inside a crop by descending attention (official), or ``order="raster"``.
HoloV scores and keeps the tokens AFTER the projector (the official code prunes ``mm_projector`` outputs).

LLaVA-NeXT (``budget="global"``): as the official ``llava_arch.py`` (lines 169-239), the sequence is the base tile's
patches, then the unpadded grid of the sub-image tiles row by row, with no ``image_newline`` (the official code
comments them out); the crops cut that sequence. The adapter lays the kept patches out in patch-space (raster)
order, with its ``newlines`` option ("none" is the official layout), and the zero tokens after them.

Qwen2.5-VL (the authors' ``qwen-model-HoloV/``): the N merger tokens of one image in raster order, scored by the
mean attention each patch receives in the ViT's LAST block (head mean, query mean), per 2x2 unit; their tower keeps
those scores in the ViT's window order while the tokens are put back in raster order, so token j is scored by the
j-th unit in window order (``attention_order="window"``, official; ``"raster"`` pairs every token with its own
score); ``C = max(1, int(1024 / 576 * N / keep))`` crops instead of 16 (``crops_for``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops import descending_order, gather_rows
from ..registry import register_method
from .base import Selection, SignalSource

ATTENTION_SCALE = 1e3  # the official ``patch_attn * 1e3``
PROJECTS_EVERY_PATCH = True  # for vlprune bench's FLOPs: the projector runs on all N patches before the selection


@dataclass
class HoloVConfig:
    """crops: contiguous crops of the raster sequence; None: the authors' count for the family (16 on LLaVA-1.5 and
    LLaVA-NeXT, ``max(1, int(1024 / 576 * N / keep))`` on Qwen2.5-VL).
    alpha: weight of the similarity variance in a token's score (official 0.09). eps: official 1e-6.
    overflow: "pad" (official: a crop's unused share is lost and the image is padded with zero tokens up to keep) or
    "refill" (the lost share goes to the best remaining tokens by attention; no zero tokens).
    order: "official" (crop by crop, descending attention inside a crop) or "raster".
    attention_order (Qwen2.5-VL only): "window" (official: token j of the raster sequence is scored with the j-th
    2x2 unit in the ViT's window order, as the authors' tower returns the scores) or "raster" (its own score)."""

    crops: int | None = None
    alpha: float = 0.09
    eps: float = 1e-6
    overflow: str = "pad"
    order: str = "official"
    attention_order: str = "window"

    def __post_init__(self) -> None:
        if self.crops is not None and self.crops < 1:
            raise ValueError(f"crops must be >= 1, got {self.crops}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.overflow not in ("pad", "refill"):
            raise ValueError(f"overflow must be 'pad' (official) or 'refill', got {self.overflow!r}")
        if self.order not in ("official", "raster"):
            raise ValueError(f"order must be 'official' or 'raster', got {self.order!r}")
        if self.attention_order not in ("window", "raster"):
            raise ValueError(f"attention_order must be 'window' (official) or 'raster', got {self.attention_order!r}")


def crops_for(n: int, keep: int, family: str | None) -> int:
    """The authors' crop count: 16 on LLaVA (``llava_arch.py`` line 239), ``max(1, int(1024 / 576 * n / keep))`` on
    Qwen2.5-VL (``qwen-model-HoloV/modeling_qwen2_5_vl.py`` line 1916; 16 at n = 576, keep = 64)."""
    if family == "qwen2_5_vl":
        return max(1, int(((1024 / 576) * n) / keep))
    return 16


def crop_bounds(n: int, crops: int) -> list[tuple[int, int]]:
    """(start, end) of each non-empty crop of a raster sequence of n tokens: ``n // crops`` tokens each, the first
    ``n % crops`` one more (step 1)."""
    size, extra = divmod(n, crops)
    bounds, start = [], 0
    for c in range(crops):
        end = start + size + (1 if c < extra else 0)
        if end > start:
            bounds.append((start, end))
        start = end
    return bounds


def crop_score(tokens: torch.Tensor, attention: torch.Tensor, alpha: float, eps: float) -> torch.Tensor:
    """Holistic score of one crop (step 2): tokens (n, D), attention (n,) -> scalar."""
    n = tokens.shape[0]
    if n <= 1:
        return attention.mean()
    unit = tokens / (tokens.norm(dim=1, keepdim=True) + eps)
    sim = (unit @ unit.T) * (1 - torch.eye(n, device=tokens.device, dtype=unit.dtype))
    mean = sim.sum(1) / (n - 1)
    var = ((sim - mean[:, None]) ** 2).sum(1) / (n - 1)
    scaled = attention * ATTENTION_SCALE
    var = var * (scaled.abs().mean() / (var.abs().mean() + eps))
    return (scaled + alpha * var).mean()


def allocate(scores: torch.Tensor, keep: int, eps: float) -> list[int]:
    """Tokens per crop (step 3): ``floor(w keep)`` with ``w = score / (sum + eps)``, the remainder one each to the crops
    of largest weight (ties to the lower crop)."""
    weights = scores / (scores.sum() + eps)
    shares = (weights * keep).floor().long()
    left = keep - int(shares.sum())
    if left > 0:
        shares[descending_order(weights[None])[0, :left]] += 1
    return shares.tolist()


def select_image(tokens: torch.Tensor, attention: torch.Tensor, keep: int, cfg: HoloVConfig,
                 crops: int | None = None) -> torch.Tensor:
    """Kept patch indices of one image (N, D) / (N,), in the order handed to the LLM (at most ``keep``; fewer where
    a crop's share exceeded its size and ``overflow="pad"``); ``crops`` (else ``cfg.crops``, else 16) crops."""
    tokens, attention = tokens.float(), attention.float()
    bounds = crop_bounds(tokens.shape[0], crops or cfg.crops or 16)
    scores = torch.stack([crop_score(tokens[s:e], attention[s:e], cfg.alpha, cfg.eps) for s, e in bounds])
    kept = []
    for (s, e), share in zip(bounds, allocate(scores, keep, cfg.eps)):
        if share >= e - s:
            kept.append(torch.arange(s, e, device=tokens.device))
        elif share > 0:
            kept.append(s + descending_order(attention[None, s:e])[0, :share])
    index = torch.cat(kept) if kept else attention.new_zeros(0, dtype=torch.long)
    if cfg.overflow == "refill" and index.numel() < keep:
        rest = torch.ones_like(attention, dtype=torch.bool)
        rest[index] = False
        extra = torch.nonzero(rest)[:, 0]
        index = torch.cat([index, extra[descending_order(attention[None, extra])[0, : keep - index.numel()]]])
    return index


def select(source: SignalSource, keep: int, cfg: HoloVConfig) -> Selection:
    feats = source.projected_features()
    attention = source.cls_attention()
    b, n, d = feats.shape
    if keep >= n:  # full budget: every crop keeps all its tokens, in raster order
        every = torch.arange(n, device=feats.device).expand(b, n)
        return Selection(features=feats, indices=every, projected=True)
    family = getattr(source, "family", None)
    if family == "qwen2_5_vl" and cfg.attention_order == "window":  # the authors' tower: scores in window order
        attention = attention[:, source.window_order().to(attention.device)]
    crops = cfg.crops or crops_for(n, keep, family)
    rows, indices = [], []
    for i in range(b):
        index = select_image(feats[i], attention[i], keep, cfg, crops)
        if cfg.order == "raster":
            index = index.sort().values
        pad = feats.new_zeros(keep - index.numel(), d)  # the official zero tokens (overflow="pad")
        rows.append(torch.cat([gather_rows(feats[i : i + 1], index[None])[0], pad]))
        indices.append(index)
    same = all(ix.numel() == indices[0].numel() for ix in indices)
    return Selection(features=torch.stack(rows), indices=torch.stack(indices) if same else indices, projected=True,
                     extras={"unindexed_last": True})  # the zero tokens follow the indexed rows


register_method(
    "holov", config=HoloVConfig, paper="HoloV (NeurIPS 2025)", encoder=select,
    families=("llava", "llava_next", "qwen2_5_vl"),
    families_why="the authors' HoloV paths are LLaVA-1.5, LLaVA-NeXT (base + unpadded tiles, one sequence per "
                 "image) and Qwen2.5-VL (merger tokens of one image), each image one budget; none for Video-LLaVA",
    kept="keep tokens: kept patches crop by crop (descending attention inside a crop, or raster); with "
         "overflow='pad' a crop's surplus share becomes zero tokens at the end, which have no index",
)
