"""FlowCut (Tong et al., NeurIPS 2025, "FlowCut: Rethinking Redundancy via Information Flow for Efficient
Vision-Language Models"; official code TungChintao/FlowCut, PyPI ``flowcut`` 1.0.2, ``flowcut/modeling_clip_flowcut.py``
``CLIPAttention_forward`` / ``CLIPEncoderLayer_forward`` / ``CLIPEncoder_forward`` and ``flowcut/utils_flowcut.py``).

FlowCut prunes INSIDE the CLIP tower, progressively, from shallow to deep blocks. With ``T = keep + 1`` rows ([CLS]
kept) and ``s = f - 1`` (f: LLaVA's feature layer as a ``hidden_states`` index; the official ``select_layer =
len(layers) - 2`` for LLaVA-1.5's f = -2), after block i (0-based) the ``r = s - i - 1`` blocks still to prune
with, while the block's output has more than T rows:
1. Information-flow score of every patch j from the block's own attention on its input (Sec. 3, ``compute_score``):
   ``score_j = (a_j / sum a + m_j / sum m) * ||v_j||_1`` with ``a`` the head-mean [CLS] attention, ``m`` the head-mean
   ``softmax_j(v_cls . v_j)`` (values, unscaled) and ``v_j`` the head-mean value of patch j.
2. Cumulative score (``0.5 cum + 0.5 score``, reset to the score at the first block), carried with the kept rows.
3. On even r, prune: ``r = 0`` (block s - 1) cuts straight to T rows; otherwise the adaptive count
   ``round((N - (T - 1)) / sqrt(r) * (1 - (H(a) / log N)^2))`` (``adaptive_prune_ratio``; H the entropy of ``a``
   normalised over the N patches) but never below T rows; the top patches by cumulative score survive, in raster order.
The feature layer's block (s) then runs on the T survivors only, so its features differ from an unpruned tower's
at the same patches. LLaVA-1.5-7B (24 blocks, f = 23): blocks 1, 3, ..., 19 prune adaptively, block 21 cuts to T,
block 22 makes the features; the schedule is the same for every budget (64/128/192: only T changes).
The official batch path takes the LARGEST adaptive count over the batch (``r.max(0)``); vlprune counts per image
(the official batch-1 result for every image: LLaVA's evaluation runs batch 1), so batch == per sample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..attention import split_heads
from ..ops import descending_order
from ..registry import register_method
from .base import Selection, SignalSource


@dataclass
class FlowCutConfig:
    """cumulative_weight: weight of the running score when a block's score is folded in (official 0.5:
    ``cum = 0.5 cum + 0.5 score``)."""

    cumulative_weight: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.cumulative_weight <= 1.0:
            raise ValueError(f"cumulative_weight must be in [0, 1], got {self.cumulative_weight}")


def flow_signals(block: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 1's signals of a CLIP block from its input ``hidden`` (B, 1+N, D), recomputed from its projections:
    head-mean [CLS] attention (B, N), head-mean value-similarity attention ``softmax(v_cls v^T)`` (B, N) and the L1
    norm of the head-mean value (B, N), all over the patch rows (float32)."""
    attn = block.self_attn
    normed = block.layer_norm1(hidden)
    h = attn.num_heads
    q = split_heads(attn.q_proj(normed[:, :1]), h).float()
    k = split_heads(attn.k_proj(normed), h).float()
    v = split_heads(attn.v_proj(normed), h).float()
    cls_attn = torch.softmax(q @ k.transpose(-1, -2) * attn.head_dim**-0.5, dim=-1).mean(1)[:, 0, 1:]
    semantic = torch.softmax(v[:, :, :1] @ v.transpose(-1, -2), dim=-1).mean(1)[:, 0, 1:]
    return cls_attn, semantic, v.mean(1).norm(p=1, dim=-1)[:, 1:]


def flow_score(cls_attn: torch.Tensor, semantic: torch.Tensor, value_l1: torch.Tensor) -> torch.Tensor:
    """Step 1: ``(a / sum a + m / sum m) * ||v||_1`` per patch (B, N)."""
    return (cls_attn / cls_attn.sum(-1, keepdim=True) + semantic / semantic.sum(-1, keepdim=True)) * value_l1


def adaptive_prune_count(cls_attn: torch.Tensor, remaining: int, target_patches: int) -> int:
    """Step 3's adaptive count: ``round((N - target) / sqrt(remaining) * (1 - (H / log N)^2))`` with H the entropy of
    the normalised [CLS] attention (B, N); the largest over the batch (official; vlprune calls it per image)."""
    n = cls_attn.shape[-1]
    prob = cls_attn / cls_attn.sum(-1, keepdim=True)
    ratio = -(prob * prob.log()).sum(-1) / torch.log(torch.tensor(n))
    count = (n - target_patches) / remaining**0.5 * (1 - ratio**2)
    return int(count.max().round())


