"""SparseVLM (Zhang et al., ICML 2025, "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model
Inference"; official code https://github.com/Gumpest/SparseVLMs, ``llava/model/language_model/``).

Text-guided, progressive pruning inside the LLM, as the official code's default mode (v1.5, ``USE_VERSION=1_0``):

1. Text raters (§3.2): on the LLM input, ``m = softmax_text(V T^T)`` averaged over the visual tokens (V: visual
   embeddings, T: the tokens after the image); the raters are the text tokens with ``m`` above its mean.
2. At each pruning layer l (official: after layers 2, 6 and 15 of 32): the attention of layer l (softmax over every
   visible key, head mean) from the raters to the visual tokens, averaged over the raters, rates every visual
   token; the top ``counts[i]`` survive into layer l + 1 (the official per-budget schedule, see :func:`schedule`).
3. Token recycling (§3.3): of the pruned tokens, the top 30 % by the same rating (``int(0.3 n) + 1``) are clustered
   by DPC-KNN into ``int(m / 10) + 1`` clusters (:func:`cluster_merge`, TCFormer's density-peak clustering); each
   cluster's average (of layer l's output) is one more visual token. vlprune puts a recycled token in the slot of
   its cluster centre (a pruned token); ``positions="official"`` renumbers the sequence as the official code does.

``version="v1"`` runs the v1 code instead (Gumpest/SparseVLMs@b72c5d6, Oct 2024, the arXiv v1 paper's numbers):
four stages (after layers 2, 6, 15, 19 of 32), each keeping ``min(int(rank(A) * scale + bias), n - 1)`` visual
tokens of a sample (A: the raters' attention to its n visual tokens; nothing when rank(A) = n), :func:`rank_counts`;
``scale``/``bias`` are set per benchmark (:data:`V1_PRESETS`), ``keep`` is then only the nominal budget (a label).
SparseVLM+ (v2.0) is not implemented; docs/methods/sparsevlm.md says which version DeSAP's table reports.
Budget (v1.5): ``keep`` is the official budget (64 / 96 / 128 / 192 on LLaVA-1.5 = the layer-averaged visual tokens,
each layer counted at its output as the official code counts them); see :func:`schedule` for other budgets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..llm_stage import LLMStage, StageInputs
from ..ops import descending_order, gather_rows, true_first
from ..registry import register_method
from .visiondrop import position_order

# official schedule (Gumpest/SparseVLMs llava/model/language_model/score.py, USE_VERSION=1_0): visual tokens kept
# after decoder layers 2, 6 and 15 of LLaVA-1.5's 32 (recycled tokens come on top), per average budget
OFFICIAL_COUNTS: dict[int, tuple[int, ...]] = {
    64: (66, 30, 17), 96: (238, 48, 26), 128: (303, 110, 36), 192: (300, 200, 110),
}
OFFICIAL_TOKENS = 576  # LLaVA-1.5's visual tokens per image, the size the official schedule was set for
V15_LAYERS = (3 / 32, 7 / 32, 16 / 32)  # v1.5: after layers 2, 6, 15 of 32
V1_LAYERS = (3 / 32, 7 / 32, 16 / 32, 20 / 32)  # v1 (b72c5d6 ``pruning_loc=[2, 6, 15, 19]``)
# v1's published settings (b72c5d6 scripts/v1_5/eval/{mme,pope,textvqa}.sh, README): (scale, bias, reported budget)
V1_PRESETS: dict[str, tuple[float, float, int]] = {"mme": (13.5, 0.0, 192), "pope": (9.0, 6.0, 128),
                                                   "textvqa": (0.8, 0.0, 64)}
_V1_HELP = ("SparseVLM v1 keeps rank(A) * scale + bias tokens per stage: pass scale= and bias=, or preset= one of the "
            "authors' settings: 'mme' (MME, 192 tokens: scale=13.5, bias=0), 'pope' (POPE, 128: scale=9, bias=6), "
            "'textvqa' (TextVQA, 64: scale=0.8, bias=0)")


@dataclass
class SparseVLMConfig:
    """Options of SparseVLM (defaults: the official code for LLaVA-1.5).

    layer_fractions: tokens are dropped right before decoder layer ``round(f * num_layers)``, ranked with the
        attention of the layer before it (official: after layers 2, 6, 15 of 32, i.e. before 3, 7, 16).
    stage_ratios: visual tokens kept by each stage (before recycling) as a multiple of ``keep``; None = the official
        schedule of the nearest official budget (:func:`schedule`). Needed when ``layer_fractions`` has not 3 entries.
    recycle: token recycling (§3.3) on/off.
    recycle_ratio: share of the pruned tokens (the best-rated) that are clustered (official 0.3: ``int(0.3 n) + 1``).
    cluster_divisor: clusters = ``int(recycled / cluster_divisor) + 1`` (official 10).
    positions: "original" = every kept token keeps its position, a recycled token takes its cluster centre's
        (vlprune; any family, any number of images); "official" = after each stage the sequence is renumbered
        0..L'-1 with the kept visual tokens first, then the recycled ones (one image per sample, 1-D RoPE).
    version: "v1.5" (ICML 2025 code, fixed per-budget counts) or "v1" (Oct 2024 code: rank-adaptive counts, four
        stages; None ``layer_fractions`` = 3/32, 7/32, 16/32, 20/32; ``stage_ratios`` unused).
    scale, bias: v1 only: a stage keeps ``n_images * int(rank(A) * scale + bias)`` (at most n - 1) of a sample's n
        visual tokens. preset: v1 only, sets both from :data:`V1_PRESETS` ("mme", "pope", "textvqa").
    """

    layer_fractions: tuple[float, ...] | None = None  # None: the version's official layers
    stage_ratios: tuple[float, ...] | None = None
    recycle: bool = True
    recycle_ratio: float = 0.3
    cluster_divisor: int = 10
    positions: Literal["original", "official"] = "original"
    version: Literal["v1.5", "v1"] = "v1.5"
    scale: float | None = None
    bias: float | None = None
    preset: str | None = None

    def __post_init__(self) -> None:
        if self.version not in ("v1.5", "v1"):
            raise ValueError(f"version must be 'v1.5' (default) or 'v1', got {self.version!r}")
        v1 = self.version == "v1"
        if not v1 and (self.scale, self.bias, self.preset) != (None, None, None):
            raise ValueError("scale, bias and preset are options of version='v1' (v1.5 counts come from keep)")
        if v1 and self.preset is not None:
            if self.preset not in V1_PRESETS:
                raise ValueError(f"unknown SparseVLM v1 preset {self.preset!r}: {_V1_HELP}")
            scale, bias, _ = V1_PRESETS[self.preset]
            if self.scale not in (None, scale) or self.bias not in (None, bias):
                raise ValueError(f"preset={self.preset!r} sets scale={scale}, bias={bias}: drop scale/bias or preset")
            self.scale, self.bias = scale, bias
        if v1:
            if self.scale is None or self.bias is None:
                raise ValueError(_V1_HELP)
            self.scale, self.bias = float(self.scale), float(self.bias)
            if not (0.0 < self.scale < float("inf")) or not (0.0 <= self.bias < float("inf")):
                raise ValueError(f"SparseVLM v1 needs scale > 0 and bias >= 0 (finite), got {self.scale}, {self.bias}")
        if self.layer_fractions is None:
            self.layer_fractions = V1_LAYERS if v1 else V15_LAYERS
        self.layer_fractions = tuple(float(f) for f in self.layer_fractions)
        fr = self.layer_fractions
        if not fr or any(not 0.0 < f < 1.0 for f in fr) or any(b <= a for a, b in zip(fr, fr[1:])):
            raise ValueError(f"layer_fractions must be strictly increasing fractions in (0, 1), got {fr}")
        if self.stage_ratios is not None:
            self.stage_ratios = tuple(float(r) for r in self.stage_ratios)
            if len(self.stage_ratios) != len(fr) or any(r <= 0 for r in self.stage_ratios):
                raise ValueError(f"stage_ratios needs {len(fr)} positive entries (one per layer_fractions entry), "
                                 f"got {self.stage_ratios}")
        elif len(fr) != 3 and not v1:
            raise ValueError("the official schedule has 3 stages: pass stage_ratios (one per layer_fractions entry)")
        if not 0.0 < self.recycle_ratio <= 1.0:
            raise ValueError(f"recycle_ratio must lie in (0, 1], got {self.recycle_ratio}")
        if self.cluster_divisor < 1:
            raise ValueError(f"cluster_divisor must be >= 1, got {self.cluster_divisor}")
        if self.positions not in ("original", "official"):
            raise ValueError(f"positions must be 'original' or 'official', got {self.positions!r}")


# -- the budget -> schedule mapping ---------------------------------------------------------------------------------
def stage_layers(num_layers: int, cfg: SparseVLMConfig) -> list[int]:
    """Decoder layers before which the stages drop tokens: ``round(f * num_layers)`` (3, 7, 16 of 32); on a shallow
    LLM each stage at least one layer after the previous one (4 layers: 1, 2, 3)."""
    layers: list[int] = []
    for f in cfg.layer_fractions:
        layers.append(max(int(f * num_layers + 0.5), layers[-1] + 1 if layers else 1))
    if layers[-1] > num_layers - 1:
        raise ValueError(f"SparseVLM's {len(layers)} stages do not fit an LLM of {num_layers} layers (layers "
                         f"{layers}): pass fewer layer_fractions (and as many stage_ratios)")
    return layers


def schedule(keep: int, num_layers: int, cfg: SparseVLMConfig, tokens_per_image: int | None = None
             ) -> tuple[list[int], list[int]]:
    """``(layers, counts)``: stage i keeps ``counts[i]`` visual tokens per image (before recycling) from decoder
    layer ``layers[i]`` on. Official budgets on 576 tokens give the official lists (64 -> 66/30/17, 128 ->
    303/110/36, 192 -> 300/200/110). Otherwise the list of the official budget nearest to ``keep * 576 / tokens``
    scaled by ``keep / that budget`` (the same fractions of the image); ``keep >= tokens_per_image`` prunes nothing."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    if cfg.version == "v1":
        raise ValueError("SparseVLM v1 has no fixed schedule: each stage keeps rank(A) * scale + bias tokens of "
                         "each sample (data-dependent); use version='v1.5' for counts set by keep")
    layers = stage_layers(num_layers, cfg)
    n = tokens_per_image or OFFICIAL_TOKENS
    if keep >= n:
        return layers, [n] * len(layers)
    if cfg.stage_ratios is not None:
        ratios = cfg.stage_ratios
    else:
        base = min(OFFICIAL_COUNTS, key=lambda b: (abs(b - keep * OFFICIAL_TOKENS / n), b))
        ratios = tuple(c / base for c in OFFICIAL_COUNTS[base])
    return layers, [max(1, int(r * keep + 0.5)) for r in ratios]


