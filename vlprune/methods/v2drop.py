"""V2Drop (Chen, Liu et al., CVPR 2026, "Variation-aware Vision Token Dropping for Faster Large Vision-Language
Models").

A visual token's importance is how much its hidden state changes between two consecutive LLM layers; at each stage
the tokens that vary least ("lazy" tokens) are dropped. As the official code (``V2DropLlamaModel.forward``): at a
stage layer l the variation is ``||h_l - h_(l-1)||_2`` per visual token, ``h_l`` the input of decoder layer l
(already pruned) and ``h_(l-1)`` the input of layer l - 1, top-k kept in order, original positions kept.
No attention is read, so nothing here recomputes q/k (FlashAttention/SDPA friendly, the paper's point).

Stages: before layers 3, 17 and 22 of 32 (official LLaVA-1.5 code and paper). The paper's budgets (§ experimental
setup, quoted in xuyang-liu16/V2Drop issue #6): 192 tokens = drop 50 %, 70 %, 100 % of the current visual tokens at
layers 3/17/22; 128 = 72 %, 75 %, 100 %; 64 = 95 %, 95 %, 100 %; each stage keeps ``max(1, int(n * keep_ratio))``
as the official code (so "100 %" keeps one token). ``keep`` is the AVERAGE count per image over the LLM's layers;
:func:`schedule` uses the paper's ratios for 64/128/192 on 576 tokens and 32 layers, and otherwise one shared keep
ratio for every stage but the last (which keeps ``final_keep``), solved so that the average is ``keep``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..llm_stage import LLMStage, StageInputs
from ..ops import gather_rows
from ..registry import register_method
from . import layer_schedule as ls

PAPER_FRACTIONS = (3 / 32, 17 / 32, 22 / 32)  # official target_layer_indices {3, 17, 22} on 32 layers
# keep ratios of the current visual tokens per stage, paper budgets on LLaVA-1.5-7B (576 tokens, 32 layers)
PAPER_KEEP_RATIOS = {192: (0.5, 0.3, 0.0), 128: (0.28, 0.25, 0.0), 64: (0.05, 0.05, 0.0)}
PAPER_TOKENS, PAPER_LAYERS = 576, 32


@dataclass
class V2DropConfig:
    """Options of V2Drop.

    layer_fractions: stage layers as fractions of the LLM depth (``round(f * num_layers)``, clamped to
        [1, num_layers - 1]; stages landing on one layer merge): the paper's 3/17/22 of 32.
    keep_ratios: optional fixed keep ratio of the CURRENT visual tokens per stage (official ``keep_ratio``:
        count = max(1, int(count * ratio))); None: derived from ``keep`` (:func:`schedule`).
    final_keep: tokens per image the last stage keeps when ``keep_ratios`` is None (official: 100 % dropped,
        i.e. max(1, 0) = 1).
    keep_means: "average" = ``keep`` is the layer-averaged count (paper; unreachable budgets are errors); "last" =
        ``keep`` tokens per image survive the last stage, earlier stages keep ``n * r**i`` with
        r = (keep / n) ** (1 / stages); "auto" = "average" where the stages can reach it, else "last".
    metric: "l2" = ||h_l - h_(l-1)|| (official); "cosine" = 1 - cos(h_l, h_(l-1)).
    n_tokens: visual tokens per image the schedule is built for; None: the model's (LLaVA-1.5: 576).
    """

    layer_fractions: tuple[float, ...] = PAPER_FRACTIONS
    keep_ratios: tuple[float, ...] | None = None
    final_keep: int = 1
    keep_means: Literal["auto", "average", "last"] = "auto"
    metric: Literal["l2", "cosine"] = "l2"
    n_tokens: int | None = None

    def __post_init__(self) -> None:
        fr = self.layer_fractions = tuple(float(f) for f in self.layer_fractions)
        if not fr or any(not 0.0 < f < 1.0 for f in fr) or any(b <= a for a, b in zip(fr, fr[1:])):
            raise ValueError(f"layer_fractions must be strictly increasing fractions in (0, 1), got {fr}")
        if self.keep_ratios is not None:
            self.keep_ratios = tuple(float(r) for r in self.keep_ratios)
            if len(self.keep_ratios) != len(fr) or any(not 0.0 <= r <= 1.0 for r in self.keep_ratios):
                raise ValueError(f"keep_ratios needs {len(fr)} ratios in [0, 1] (one per stage), got {self.keep_ratios}")
        if not isinstance(self.final_keep, int) or self.final_keep < 1:
            raise ValueError(f"final_keep must be a positive int (tokens per image), got {self.final_keep!r}")
        if self.keep_means not in ("auto", "average", "last"):
            raise ValueError(f"keep_means must be 'auto', 'average' or 'last', got {self.keep_means!r}")
        if self.metric not in ("l2", "cosine"):
            raise ValueError(f"metric must be 'l2' or 'cosine', got {self.metric!r}")
        if self.n_tokens is not None and (not isinstance(self.n_tokens, int) or self.n_tokens < 1):
            raise ValueError(f"n_tokens must be a positive int (visual tokens per image), got {self.n_tokens!r}")


# -- the budget -> schedule mapping ---------------------------------------------------------------------------
def official_counts(n: int, ratios: tuple[float, ...]) -> list[int]:
    """The official per-stage counts: ``k = max(1, int(k_prev * keep_ratio))`` starting from ``n``."""
    counts, current = [], n
    for r in ratios:
        current = max(1, int(current * r))
        counts.append(current)
    return counts


def merge_stages(layers: list[int], counts: list[int]) -> tuple[list[int], list[int]]:
    """Stages that land on one layer (shallow LLMs) drop together: that layer keeps the last of their counts."""
    out: dict[int, int] = {}
    for l, c in zip(layers, counts):
        out[l] = c
    return list(out), list(out.values())


def _shared_ratio_average(r: float, layers: list[int], n: int, num_layers: int, final: int) -> float:
    exact = [n * r ** (i + 1) for i in range(len(layers) - 1)] + [final]
    lengths = ls.segments(layers, num_layers)
    return (layers[0] * n + sum(s * c for s, c in zip(lengths, exact))) / num_layers


def schedule(keep: int, n: int, num_layers: int, cfg: V2DropConfig) -> tuple[list[int], list[int]]:
    """Map the budget to ``(layers, counts)``: ``counts[i]`` tokens per image from decoder layer ``layers[i]``.

    ``keep_ratios`` given: the official counts. Paper budgets (64/128/192 of 576 tokens, 32 layers, paper layers):
    the paper's ratios (averages 66.7/131.0/193.8: 28/1/1, 161/40/1, 288/86/1). Otherwise ("average") every stage
    but the last keeps ``n * r**i`` with one ratio ``r`` and the last keeps ``final_keep``, ``r`` solved and the
    counts fitted (:func:`layer_schedule.fit_counts`) so that the layer average is ``keep`` where the segment
    lengths allow; with a single stage (2-layer LLMs) its count is the budget's. "last": ``counts[-1] == keep``;
    "auto": "average" between the least and the most average the stages reach, else "last".
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    raw = ls.scaled_layers(cfg.layer_fractions, num_layers)
    if cfg.keep_ratios is not None:
        return merge_stages(raw, official_counts(n, cfg.keep_ratios))
    paper = (n, num_layers, cfg.layer_fractions) == (PAPER_TOKENS, PAPER_LAYERS, PAPER_FRACTIONS)
    if paper and cfg.keep_means != "last" and keep in PAPER_KEEP_RATIOS and cfg.final_keep == 1:
        return merge_stages(raw, official_counts(n, PAPER_KEEP_RATIOS[keep]))
    layers = ls.distinct(raw)
    if keep >= n:
        return layers, [n] * len(layers)
    final = min(cfg.final_keep, keep)
    least = ls.layer_average(layers, [1] * (len(layers) - 1) + [final], n, num_layers)
    most = ls.layer_average(layers, [n] * (len(layers) - 1) + [final], n, num_layers) if len(layers) > 1 else n
    mode = cfg.keep_means
    if mode == "auto":
        mode = "average" if least <= keep <= most else "last"
        if mode == "last":
            ls.warn_counts_after_last("V2Drop", keep, n, num_layers)
    if mode == "last":
        r = (keep / n) ** (1 / len(layers))
        return layers, [max(keep, int(n * r ** (i + 1))) for i in range(len(layers) - 1)] + [keep]
    ls.check_reachable("V2Drop", keep, least, n, num_layers)
    if keep > most:
        raise ValueError(
            f"V2Drop: keep={keep} is above the most its stages reach while the last keeps final_keep={final} token(s) "
            f"per image ({most:.1f} on {num_layers} layers, {n} tokens): raise final_keep, or give keep_ratios"
        )
    total, lengths = keep * num_layers - layers[0] * n, ls.segments(layers, num_layers)
    if len(layers) == 1:
        return layers, [max(1, min(n, total // lengths[0]))]
    r = ls.solve(lambda x: _shared_ratio_average(x, layers, n, num_layers, final), keep)
    exact = [n * r ** (i + 1) for i in range(len(layers) - 1)]
    head = ls.fit_counts(exact, lengths[:-1], total - lengths[-1] * final, n)
    return layers, head + [min(final, head[-1])]


# -- stages -------------------------------------------------------------------------------------------------------
def variation(current: torch.Tensor, previous: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    """Token-wise variation between two consecutive layers' states (B, n, D) -> (B, n), higher = kept.

    "l2": ``||current - previous||_2`` (official ``torch.norm(current - prev, p=2, dim=-1)``); "cosine":
    ``1 - cos(current, previous)``. Computed in float32."""
    cur, prev = current.float(), previous.float()
    if metric == "cosine":
        return 1.0 - F.cosine_similarity(cur, prev, dim=-1)
    return torch.linalg.vector_norm(cur - prev, ord=2, dim=-1)


def _stage(layer: int, count: int, metric: str) -> LLMStage:
    def remember(inputs: StageInputs):
        """At layer l - 1: keep the visual tokens' states (its input), to compare at layer l."""
        prev = gather_rows(inputs.hidden, inputs.image_pos)
        return prev.new_zeros(prev.shape[:2]), prev

    def rank(inputs: StageInputs) -> torch.Tensor:
        return variation(gather_rows(inputs.hidden, inputs.image_pos), inputs.aux, metric)

    return LLMStage(layer=layer, keep=count, score=remember, score_layer=layer - 1, select=rank)


def plan(keep: int, num_layers: int, cfg: V2DropConfig, tokens_per_image: int | None = None) -> list[LLMStage]:
    """One stage per distinct stage layer; its states are read at the layer before (no other stage drops between)."""
    n = cfg.n_tokens or tokens_per_image
    if n is None:
        raise ValueError("V2Drop's schedule is relative to the visual tokens per image: pass n_tokens=...")
    layers, counts = schedule(keep, n, num_layers, cfg)
    return [_stage(l, c, cfg.metric) for l, c in zip(layers, counts)]


register_method(
    "v2drop", config=V2DropConfig, paper="V2Drop (CVPR 2026)", plan=plan,
    kept="keep is the layer-averaged count; every token up to the first stage, then the tokens whose hidden state "
         "varies most between consecutive layers; indices = the patches whose tokens survive the last stage",
)
