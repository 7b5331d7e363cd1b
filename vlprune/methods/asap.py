"""ASAP (Pathak & Han, "Attention-Shift-Aware Pruning for Efficient LVLM Inference") and its SG-BiMask as a
plug-in to FastV (``fastv+bimask``, the paper's appendix C.1 / ablation "Important").

After decoder layer L (the LLM layer with index ``layer - 1``; tokens are dropped right before index
``layer``, so ``layer=2`` prunes where FastV K=2 does):

1. SG-BiMask (§4.1): ``W = Q K^T / sqrt(d)`` of layer L (recomputed from its own q/k with RoPE, the model keeps
   running SDPA), attention mass ``s_j = sum_{i in image} W_ij`` (head mean, all image queries, pre-mask),
   min-max normalised ``s^`` (eps 1e-6); on the image span's upper triangle (query i before key j, both
   visual) the causal ``-inf`` becomes ``ln(max(lambda_max * s^_j, eps))``. ``A = softmax(W + M_bidir)``.
2. Top-k by the attention each visual token receives in ``A`` from the ranking queries (head mean, mean
   over the query rows; see ``query``).
3. Saliency-weighted consolidation (§4.2) on the hidden states that layer L hands on (its output): visiting
   the top-k in decreasing ``s^`` (ties: earlier token first), every not-yet-absorbed token becomes an anchor
   and absorbs the later-visited, not-yet-absorbed tokens with cosine > ``threshold``; so sources are disjoint,
   flow only toward higher saliency and never chain. Anchor ``h_i <- (s^_i h_i + sum_j s^_j h_j) /
   (s^_i + sum_j s^_j)`` (1e-6 added to every weight so a zero-saliency group stays defined).
4. Budget reallocation: the ``a`` freed slots go to the top-``a`` pruned tokens by attention mass ``s``
   (un-merged). At most (visual tokens - k) tokens are absorbed, so the budget is always exactly k.

KV cache: pruning happens once, in the prefill; the bidirectional mask only shapes the SELECTION (the model's
own forward stays causal), so cached decoding is exact (see docs/methods/asap.md for the reading).
Budget: ``keep`` visual tokens per image from layer ``layer`` on (all tokens before), like FastV; compare
budgets across methods by FLOPs (``vlprune.flops``), as the paper does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..attention import decoder_qk, mask_logits
from ..llm_stage import LLMStage, StageInputs
from ..ops import descending_order, gather_rows, mask_from_indices, topk_indices
from ..registry import register_method

QUERIES = ("all", "image", "text", "last")
_HEAD_CHUNK = 8  # heads per block when forming (rows x keys) attention maps: bounds memory on long prompts


def _check_common(layer: int, lambda_max: float, query: str, eps: float) -> None:
    if layer < 1:
        raise ValueError(f"layer (L + 1, the first pruned decoder layer) must be >= 1, got {layer}")
    if not 0.0 < lambda_max <= 1.0:
        raise ValueError(f"lambda_max must lie in (0, 1] (paper §4.1), got {lambda_max}")
    if query not in QUERIES:
        raise ValueError(f"query must be one of {QUERIES}, got {query!r}")
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must lie in (0, 1), got {eps}")


@dataclass
class ASAPConfig:
    """Options of ASAP. The paper leaves L, lambda_max, t and the ranking query open; defaults and reasons:

    layer: visual tokens are dropped before this decoder layer; W, s and the ranking come from the layer
        before it (the paper's "layer L"). Default 2 = FastV's K=2: ASAP is ablated against FastV and its
        Table 4 reports FastV's FLOPs at the same token counts, which only holds with the same pruning layer.
    lambda_max: the largest forward visibility of a salient visual key, in (0, 1]. Default 1.0: the most
        salient anchor is fully visible to earlier patches; less salient ones fade as ``lambda_max * s^``.
    threshold: t, cosine similarity above which a kept token is absorbed by a more salient kept token.
        Default 0.9: only near-duplicates (uniform background patches) are fused; the hidden states of an
        early LLM layer are dominated by a few shared directions, so lower values merge distinct content.
    query: whose attention ranks the visual tokens: "all" (default; every row from the first visual token to
        the end of the prompt: the image rows, where SG-BiMask acts, plus the instruction rows that make the
        choice prompt-aware), "image" (visual rows only: visual-only, like VisionDrop), "text" (the rows after
        the last visual token), "last" (the last prompt token, as FastV; SG-BiMask cannot change that row).
    consolidate: saliency-weighted consolidation + budget reallocation (False = the "Important" ablation).
    eps: the floor of the log-penalty and the min-max epsilon (paper: 1e-6).
    """

    layer: int = 2
    lambda_max: float = 1.0
    threshold: float = 0.9
    query: str = "all"
    consolidate: bool = True
    eps: float = 1e-6

    def __post_init__(self) -> None:
        _check_common(self.layer, self.lambda_max, self.query, self.eps)
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold t is a cosine similarity in [-1, 1], got {self.threshold}")


@dataclass
class FastVBiMaskConfig:
    """FastV with ASAP's SG-BiMask ranking (appendix C.1): after layer ``layer - 1``, keep the top-k visual
    tokens by the attention they receive under the saliency-guided bidirectional mask. No consolidation.

    layer: FastV's K (default 2). lambda_max, query, eps: as ASAP (query "last" would be plain FastV,
    since the mask only changes rows of visual queries, hence the default "all")."""

    layer: int = 2
    lambda_max: float = 1.0
    query: str = "all"
    eps: float = 1e-6

    def __post_init__(self) -> None:
        _check_common(self.layer, self.lambda_max, self.query, self.eps)


# -- SG-BiMask ----------------------------------------------------------------------------------------------------
def minmax(s: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 3, per row: (s - min) / (max - min + eps)."""
    lo, hi = s.min(dim=-1, keepdim=True).values, s.max(dim=-1, keepdim=True).values
    return (s - lo) / (hi - lo + eps)