def recycled_count(pruned: int, cfg: SparseVLMConfig) -> tuple[int, int]:
    """(tokens clustered, clusters) from ``pruned`` pruned tokens: ``int(0.3 n) + 1`` and ``int(m / 10) + 1``."""
    if not cfg.recycle or pruned < 1:
        return 0, 0
    m = min(int(pruned * cfg.recycle_ratio) + 1, pruned)
    return m, min(m, int(m / cfg.cluster_divisor) + 1)


# -- pure functions ------------------------------------------------------------------------------------------------
def text_raters(embeds: torch.Tensor, is_img: torch.Tensor, text: torch.Tensor, valid: torch.Tensor
                ) -> torch.Tensor:
    """§3.2, eq. 1-2: which text tokens rate. ``embeds`` (B, L, D) the LLM input, ``is_img`` (B, L) its visual
    tokens, ``text`` (B, T, D) the candidate text tokens' inputs (the tokens after the image), ``valid`` (B, T) the
    real ones. ``m_j = mean_i softmax_j(v_i . t_j)`` over the visual tokens i; raters: ``m_j > mean(m)``. (B, T)."""
    logits = (embeds.float() @ text.float().transpose(1, 2)).masked_fill(~valid.unsqueeze(1), float("-inf"))
    probs = torch.nan_to_num(torch.softmax(logits, dim=-1))  # (B, L, T)
    w = is_img.float()
    m = (probs * w.unsqueeze(-1)).sum(1) / w.sum(1, keepdim=True).clamp(min=1)  # (B, T)
    mean = (m * valid).sum(-1, keepdim=True) / valid.sum(-1, keepdim=True).clamp(min=1)
    return (m > mean) & valid