class FlowCutSchedule:
    """The per-block pruning step (``encoder_pruning.PruneStep``) for one image: T rows in the end, the last
    pruning after block ``select_layer - 1``."""

    def __init__(self, target: int, select_layer: int, cfg: FlowCutConfig) -> None:
        self.target, self.select_layer, self.w = target, select_layer, cfg.cumulative_weight
        self.cumulative: torch.Tensor | None = None

    def __call__(self, i: int, block: nn.Module, hidden: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        rows = out.shape[1]
        if rows <= self.target:
            return None
        remaining = self.select_layer - i - 1
        cls_attn, semantic, value_l1 = flow_signals(block, hidden)
        score = flow_score(cls_attn, semantic, value_l1)
        self.cumulative = score if self.cumulative is None else self.w * self.cumulative + (1 - self.w) * score
        if remaining % 2:
            return None
        pruned = adaptive_prune_count(cls_attn, remaining, self.target - 1) if remaining else rows
        survivors = max(rows - pruned, self.target) - 1
        kept = descending_order(self.cumulative)[:, :survivors].sort(dim=1).values
        self.cumulative = torch.gather(self.cumulative, 1, kept)
        return torch.cat([torch.zeros_like(kept[:, :1]), kept + 1], dim=1)


def tower_rows(keep: int, n_patches: int, blocks: int) -> list[int]:
    """Rows each of the ``blocks`` tower blocks up to the feature layer runs on, AT MOST (for ``vlprune bench``'s
    FLOPs): every patch + [CLS] up to the last cut, ``keep + 1`` in the feature layer's block. The adaptive cuts
    before it depend on the image (its [CLS] attention's entropy), so the true count is at most this."""
    return [n_patches + 1] * (blocks - 1) + [min(keep, n_patches) + 1]


def select(source: SignalSource, keep: int, cfg: FlowCutConfig) -> Selection:
    prune = getattr(source, "prune_in_encoder", None)
    if prune is None:
        raise ValueError("flowcut prunes between the blocks of a CLIP vision tower with a [CLS] token "
                         "(LLaVA-1.5); this source cannot run its tower block by block")
    feats, indices = [], []
    for i in range(source.pixel_values.shape[0]):  # per image: the adaptive counts differ between images
        schedule = FlowCutSchedule(keep + 1, source.f - 1, cfg)
        hidden, origin = prune(schedule, slice(i, i + 1))
        feats.append(hidden[:, 1:])
        indices.append(origin[:, 1:] - 1)
    return Selection(features=torch.cat(feats), indices=torch.cat(indices))


# What the authors' other paths do (TungChintao/FlowCut a2ecd24: flowcut/main.py, llava_arch.py,
# modeling_llama_flowcut.py; FlowCut_Qwen/modeling_qwen2_vl_flowcut.py) and why neither runs here.
FAMILIES_WHY = (
    "FlowCut's LLaVA-1.5 path prunes between the blocks of the CLIP tower and is the only one ported. Its authors' "
    "LLaVA-NeXT path is two-stage: the tower cuts every tile (base image included) to keep // 2 patches, the "
    "sub-tiles' survivors are packed in grid order, unpadded, WITHOUT image_newline tokens (spatial_unpad; "
    "restore_image_features_sorted, 24x24 tiles hard-coded), and after LLM decoder layer 1 the top keep visual "
    "tokens survive by (softmax(q_last k/sqrt(d)) + softmax(v_last v/sqrt(d)), head means) x ||v||_1 from that "
    "layer's q/k/v of the last prompt token, with positions renumbered 0..L'-1 after the cut; vlprune's LLaVA-NeXT "
    "adapter has no in-tower pruning per tile and its packing keeps newline tokens, so an exact port of both "
    "stages is not done yet. Its Qwen2-VL path (FlowCut_Qwen/, batch size 1 only) cuts the ViT to 8 x keep patches "
    "(2 x keep merged tokens) with a mean-query score and then to keep at LLM layer 1 (M-RoPE positions kept); it "
    "is written for Qwen2-VL's full-attention ViT, not Qwen2.5-VL's windowed one, and is not ported either"
)


register_method(
    "flowcut", config=FlowCutConfig, paper="FlowCut (NeurIPS 2025)", encoder=select, families=("llava",),
    families_why=FAMILIES_WHY,
    kept="keep patches that survive the tower's progressive pruning, in raster order (their features come from the "
         "feature layer run on the survivors only)",
)