def _query_weights(query: str, image_pos: torch.Tensor, rows: torch.Tensor, length: int) -> torch.Tensor:
    """(B, R) 0/1 weights of the query rows ``rows`` (R,) that rank the visual tokens."""
    b = image_pos.shape[0]
    r = rows.view(1, -1).expand(b, -1)
    is_img = torch.zeros(b, length, dtype=torch.bool, device=rows.device).scatter_(1, image_pos, True)
    img_row = torch.gather(is_img, 1, r)
    after = r > image_pos[:, -1:]
    if query == "image":
        w = img_row
    elif query == "text":
        w = after
    elif query == "last":
        w = r == length - 1
    else:  # "all": from the sample's first visual token on (its padding lies before it)
        w = r >= image_pos[:, :1]
    return w.float()


def bimask_attention(
    inputs: StageInputs, lambda_max: float, query: str, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SG-BiMask at the score layer. Returns (received attention (B, n_img) from the ranking queries,
    normalised saliency s^ (B, n_img), raw attention mass s (B, n_img))."""
    pos = inputs.image_pos
    b, n = pos.shape
    length = inputs.hidden.shape[1]
    first = int(pos[:, 0].min())
    rows = torch.arange(first, length, device=pos.device)  # every row that can matter (image + after)
    q, k = decoder_qk(inputs.layer, inputs.hidden, inputs.cos, inputs.sin, rows.expand(b, -1), inputs.rope)
    scale = inputs.layer.self_attn.scaling
    img_rows = pos - first  # (B, n) image rows within ``rows``
    heads = q.shape[1]
    # pass 1: attention mass s_j = sum over image queries of the (head-mean) pre-softmax W_ij, causal or not
    s = torch.zeros(b, n, dtype=torch.float32, device=pos.device)
    for h in range(0, heads, _HEAD_CHUNK):
        qi = gather_rows_heads(q[:, h : h + _HEAD_CHUNK], img_rows)
        ki = gather_rows_heads(k[:, h : h + _HEAD_CHUNK], pos)
        s += ((qi.float() @ ki.float().transpose(-1, -2)) * scale).sum(dim=(1, 2))
    s = s / heads
    s_hat = minmax(s, eps)
    penalty = torch.log(torch.clamp(lambda_max * s_hat, min=eps))  # (B, n)
    # pass 2: softmax(W + M_bidir), head mean, attention received by each visual key from the ranking rows
    is_img = torch.zeros(b, length, dtype=torch.bool, device=pos.device).scatter_(1, pos, True)
    pen_cols = torch.zeros(b, length, dtype=torch.float32, device=pos.device).scatter_(1, pos, penalty)
    row_img = torch.gather(is_img, 1, rows.expand(b, -1))
    upper = row_img.unsqueeze(-1) & is_img.unsqueeze(1) & (torch.arange(length, device=pos.device).view(1, 1, -1)
                                                          > rows.view(1, -1, 1))  # (B, R, L)
    weights = _query_weights(query, pos, rows, length)  # (B, R)
    received = torch.zeros(b, length, dtype=torch.float32, device=pos.device)
    for h in range(0, heads, _HEAD_CHUNK):
        raw = (q[:, h : h + _HEAD_CHUNK].float() @ k[:, h : h + _HEAD_CHUNK].float().transpose(-1, -2)) * scale
        masked = mask_logits(raw, inputs.mask, rows.expand(b, -1))
        logits = torch.where(upper.unsqueeze(1), raw + pen_cols.view(b, 1, 1, -1), masked)
        probs = torch.nan_to_num(torch.softmax(logits, dim=-1))  # fully masked (padding) rows -> 0
        received += torch.einsum("bhrl,br->bl", probs, weights)
    received = received / (heads * weights.sum(-1, keepdim=True).clamp(min=1))
    return torch.gather(received, 1, pos), s_hat, s


def gather_rows_heads(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, :, index[b]]`` for x (B, H, L, d), index (B, n) -> (B, H, n, d)."""
    h, d = x.shape[1], x.shape[-1]
    return torch.gather(x, 2, index.view(index.shape[0], 1, -1, 1).expand(-1, h, -1, d))


# -- consolidation + reallocation ----------------------------------------------------------------------------------
def consolidate(
    features: torch.Tensor, attention: torch.Tensor, s_hat: torch.Tensor, k: int, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """§4.2 on N tokens: top-k by ``attention`` (B, N), saliency-weighted merge among them, refill by ``s^``.

    features (B, N, D) the hidden states the merge acts on. Returns (ranking (B, N): exactly the k final
    tokens rank above the rest, merged features (B, N, D): anchors replaced by their weighted mean).
    """
    b, n, d = features.shape
    top = torch.sort(topk_indices(attention, k), dim=-1).values  # (B, k), sequence order
    sal = torch.gather(s_hat, 1, top)
    visit = torch.gather(top, 1, descending_order(sal))  # (B, k) token slots by saliency, earlier first on ties
    h = gather_rows(features, visit).float()
    w = torch.gather(s_hat, 1, visit).float() + 1e-6
    unit = F.normalize(h, dim=-1)
    close = (unit @ unit.transpose(1, 2)) > threshold  # (B, k, k)
    close &= torch.ones(k, k, dtype=torch.bool, device=h.device).triu(1)  # only toward earlier-visited anchors
    absorbed = torch.zeros(b, k, dtype=torch.bool, device=h.device)
    dest = torch.arange(k, device=h.device).expand(b, k).clone()
    room = n - k  # the pruned pool refills every freed slot only while it lasts
    for r in torch.nonzero(close.any(dim=(0, 2))).flatten().tolist():
        cand = close[:, r] & ~absorbed & ~absorbed[:, r : r + 1]
        allowed = room - absorbed.sum(-1, keepdim=True)
        cand &= cand.cumsum(-1) <= allowed
        dest = torch.where(cand, torch.full_like(dest, r), dest)
        absorbed |= cand
    num = torch.zeros(b, k, d, dtype=torch.float32, device=h.device).scatter_add_(
        1, dest.unsqueeze(-1).expand(-1, -1, d), w.unsqueeze(-1) * h)
    den = torch.zeros(b, k, dtype=torch.float32, device=h.device).scatter_add_(1, dest, w)
    merged_visit = torch.where(absorbed.unsqueeze(-1), h, num / den.clamp(min=1e-12).unsqueeze(-1))
    merged = features.float().scatter(1, visit.unsqueeze(-1).expand(-1, -1, d), merged_visit)
    in_top = mask_from_indices(top, n)
    ranking = torch.where(in_top, torch.zeros_like(s_hat), 1.0 + s_hat.float())  # the pool, by attention mass
    anchors = visit.masked_fill(absorbed, -1)
    ranking = ranking.masked_fill(_mask_slots(anchors, n), 3.0)  # anchors first, absorbed sources last (0)
    return ranking, merged.to(features.dtype)


def _mask_slots(index: torch.Tensor, n: int) -> torch.Tensor:
    """Boolean (B, N) with True at the non-negative entries of ``index`` (B, K)."""
    mask = torch.zeros(index.shape[0], n + 1, dtype=torch.bool, device=index.device)
    return mask.scatter_(1, torch.where(index < 0, n, index), True)[:, :n]


# -- stages --------------------------------------------------------------------------------------------------------
def _stage(keep: int, layer: int, lambda_max: float, query: str, eps: float, threshold: float | None) -> LLMStage:
    def score(inputs: StageInputs):
        att, s_hat, s = bimask_attention(inputs, lambda_max, query, eps)
        return att, {"s_hat": s_hat, "s": s}

    def select(inputs: StageInputs):
        feats = gather_rows(inputs.hidden, inputs.image_pos)
        ranking, merged = consolidate(feats, inputs.scores, inputs.aux["s_hat"], inputs.keep, threshold)
        return ranking, {"merged": merged}

    def merge(inputs: StageInputs, kept: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
        return gather_rows(inputs.aux["merged"], kept)

    if threshold is None:
        return LLMStage(layer=layer, keep=keep, score=score, score_layer=layer - 1)
    return LLMStage(layer=layer, keep=keep, score=score, score_layer=layer - 1, select=select, merge=merge)


def plan(keep: int, num_layers: int, cfg: ASAPConfig) -> list[LLMStage]:
    """One stage: SG-BiMask ranking from layer ``cfg.layer - 1``, consolidation and drop before ``cfg.layer``."""
    threshold = cfg.threshold if cfg.consolidate else None
    return [_stage(keep, cfg.layer, cfg.lambda_max, cfg.query, cfg.eps, threshold)]


def plan_fastv_bimask(keep: int, num_layers: int, cfg: FastVBiMaskConfig) -> list[LLMStage]:
    """FastV's single stage with the SG-BiMask ranking (no consolidation)."""
    return [_stage(keep, cfg.layer, cfg.lambda_max, cfg.query, cfg.eps, None)]


register_method("asap", config=ASAPConfig, paper="ASAP (attention-shift-aware pruning)", plan=plan)
register_method(
    "fastv+bimask", config=FastVBiMaskConfig, paper="FastV (ECCV 2024) + ASAP's SG-BiMask", plan=plan_fastv_bimask
)