def rater_scores(probs: torch.Tensor, image_pos: torch.Tensor, raters: torch.Tensor) -> torch.Tensor:
    """§3.2, eq. 3: attention (B, T, L) of the T window rows (head mean) to the visual tokens ``image_pos`` (B, n),
    averaged over the raters (B, T bool): (B, n)."""
    cols = torch.gather(probs, 2, image_pos.unsqueeze(1).expand(-1, probs.shape[1], -1))  # (B, T, n)
    w = raters.float().unsqueeze(-1)
    return torch.where(raters.unsqueeze(-1), cols, 0.0).sum(1) / w.sum(1).clamp(min=1)


def rank_counts(attn: torch.Tensor, raters: torch.Tensor, n_images: int, scale: float, bias: float
                ) -> tuple[list[int], list[int]]:
    """v1's adaptive count (official ``attn_postprocess_rank``, b72c5d6 score.py): for each row b, r = the rank of
    the raters' attention to the n visual tokens, ``attn[b][raters[b]]`` (R_b, n), by ``torch.linalg.matrix_rank``
    in float32 with its default tolerance (singular values above ``max(R_b, n) * eps * s_max``, as the official,
    which is why each row is its own call: zero rows would change ``max(R_b, n)``). Kept: every token if r = n,
    else ``min(n_images * int(r * scale + bias), n - 1)``. ``attn`` (B, T, n), ``raters`` (B, T) bool. Returns
    (ranks, counts), one int per row."""
    n = attn.shape[-1]
    ranks = [int(torch.linalg.matrix_rank(attn[b][raters[b]].float())) for b in range(attn.shape[0])]
    counts = [n if r == n else min(n_images * int(r * scale + bias), n - 1) for r in ranks]
    return ranks, counts


