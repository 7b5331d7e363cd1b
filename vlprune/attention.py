"""Attention recomputed from a layer's own projections (the model itself keeps running with SDPA)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .compat import table_rows

DecoupledMode = Literal["qq", "qk", "kk", "vv"]


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, H*d) -> (B, H, N, d)."""
    b, n, _ = x.shape
    return x.view(b, n, num_heads, -1).transpose(1, 2)


def vit_attention_probs(attn: nn.Module, normed: torch.Tensor, query_rows: slice | None = None) -> torch.Tensor:
    """Softmax(Q K^T / sqrt(d)) of a CLIP-style attention module (eq. 4), per head: (B, H, Nq, N).

    ``normed`` is the layer input after its first layer norm; ``query_rows`` restricts the queries
    (e.g. ``slice(0, 1)`` for the [CLS] row only, which is all VisionZip/VisPruner/DeSAP need).
    """
    h = attn.num_heads
    q_in = normed if query_rows is None else normed[:, query_rows]
    q = split_heads(attn.q_proj(q_in), h).float()
    k = split_heads(attn.k_proj(normed), h).float()
    return torch.softmax(q @ k.transpose(-1, -2) * attn.head_dim**-0.5, dim=-1)


def vit_keys(attn: nn.Module, normed: torch.Tensor) -> torch.Tensor:
    """Head-averaged keys (B, N, d) of a CLIP-style attention module (the ToMe/VisionZip merge metric)."""
    return split_heads(attn.k_proj(normed), attn.num_heads).mean(1)


def decoupled_attention(attn: nn.Module, normed: torch.Tensor, mode: DecoupledMode = "qq") -> torch.Tensor:
    """DeSAP eq. 2: ``out_proj(softmax(Q_s Q_s^T / sqrt(d)) V_s)`` — no residual, no MLP (ClearCLIP-style).

    ``mode`` picks the pair that forms the attention map (the paper's ablation, Table 4b):
    "qq" (default, best in the paper), "qk" (ordinary attention), "kk", "vv". Returns (B, N, D).
    The map is never materialised: one fused ``scaled_dot_product_attention`` call (N x N per head is not needed,
    only its product with V).
    """
    h = attn.num_heads
    proj = {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj}
    if mode not in ("qq", "qk", "kk", "vv"):
        raise ValueError(f"decoupled attention mode must be one of qq/qk/kk/vv, got {mode!r}")
    a = split_heads(proj[mode[0]](normed), h)
    b = a if mode[1] == mode[0] else split_heads(proj[mode[1]](normed), h)
    v = split_heads(attn.v_proj(normed), h)
    out = F.scaled_dot_product_attention(a, b, v, scale=attn.head_dim**-0.5)
    return attn.out_proj(out.transpose(1, 2).reshape(normed.shape))


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, Hkv, L, d) -> (B, Hkv*groups, L, d) for grouped-query attention."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def decoder_qk(
    layer: nn.Module,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    query_pos: torch.Tensor,
    rope,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries (B, H, q, d) of rows ``query_pos`` and keys (B, H, L, d) of a decoder layer, RoPE applied.

    ``hidden`` is the layer input (before ``input_layernorm``); ``cos``/``sin`` the rotary tables of the
    current sequence (B or 1, L, d), or (3, B or 1, L, d) sectioned (see ``compat.table_rows``); ``rope(x, cos, sin)``
    applies the family's rotary embedding. Grouped-query key heads are repeated, so both have H = the number of query heads.
    """
    attn = layer.self_attn
    b = hidden.shape[0]
    normed = layer.input_layernorm(hidden)
    rows = query_pos.unsqueeze(-1).expand(-1, -1, normed.shape[-1])
    q = split_heads(attn.q_proj(torch.gather(normed, 1, rows)), attn.config.num_attention_heads)
    k = split_heads(attn.k_proj(normed), attn.config.num_key_value_heads)
    q = rope(q, table_rows(cos, query_pos), table_rows(sin, query_pos))
    cos = cos.expand(*cos.shape[:-3], b, cos.shape[-2], cos.shape[-1])
    sin = sin.expand(*sin.shape[:-3], b, sin.shape[-2], sin.shape[-1])
    return q, repeat_kv(rope(k, cos, sin), q.shape[1] // k.shape[1])


def decoder_attention_logits(
    layer: nn.Module,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    query_pos: torch.Tensor,
    rope,
) -> torch.Tensor:
    """Scaled pre-softmax logits ``Q K^T * scaling`` of a decoder layer, NO mask applied: (B, H, q, L) float32
    (arguments as :func:`decoder_qk`)."""
    q, k = decoder_qk(layer, hidden, cos, sin, query_pos, rope)
    return (q.float() @ k.float().transpose(-1, -2)) * layer.self_attn.scaling


def mask_logits(logits: torch.Tensor, mask: torch.Tensor | None, query_pos: torch.Tensor) -> torch.Tensor:
    """Apply the layer's 4-D mask (bool or additive; None: causal) to logits (B, H, q, L) of rows ``query_pos``."""
    b, n = logits.shape[0], logits.shape[-1]
    if mask is None:
        allowed = torch.arange(n, device=logits.device).view(1, 1, n) <= query_pos.unsqueeze(-1)
        return logits.masked_fill(~allowed.unsqueeze(1), float("-inf"))
    rows_mask = torch.gather(mask, 2, query_pos.view(b, 1, -1, 1).expand(-1, mask.shape[1], -1, mask.shape[-1]))
    return logits.masked_fill(~rows_mask, float("-inf")) if rows_mask.dtype == torch.bool else logits + rows_mask


def decoder_attention_probs(
    layer: nn.Module,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    mask: torch.Tensor | None,
    query_pos: torch.Tensor,
    rope,
) -> torch.Tensor:
    """Attention probabilities of a decoder layer recomputed from its own q/k projections: (B, H, q, L).

    ``hidden`` is the layer input (before ``input_layernorm``); ``cos``/``sin`` the rotary tables of the
    current sequence (B or 1, L, d); ``mask`` the layer's 4-D mask (bool or additive) or None for causal;
    ``query_pos`` (B, q) the query rows; ``rope(x, cos, sin)`` applies the family's rotary embedding.
    """
    logits = decoder_attention_logits(layer, hidden, cos, sin, query_pos, rope)
    return torch.softmax(mask_logits(logits, mask, query_pos), dim=-1)
