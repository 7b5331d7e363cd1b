"""VisionDrop (Xu et al., AAAI 2026, "Rethinking Visual Token Reduction in LVLMs under Cross-modal Misalignment").

Visual-only, progressive pruning: dominant selection + contextual merging at the vision-encoder output and
again before LLM layers 8, 16 and 24 (of 32; scaled to the model's depth). In the LLM a token's importance is
the attention it receives from the visual queries (image queries -> every visible key, softmax, head mean,
image-key columns, mean over the image queries), recomputed with the NEXT layer's q/k and RoPE, as the
official code does (``score_layer == layer``). Contextual tokens: the non-dominant tokens are split into
uniformly strided targets and the rest; each of the rest joins the target with the most cosine-similar key
(post-RoPE keys, head mean); a contextual token is ``target + mean(assigned)`` (official, as VisionZip).

Budget: ``keep`` is the AVERAGE number of visual tokens per image over the LLM's layers (the paper's
"average remaining tokens"), see :func:`schedule`. With the defaults on a 32-layer LLM, keep=32 gives the
official scripts' schedule 48 -> 35 -> 26 -> 19 ([dominant, contextual] = [42, 6] at the encoder, where the
42 dominant tokens include [CLS] as in VisionZip, then [30, 5], [22, 4], [16, 3]).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..attention import split_heads
from ..llm_stage import LLMStage, StageInputs
from ..ops import gather_rows, mask_from_indices, topk_indices
from ..registry import register_method
from .base import Selection, SignalSource
from .visionzip import VisionZipConfig, contextual_merge
from .visionzip import select as visionzip_select

# official scripts (scripts/v1_5/visiondrop_eval/*.sh), average 32 tokens on LLaVA-1.5-7B:
# encoder [dominant 42 (incl. [CLS]), contextual 6]; after layers 8/16/24: [30,5], [22,4], [16,3]
_OFFICIAL = ((42, 6), (30, 5), (22, 4), (16, 3))
_OFFICIAL_BUDGET = 32


@dataclass
class VisionDropConfig:
    """Options of VisionDrop (defaults: the official LLaVA-1.5 scripts).

    layer_fractions: where the LLM stages prune, as fractions of the LLM depth; a stage drops tokens right
        before decoder layer ``round(f * num_layers)`` (official: after layers 8, 16, 24 of 32).
    stage_ratios: tokens per image in each segment (encoder output, then after each LLM stage) relative to
        the average budget ``keep``; official 48/32, 35/32, 26/32, 19/32 (encoder = 1.5x the budget, then a
        near-geometric decay; their mean is 1). Non-increasing, one more entry than ``layer_fractions``.
    contextual_ratios: share of each segment's tokens that are contextual (merged) tokens; official
        6/48, 5/35, 4/26, 3/19. 0 disables merging at that stage.
    include_cls: the encoder stage spends one dominant token on [CLS] (official, via VisionZip).
    positions: "original" = kept tokens keep their positions, each contextual token in its target's slot (vlprune);
        "official" = as the official code: after each LLM stage the sequence is renumbered 0..L'-1 with the
        dominant tokens first, then the contextual ones (one image per sample, LLaVA-1.5/NeXT).
        docs/methods/visiondrop.md.
    """

    layer_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    stage_ratios: tuple[float, ...] = tuple((d + c) / _OFFICIAL_BUDGET for d, c in _OFFICIAL)
    contextual_ratios: tuple[float, ...] = tuple(c / (d + c) for d, c in _OFFICIAL)
    include_cls: bool = True
    positions: Literal["original", "official"] = "original"

    def __post_init__(self) -> None:
        self.layer_fractions = tuple(float(f) for f in self.layer_fractions)
        self.stage_ratios = tuple(float(r) for r in self.stage_ratios)
        self.contextual_ratios = tuple(float(r) for r in self.contextual_ratios)
        fr, ratios, ctx = self.layer_fractions, self.stage_ratios, self.contextual_ratios
        if not fr:
            raise ValueError("VisionDrop needs at least one LLM stage (layer_fractions is empty)")
        if any(not 0.0 < f < 1.0 for f in fr) or any(b <= a for a, b in zip(fr, fr[1:])):
            raise ValueError(f"layer_fractions must be strictly increasing fractions in (0, 1), got {fr}")
        if len(ratios) != len(fr) + 1:
            raise ValueError(
                f"stage_ratios needs one entry per segment (encoder output + {len(fr)} LLM stages = "
                f"{len(fr) + 1}), got {len(ratios)}"
            )
        if any(r <= 0 for r in ratios) or any(b > a for a, b in zip(ratios, ratios[1:])):
            raise ValueError(f"stage_ratios must be positive and non-increasing, got {ratios}")
        if len(ctx) != len(ratios):
            raise ValueError(f"contextual_ratios needs {len(ratios)} entries (one per segment), got {len(ctx)}")
        if any(not 0.0 <= c < 1.0 for c in ctx):
            raise ValueError(f"contextual_ratios must lie in [0, 1), got {ctx}")
        if self.positions not in ("original", "official"):
            raise ValueError(f"positions must be 'original' or 'official', got {self.positions!r}")


# -- the budget -> schedule mapping ---------------------------------------------------------------------------
def stage_layers(num_layers: int, cfg: VisionDropConfig) -> list[int]:
    """Decoder layers before which the LLM stages drop tokens: ``round(f * num_layers)`` (8/16/24 of 32)."""
    layers = [int(f * num_layers + 0.5) for f in cfg.layer_fractions]
    if layers[0] < 1 or layers[-1] > num_layers - 1 or any(b <= a for a, b in zip(layers, layers[1:])):
        raise ValueError(
            f"VisionDrop's {len(layers)} LLM stages do not fit an LLM of {num_layers} layers (layers {layers}); "
            "use fewer layer_fractions"
        )
    return layers


def encoder_tokens(keep: int, cfg: VisionDropConfig, tokens_per_image: int | None = None) -> int:
    """Tokens per image handed to the LLM (the encoder stage): ``round(stage_ratios[0] * keep)`` (48 for 32),
    at most ``tokens_per_image`` when given (needed for budgets above tokens_per_image / 1.5)."""
    n = max(1, int(cfg.stage_ratios[0] * keep + 0.5))
    return min(n, tokens_per_image) if tokens_per_image is not None else n


def schedule(
    keep: int, num_layers: int, cfg: VisionDropConfig, tokens_per_image: int | None = None
) -> tuple[list[int], list[int], list[int]]:
    """Map the average budget ``keep`` to ``(layers, counts, contextual)``.

    ``counts[0]`` tokens per image enter the LLM (:func:`encoder_tokens`); ``counts[i + 1]`` survive from
    decoder layer ``layers[i]`` on; ``contextual[i]`` of ``counts[i]`` are merged tokens. The LLM segments
    share the token-layers left after the encoder segment, ``keep * num_layers - layers[0] * counts[0]``, in
    proportion to ``stage_ratios[1:]`` (capped at ``counts[0]``, water-filling the rest), rounded down and then
    topped up by largest remainder, so that ``sum(segment_length * count) / num_layers == keep`` whenever the
    segment lengths allow it (always on 32 layers: 8-layer segments). Examples on 32 layers: 32 -> 48/35/26/19,
    64 -> 96/70/52/38, 128 -> 192/140/104/76, 192 -> 288/210/156/114.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    layers = stage_layers(num_layers, cfg)
    lengths = [b - a for a, b in zip([0] + layers, layers + [num_layers])]
    c0 = encoder_tokens(keep, cfg, tokens_per_image)
    total = keep * num_layers - lengths[0] * c0  # token-layers left for the LLM segments
    ratios, seg = cfg.stage_ratios[1:], lengths[1:]
    capped = [False] * len(ratios)
    while True:  # water-filling: segments that would exceed counts[0] are held at counts[0]
        weight = sum(l * r for l, r, c in zip(seg, ratios, capped) if not c)
        rest = total - sum(l * c0 for l, c in zip(seg, capped) if c)
        alpha = max(rest, 0) / weight if weight > 0 else 0.0
        grow = [not c and alpha * r > c0 for r, c in zip(ratios, capped)]
        if not any(grow):
            break
        capped = [c or g for c, g in zip(capped, grow)]
    exact = [float(c0) if c else alpha * r for r, c in zip(ratios, capped)]
    counts = [int(x) for x in exact]
    left = total - sum(l * c for l, c in zip(seg, counts))
    for i in sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i)):  # largest remainder first
        ceiling = counts[i - 1] if i else c0
        if exact[i] > counts[i] and seg[i] <= left and counts[i] + 1 <= ceiling:
            counts[i] += 1
            left -= seg[i]
    counts = [c0] + counts
    for i in range(1, len(counts)):
        counts[i] = max(1, min(counts[i], counts[i - 1]))
    contextual = [min(int(c * r + 0.5), c - 1) for c, r in zip(counts, cfg.contextual_ratios)]
    return layers, counts, contextual