def tie_break_noise(batch: int, m: int, device: torch.device | None = None) -> torch.Tensor:
    """vlprune's fixed stand-in for the official ``torch.rand(density.shape) * 1e-6``: (B, M), decreasing in i."""
    return (torch.arange(m - 1, -1, -1, device=device, dtype=torch.float32) / m * 1e-6).expand(batch, m)


def cluster_merge(x: torch.Tensor, clusters: int, noise: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """§3.3: DPC-KNN clustering (TCFormer, as the official ``cluster_and_merge``) of x (B, M, C) into ``clusters``
    groups, each averaged. Density from the ``clusters`` nearest neighbours, centres = top ``clusters`` by distance
    to a denser token x density, every token to its nearest centre. Mutual nearest neighbours have exactly equal
    densities, so the official code adds ``torch.rand * 1e-6`` to the density; ``noise`` (B, M) supplies that draw.
    None: a deterministic draw, ``1e-6 * (M - 1 - i) / M`` (the best-rated candidate first wins a tie; batch- and
    seed-independent). Returns (centres (B, c) indices into M, in cluster order; merged (B, c, C) = sum / (size +
    1e-6), as the official)."""
    b, m, c = x.shape
    xf = x.float()
    dist = torch.cdist(xf, xf, compute_mode="donot_use_mm_for_euclid_dist") / c**0.5
    nearest = torch.sort(dist, dim=-1).values[..., :clusters]
    density = (-(nearest**2).mean(dim=-1)).exp()
    if noise is None:
        noise = tie_break_noise(b, m, x.device)
    density = density + noise.to(density.dtype)
    denser = density[:, None, :] > density[:, :, None]  # [b, i, j]: j is denser than i
    dist_max = dist.flatten(1).max(dim=-1).values[:, None, None]
    parent = torch.where(denser, dist, dist_max).min(dim=-1).values
    centres = descending_order(parent * density)[:, :clusters]
    to_centre = torch.gather(dist, 1, centres.unsqueeze(-1).expand(-1, -1, m))  # (B, c, M)
    assign = to_centre.argmin(dim=1)
    assign.scatter_(1, centres, torch.arange(clusters, device=x.device).expand(b, clusters))
    size = torch.zeros(b, clusters, device=x.device).scatter_add_(1, assign, torch.ones(b, m, device=x.device))
    weight = 1.0 / (size + 1e-6)
    merged = torch.zeros(b, clusters, c, device=x.device).scatter_add_(
        1, assign.unsqueeze(-1).expand(-1, -1, c), xf * torch.gather(weight, 1, assign).unsqueeze(-1))
    return centres, merged.to(x.dtype)


def recycle(scores: torch.Tensor, features: torch.Tensor, budget: int, cfg: SparseVLMConfig,
            noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One stage on n visual tokens: the top ``budget`` by ``scores`` (B, n) are kept; the best-rated pruned tokens
    are clustered (:func:`cluster_merge` on ``features`` (B, n, D)). Returns (kept (B, budget) slots, ascending;
    centres (B, c) slots of the cluster centres, in cluster order; recycled tokens (B, c, D))."""
    b, n = scores.shape
    order = descending_order(scores)
    kept = torch.sort(order[:, :budget], dim=-1).values
    m, clusters = recycled_count(n - budget, cfg)
    if clusters == 0:
        return kept, kept[:, :0], features[:, :0]
    pruned = torch.sort(order[:, budget:], dim=-1).values  # slot order, as the official policy == 0 list
    cand = torch.gather(pruned, 1, descending_order(torch.gather(scores, 1, pruned))[:, :m])  # best-rated first
    centres, merged = cluster_merge(gather_rows(features, cand), clusters, noise)
    return kept, torch.gather(cand, 1, centres), merged


# -- stages ----------------------------------------------------------------------------------------------------------
def _window(inputs: StageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The text tokens (after the sample's last visual token, padding excluded) as query rows of the current
    sequence (B, T), and which of them are raters (B, T) (computed on the prompt; text tokens are never dropped)."""
    pr = inputs.prompt
    if pr is None or inputs.columns is None:
        raise RuntimeError("SparseVLM needs the LLM input (StageInputs.prompt); run it through vlprune.apply")
    col = torch.arange(pr.is_img.shape[1], device=pr.is_img.device)
    last_img = torch.where(pr.is_img, col, -1).max(dim=1, keepdim=True).values
    text = (col > last_img) & ~pr.pad
    t = max(1, int(text.sum(-1).max()))
    pos = true_first(text)[:, :t]  # (B, T) prompt positions of the text tokens, then filler
    valid = torch.gather(text, 1, pos)
    raters = text_raters(pr.hidden, pr.is_img, gather_rows(pr.hidden, pos), valid)
    cur = torch.searchsorted(inputs.columns.contiguous(), pos.contiguous()).clamp(max=inputs.columns.shape[1] - 1)
    return cur, raters


def visual_scores(inputs: StageInputs) -> torch.Tensor:
    """The raters' head-mean attention to every surviving visual token in the score layer: (B, n)."""
    pos, raters = _window(inputs)
    probs = torch.nan_to_num(inputs.attention(pos).mean(dim=1))  # padding rows (fully masked) -> 0, never read
    return rater_scores(probs, inputs.image_pos, raters)


def v1_scores(inputs: StageInputs, cfg: SparseVLMConfig) -> tuple[torch.Tensor, dict]:
    """v1: :func:`visual_scores` and each row's adaptive count (:func:`rank_counts`) from the same attention."""
    pos, raters = _window(inputs)
    probs = torch.nan_to_num(inputs.attention(pos).mean(dim=1))
    cols = torch.gather(probs, 2, inputs.image_pos.unsqueeze(1).expand(-1, probs.shape[1], -1))
    ranks, counts = rank_counts(cols, raters, inputs.n_images, cfg.scale, cfg.bias)
    return rater_scores(probs, inputs.image_pos, raters), {"ranks": ranks, "counts": counts}


def v1_select(inputs: StageInputs, cfg: SparseVLMConfig) -> tuple[torch.Tensor, dict]:
    """v1: each row keeps its own count and recycles its own pruned tokens (:func:`recycle`, row by row). Ranking:
    kept 2, cluster centres 1, dropped -inf (an adaptive stage); centres padded with -1 to the longest row."""
    feats = gather_rows(inputs.hidden, inputs.image_pos)
    scores = inputs.scores
    ranking = torch.full_like(scores, float("-inf"), dtype=torch.float32)
    rows = []
    for b, k in enumerate(inputs.aux["counts"]):
        if k >= scores.shape[1]:  # rank(A) = n: the official keeps every token, recycles none
            ranking[b] = 2.0
            rows.append((scores.new_zeros(0, dtype=torch.long), feats[b, :0]))
            continue
        kept, centres, tokens = recycle(scores[b: b + 1], feats[b: b + 1], k, cfg)
        ranking[b, kept[0]] = 2.0
        ranking[b, centres[0]] = 1.0
        rows.append((centres[0], tokens[0]))
    c = max(len(r[0]) for r in rows)
    centres = torch.full((len(rows), c), -1, dtype=torch.long, device=scores.device)
    tokens = feats.new_zeros(len(rows), c, feats.shape[-1])
    for b, (cen, tok) in enumerate(rows):
        centres[b, : len(cen)], tokens[b, : len(cen)] = cen, tok
    return ranking, {**inputs.aux, "centres": centres, "tokens": tokens}


def _stage(layer: int, count: int, cfg: SparseVLMConfig) -> LLMStage:
    def select(inputs: StageInputs):
        feats = gather_rows(inputs.hidden, inputs.image_pos)
        kept, centres, tokens = recycle(inputs.scores, feats, inputs.budget, cfg)
        ranking = torch.zeros_like(inputs.scores, dtype=torch.float32)  # kept 2, centres 1, the rest 0
        ranking.scatter_(1, kept, 2.0)
        ranking.scatter_(1, centres, 1.0)
        return ranking, {"centres": centres, "tokens": tokens}

    def merge(inputs: StageInputs, kept: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
        feats = gather_rows(gather_rows(inputs.hidden, inputs.image_pos), kept)
        if inputs.aux["centres"].shape[1] == 0:  # v1: no row recycled (rank(A) = n)
            return feats
        match = kept.unsqueeze(-1) == inputs.aux["centres"].unsqueeze(1)  # (B, k, c)
        rec = gather_rows(inputs.aux["tokens"], match.float().argmax(-1)).to(feats.dtype)
        return torch.where(match.any(-1, keepdim=True), rec, feats)

    def renumber(inputs: StageInputs, kept: torch.Tensor) -> torch.Tensor:
        """Official order: the kept visual tokens in position order, then the recycled ones in cluster order."""
        n = inputs.image_pos.shape[1]
        key = torch.gather(torch.argsort(position_order(inputs), dim=-1), 1, kept)
        match = kept.unsqueeze(-1) == inputs.aux["centres"].unsqueeze(1)
        if match.shape[-1]:
            key = torch.where(match.any(-1), n + match.float().argmax(-1), key)
        return torch.argsort(torch.argsort(key, dim=-1), dim=-1)

    def extra(n: int, budget: int) -> int:
        return recycled_count(n - budget, cfg)[1]

    renumber_fn = renumber if cfg.positions == "official" else None
    if cfg.version == "v1":  # adaptive: ``count`` unused (LLMStage.adaptive)
        return LLMStage(layer=layer, keep=1, score=lambda i: v1_scores(i, cfg), score_layer=layer - 1,
                        select=lambda i: v1_select(i, cfg), merge=merge if cfg.recycle else None,
                        renumber=renumber_fn, adaptive=True)
    return LLMStage(layer=layer, keep=count, score=visual_scores, score_layer=layer - 1, select=select,
                    merge=merge if cfg.recycle else None, extra=extra if cfg.recycle else None,
                    renumber=renumber_fn)


def plan(keep: int, num_layers: int, cfg: SparseVLMConfig, tokens_per_image: int | None = None) -> list[LLMStage]:
    """The stages of :func:`schedule` (``layer``, ``keep`` and ``extra`` are all the FLOPs count needs). v1: one
    adaptive stage per ``layer_fractions`` entry; ``keep`` is the nominal budget only (a preset's must match)."""
    if cfg.version == "v1":
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        if cfg.preset is not None and keep != V1_PRESETS[cfg.preset][2]:
            raise ValueError(f"SparseVLM v1 preset={cfg.preset!r} is the authors' {V1_PRESETS[cfg.preset][2]}-token "
                             f"setting; keep (its label, v1 counts come from scale/bias) must be "
                             f"{V1_PRESETS[cfg.preset][2]}, got {keep}")
        return [_stage(layer, 1, cfg) for layer in stage_layers(num_layers, cfg)]
    layers, counts = schedule(keep, num_layers, cfg, tokens_per_image)
    return [_stage(layer, count, cfg) for layer, count in zip(layers, counts)]


def average_tokens(keep: int, num_layers: int, cfg: SparseVLMConfig, tokens: int = OFFICIAL_TOKENS,
                   official: bool = False) -> float:
    """Layer-averaged visual tokens of one image of ``tokens`` under :func:`schedule`, recycled tokens included.
    ``official``: each layer counted at its OUTPUT, as the official code's "equal token num" (the scoring layer at
    the pruned count): 64 -> 64.8, 128 -> 128.6, 192 -> 192.0 on LLaVA-1.5; else at its input (what the FLOPs see)."""
    schedule(keep, num_layers, cfg, tokens)  # v1 (no schedule) refused
    per_layer = [tokens] * num_layers
    cur = tokens
    for stage in plan(keep, num_layers, cfg, tokens):
        if stage.keep < cur:
            cur = stage.keep + (stage.extra(cur, stage.keep) if stage.extra else 0)
        for i in range(stage.layer - 1 if official else stage.layer, num_layers):
            per_layer[i] = cur
    return sum(per_layer) / num_layers


register_method("sparsevlm", config=SparseVLMConfig, paper="SparseVLM (ICML 2025)", plan=plan,
                kept="keep is the official layer-averaged budget (version='v1': a label, see scale/bias); indices = "
                     "the patches whose tokens survive the last stage (recycled tokens stand at their cluster centre's "
                     "patch)")
