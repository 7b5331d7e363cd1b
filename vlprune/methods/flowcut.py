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

LLaVA-NeXT (the authors' ``flowcut/main.py`` anyres path, ``llava_arch.py``, ``modeling_llama_flowcut.py``): every tile
goes through the schedule above with ``T = keep // 2 + 1`` (:func:`select_tiles`), the survivors are packed without
``image_newline`` tokens, and after LLM layer 1 the top ``keep`` visual tokens go on (:func:`llm_scores`,
:func:`plan_next`), positions renumbered 0..L'-1 (docs/methods/flowcut.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..attention import decoder_qk, repeat_kv, split_heads
from ..llm_stage import LLMStage, StageInputs
from ..ops import descending_order
from ..registry import register_method
from .base import Selection, SignalSource


@dataclass
class FlowCutConfig:
    """cumulative_weight: weight of the running score when a block's score is folded in (official 0.5:
    ``cum = 0.5 cum + 0.5 score``).
    LLaVA-NeXT only (its LLM stage): llm_layer, the decoder layer whose q/k/v score the visual tokens and after
    which the top ``keep`` go on (official ``prune_layer = 1``); positions, "official" (the survivors are renumbered
    0..L'-1 after the cut, as the authors' code) or "original" (they keep their prompt positions: vlprune's
    convention for the other in-LLM methods)."""

    cumulative_weight: float = 0.5
    llm_layer: int = 1
    positions: str = "official"

    def __post_init__(self) -> None:
        if not 0.0 <= self.cumulative_weight <= 1.0:
            raise ValueError(f"cumulative_weight must be in [0, 1], got {self.cumulative_weight}")
        if self.llm_layer < 0:
            raise ValueError(f"llm_layer must be >= 0 (the official 1), got {self.llm_layer}")
        if self.positions not in ("official", "original"):
            raise ValueError(f"positions must be 'official' or 'original', got {self.positions!r}")


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
    if hasattr(source, "prune_tiles_in_encoder"):  # one LLaVA-NeXT image (base + grid tiles)
        return select_tiles(source, keep, cfg)
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


def select_tiles(source: SignalSource, keep: int, cfg: FlowCutConfig) -> Selection:
    """The authors' LLaVA-NeXT tower stage for one image (``flowcut/main.py``: ``target_tokens = int(keep / 2) + 1``
    for ``image_aspect_ratio='anyres'``): every tile, the base image included, goes through the LLaVA-1.5 schedule
    to ``keep // 2`` patches; the tiles run as one batch, so each adaptive count is the largest over the image's tiles
    (the official batch of one image). The survivors are read in the authors' packing order
    (``prepare_inputs_labels_for_multimodal_flowcut``): the base tile's, then the grid tiles' scattered back into the
    stitched grid (``restore_image_features_sorted``) and read row by row, less those unpadding cuts away
    (``unpad_mask``) -- the adapter's patch-space order, laid out with no ``image_newline``."""
    if keep < 2:
        raise ValueError(f"flowcut on LLaVA-NeXT keeps keep // 2 patches per tile: keep must be >= 2, got {keep}")
    prune = source.prune_tiles_in_encoder
    schedule = FlowCutSchedule(keep // 2 + 1, source.tiles.f - 1, cfg)
    hidden, origin, slots = prune(schedule)
    tile = torch.arange(hidden.shape[0], device=origin.device).unsqueeze(1).expand_as(origin[:, 1:])
    slot = slots.to(origin.device)[tile, origin[:, 1:] - 1].flatten()  # subset slot of every survivor, -1: cut away
    feats = hidden[:, 1:].flatten(0, 1)
    inside = torch.nonzero(slot >= 0)[:, 0]
    order = inside[torch.argsort(slot[inside])]
    return Selection(features=feats[order].unsqueeze(0), indices=slot[order].unsqueeze(0))


def llm_scores(inputs: StageInputs) -> torch.Tensor:
    """The authors' LLM-stage score (``modeling_llama_flowcut.py``, ``LlamaSdpaAttention_forward``) from the score
    layer's own rotated q/k and v: with the last prompt token's query ``q`` and value ``u`` (per head) against the
    visual tokens' keys ``k_j`` and values ``v_j``, ``relation = softmax_j(q k_j / sqrt(d))``, ``semantic =
    softmax_j(u v_j / sqrt(d))`` (softmax over the visual tokens only, head means) and ``score_j = (relation_j / sum
    + semantic_j / sum) * ||mean_h v_j||_1`` (``compute_score``, eq. of step 1). (B, n_img), float32."""
    layer, hidden = inputs.layer, inputs.hidden
    attn = layer.self_attn
    q, k = decoder_qk(layer, hidden, inputs.cos, inputs.sin, inputs.last_pos, inputs.rope)
    v = split_heads(attn.v_proj(layer.input_layernorm(hidden)), attn.config.num_key_value_heads)
    v = repeat_kv(v, q.shape[1] // v.shape[1]).float()
    pos = inputs.image_pos[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[-1])
    vis_k, vis_v = torch.gather(k.float(), 2, pos), torch.gather(v, 2, pos)  # (B, H, n, d)
    scale = q.shape[-1] ** -0.5
    relation = torch.softmax(q.float() @ vis_k.transpose(-1, -2) * scale, dim=-1).mean(1)[:, 0]
    semantic = torch.softmax(v[:, :, -1:] @ vis_v.transpose(-1, -2) * scale, dim=-1).mean(1)[:, 0]
    return flow_score(relation, semantic, vis_v.mean(1).norm(p=1, dim=-1))


def plan_next(keep: int, num_layers: int, cfg: FlowCutConfig) -> list[LLMStage]:
    """The authors' LLaVA-NeXT LLM stage: scored with layer ``llm_layer``'s q/k/v, the top ``keep`` visual tokens go
    on from layer ``llm_layer + 1`` (official: layer 1, from layer 2 on), renumbered unless positions="original"."""
    return [LLMStage(layer=cfg.llm_layer + 1, keep=keep, score=llm_scores, score_layer=cfg.llm_layer,
                     compact=cfg.positions == "official")]


def encoder_tokens(keep: int, cfg: FlowCutConfig, n: int, tiles: int = 1) -> int:
    """Visual tokens leaving the tower for the LLM (FLOPs): ``keep`` on LLaVA-1.5; on LLaVA-NeXT (``tiles`` > 1)
    ``keep // 2`` per tile, AT MOST (unpadding drops some of the grid tiles' survivors)."""
    return min(n, keep // 2 * tiles) if tiles > 1 else min(keep, n)


# What the authors' Qwen path does (TungChintao/FlowCut a2ecd24: FlowCut_Qwen/modeling_qwen2_vl_flowcut.py) and why
# it does not run here.
FAMILIES_WHY = (
    "FlowCut runs its authors' LLaVA-1.5 path (cuts between the blocks of the CLIP tower) and LLaVA-NeXT path (every "
    "tile cut to keep // 2 patches in the tower, packed without image_newline tokens, then the top keep visual "
    "tokens after LLM decoder layer 1). Its Qwen2-VL path (FlowCut_Qwen/, batch size 1 only) cuts the ViT to "
    "8 x keep patches (2 x keep merged tokens) with a mean-query score and then to keep at LLM layer 1 (M-RoPE "
    "positions kept); it is written for Qwen2-VL's full-attention ViT, not Qwen2.5-VL's windowed one, and is not "
    "ported"
)
register_method(
    "flowcut", config=FlowCutConfig, paper="FlowCut (NeurIPS 2025)", encoder=select, families=("llava", "llava_next"),
    families_why=FAMILIES_WHY, family_plans={"llava_next": plan_next}, adapter_options={"llava_next": {"newlines": "none"}},
    kept="keep patches that survive the tower's progressive pruning, in raster order (their features come from the "
         "feature layer run on the survivors only); LLaVA-NeXT: the keep patches whose tokens survive the cut after "
         "LLM layer 1",
)