def average_tokens(layers: list[int], counts: list[int], num_layers: int) -> float:
    """Layer-averaged visual tokens per image of a schedule (what ``keep`` means for VisionDrop)."""
    lengths = [b - a for a, b in zip([0] + layers, layers + [num_layers])]
    return sum(l * c for l, c in zip(lengths, counts)) / num_layers


# -- signals ------------------------------------------------------------------------------------------------------
def visual_scores(inputs: StageInputs) -> torch.Tensor:
    """Eq. 3-4: attention the visual tokens receive from the visual queries: (B, n_img).

    Softmax over every visible key (causal/padding mask as in the forward), head mean, image-key columns,
    mean over the image queries (official ``attention_avg_head[:, image].mean(0)``).
    """
    probs = inputs.attention(inputs.image_pos).mean(dim=1)  # (B, n_img, L_cur)
    cols = inputs.image_pos.unsqueeze(1).expand(-1, probs.shape[1], -1)
    return torch.gather(probs, 2, cols).mean(dim=1)


def image_keys(inputs: StageInputs) -> torch.Tensor:
    """Keys of the visual tokens in the stage's layer (RoPE applied, head mean): (B, n_img, d_head)."""
    layer, pos = inputs.layer, inputs.image_pos
    attn = layer.self_attn
    normed = layer.input_layernorm(gather_rows(inputs.hidden, pos))
    k = split_heads(attn.k_proj(normed), attn.config.num_key_value_heads)
    cos, sin = inputs.rotary_rows(pos)
    return inputs.rope(k, cos, sin).mean(dim=1)


# -- stages -------------------------------------------------------------------------------------------------------
def dominant_contextual(
    scores: torch.Tensor, features: torch.Tensor, keys: torch.Tensor, n_dominant: int, n_contextual: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One VisionDrop step on a set of N tokens: top-``n_dominant`` by ``scores`` (B, N), then the rest merged
    into ``n_contextual`` strided targets by key similarity. Returns (dominant (B, d), targets (B, c),
    contextual tokens (B, c, D), assign (B, N - d) target slot of every non-dominant token)."""
    b, n = scores.shape
    dominant = torch.sort(topk_indices(scores, n_dominant), dim=-1).values
    rest_mask = ~mask_from_indices(dominant, n)
    rest = torch.arange(n, device=scores.device).expand(b, n)[rest_mask].view(b, n - n_dominant)
    tokens, targets, assign = contextual_merge(features, keys, rest, n_contextual)
    return dominant, targets, tokens, assign


def position_order(inputs: StageInputs) -> torch.Tensor:
    """(B, n_img) the visual slots in the order of their current positions: slot order unless an earlier stage
    renumbered (official convention: the order the official code's sequence has them in)."""
    b, n = inputs.image_pos.shape
    if inputs.positions is None:
        return torch.arange(n, device=inputs.image_pos.device).expand(b, n)
    return torch.argsort(torch.gather(inputs.positions, 1, inputs.image_pos), dim=-1)


def _llm_stage(layer: int, count: int, n_contextual: int, official: bool = False) -> LLMStage:
    def score(inputs: StageInputs):
        s = visual_scores(inputs)
        k = inputs.keep
        ctx = min(n_contextual * inputs.n_images, k - 1)
        if ctx <= 0:
            return s
        # dominant/contextual in position order (targets are strided over it), mapped back to slots
        perm = position_order(inputs)
        feats = gather_rows(gather_rows(inputs.hidden, inputs.image_pos), perm)
        dominant, targets, tokens, _ = dominant_contextual(
            torch.gather(s, 1, perm), feats, gather_rows(image_keys(inputs), perm), k - ctx, ctx)
        dominant, targets = torch.gather(perm, 1, dominant), torch.gather(perm, 1, targets)
        ranking = torch.zeros_like(s)  # tiers: dominant 2, contextual targets 1, the rest 0 (exactly k kept)
        ranking.scatter_(1, dominant, 2.0)
        ranking.scatter_(1, targets, 1.0)
        return ranking, {"targets": targets, "tokens": tokens}

    def merge(inputs: StageInputs, kept: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
        feats = gather_rows(gather_rows(inputs.hidden, inputs.image_pos), kept)
        if inputs.aux is None:
            return feats
        match = kept.unsqueeze(-1) == inputs.aux["targets"].unsqueeze(1)  # (B, k, c)
        which = match.float().argmax(-1)
        ctx = gather_rows(inputs.aux["tokens"], which).to(feats.dtype)
        return torch.where(match.any(-1, keepdim=True), ctx, feats)

    def renumber(inputs: StageInputs, kept: torch.Tensor) -> torch.Tensor:
        """Official order of the kept tokens: dominant ones, then contextual ones, each in position order."""
        rank = torch.argsort(position_order(inputs), dim=-1)  # slot -> its place in position order
        key = torch.gather(rank, 1, kept)
        if inputs.aux is not None:
            is_target = (kept.unsqueeze(-1) == inputs.aux["targets"].unsqueeze(1)).any(-1)
            key = key + is_target * rank.shape[1]
        return torch.argsort(torch.argsort(key, dim=-1), dim=-1)

    return LLMStage(layer=layer, keep=count, score=score, merge=merge if n_contextual > 0 else None,
                    renumber=renumber if official else None)


def plan(keep: int, num_layers: int, cfg: VisionDropConfig, tokens_per_image: int | None = None) -> list[LLMStage]:
    """The LLM stages of :func:`schedule` (their ``layer``/``keep`` are all the FLOPs count needs, plus
    :func:`encoder_tokens` for the encoder stage)."""
    layers, counts, contextual = schedule(keep, num_layers, cfg, tokens_per_image)
    official = cfg.positions == "official"
    return [_llm_stage(l, c, x, official) for l, c, x in zip(layers, counts[1:], contextual[1:])]


def select(source: SignalSource, keep: int, cfg: VisionDropConfig) -> Selection:
    """Encoder stage: VisionZip's dominant ([CLS] attention) + contextual (key merge) with VisionDrop's counts."""
    n = source.features().shape[1]
    count = encoder_tokens(keep, cfg, n)
    vz = VisionZipConfig(contextual_ratio=cfg.contextual_ratios[0], include_cls=cfg.include_cls)
    return visionzip_select(source, count, vz)


register_method(
    "visiondrop", config=VisionDropConfig, paper="VisionDrop (AAAI 2026)", encoder=select, plan=plan
)
