"""PyramidDrop (Xing et al., CVPR 2025, "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid
Visual Redundancy Reduction").

The LLM is cut into stages; at the end of each stage the visual tokens are ranked by the attention the LAST
INSTRUCTION TOKEN pays them and only ``lambda`` of them go on, so stage s keeps ``n * lambda**s`` tokens
(official: after layers 8, 16, 24 of 32 with ratios 0.5/0.25/0.125 of the image's tokens). As the
official ``pdrop_rank_drop``: the score of a stage is recomputed with the NEXT layer's ``input_layernorm``,
``q_proj``/``k_proj`` and RoPE on that layer's input (``score_layer == layer``), softmax over every visible key,
head mean, the image's key columns; top-k, kept in order.

Budget: ``keep`` is the AVERAGE number of visual tokens per image over the LLM's layers (PyramidDrop Table 2,
DeSAP Table 1, ``sum(token_i) / layer_num``); ``lambda`` is solved so that the schedule's average is ``keep``
(:func:`schedule`). keep=270 on 576 tokens and 32 layers is the official default (lambda = 0.5: 288/144/72).
Budgets the default stages cannot reach (below n/4: the first 8 layers see every token) use the stages the
authors recommend for them, layers 2/8/16 (Cooperx521/PyramidDrop issue #29, lambda = 0.19 for 64 tokens).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..llm_stage import LLMStage, StageInputs
from ..registry import register_method
from . import layer_schedule as ls
from .fastv import last_token_scores

PAPER_FRACTIONS = (8 / 32, 16 / 32, 24 / 32)  # official --layer_list [8,16,24] on 32 layers
LOW_BUDGET_FRACTIONS = (2 / 32, 8 / 32, 16 / 32)  # the authors' advice for low budgets (issue #29)


@dataclass
class PDropConfig:
    """Options of PyramidDrop.

    layer_fractions: where the stages end, as fractions of the LLM depth (a stage drops right before decoder layer
        ``round(f * num_layers)``, clamped to [1, num_layers - 1]; stages landing on one layer merge). None: the
        paper's 8/16/24 of 32, or 2/8/16 of 32 when the budget is below what 8/16/24 can reach.
    keep_means: "average" = ``keep`` is the layer-averaged count (papers; lambda solved; an unreachable budget is
        an error); "last" = ``keep`` tokens per image survive the last stage, lambda = (keep / n) ** (1 / stages);
        "auto" = "average" where the stages can reach it, else "last" (shallow LLMs: a 2-layer LLM cannot average
        below (n + 1) / 2; large ``n`` with a small ``keep``).
    positions: "original" = kept tokens keep their positions (works on every family); "official" = as the
        official code, the sequence is renumbered 0..L'-1 after each stage (one image per sample, 1-D RoPE).
    n_tokens: visual tokens per image the schedule is built for; None: the model's (LLaVA-1.5: 576). Set it on
        models whose image size varies (Qwen2.5-VL, LLaVA-NeXT): rows with fewer tokens keep min(count, stage).
    """

    layer_fractions: tuple[float, ...] | None = None
    keep_means: Literal["auto", "average", "last"] = "auto"
    positions: Literal["original", "official"] = "original"
    n_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.layer_fractions is not None:
            fr = self.layer_fractions = tuple(float(f) for f in self.layer_fractions)
            if not fr or any(not 0.0 < f < 1.0 for f in fr) or any(b <= a for a, b in zip(fr, fr[1:])):
                raise ValueError(f"layer_fractions must be strictly increasing fractions in (0, 1), got {fr}")
        if self.keep_means not in ("auto", "average", "last"):
            raise ValueError(f"keep_means must be 'auto', 'average' or 'last', got {self.keep_means!r}")
        if self.positions not in ("original", "official"):
            raise ValueError(f"positions must be 'original' or 'official', got {self.positions!r}")
        if self.n_tokens is not None and (not isinstance(self.n_tokens, int) or self.n_tokens < 1):
            raise ValueError(f"n_tokens must be a positive int (visual tokens per image), got {self.n_tokens!r}")


# -- the budget -> schedule mapping ---------------------------------------------------------------------------
def pyramid_average(lam: float, layers: list[int], n: int, num_layers: int) -> float:
    """Layer-averaged tokens of the pyramid ``n, n*lam, n*lam**2, ...`` (continuous counts)."""
    lengths = ls.segments(layers, num_layers)
    return (layers[0] * n + sum(s * n * lam ** (i + 1) for i, s in enumerate(lengths))) / num_layers


def _least(layers: list[int], n: int, num_layers: int) -> float:
    return ls.layer_average(layers, [1] * len(layers), n, num_layers)


def stage_layers(keep: int, n: int, num_layers: int, cfg: PDropConfig) -> tuple[list[int], str]:
    """The distinct stage layers and what ``keep`` means there ("average" or "last").

    Layers: ``cfg.layer_fractions``, or 8/16/24 of 32, or 2/8/16 of 32 for layer-averaged budgets below the reach
    of 8/16/24. ``keep_means="auto"``: "average" when some schedule on these layers reaches ``keep``, else "last".
    """
    mode = cfg.keep_means
    if cfg.layer_fractions is not None:
        layers = ls.distinct(ls.scaled_layers(cfg.layer_fractions, num_layers))
    else:
        layers = ls.distinct(ls.scaled_layers(PAPER_FRACTIONS, num_layers))
        if mode != "last" and keep < n and keep < _least(layers, n, num_layers):
            low = ls.distinct(ls.scaled_layers(LOW_BUDGET_FRACTIONS, num_layers))
            if mode == "average" or keep >= _least(low, n, num_layers):
                layers = low
    if mode == "auto":
        mode = "average" if keep >= _least(layers, n, num_layers) else "last"
        if mode == "last" and keep < n:
            ls.warn_counts_after_last("PyramidDrop", keep, n, num_layers)
    return layers, mode


def schedule(keep: int, n: int, num_layers: int, cfg: PDropConfig) -> tuple[list[int], list[int], float]:
    """Map the budget to ``(layers, counts, lam)``: ``counts[i]`` tokens per image from decoder layer ``layers[i]``.

    "average": ``lam`` solves ``pyramid_average(lam) == keep``; the counts ``n * lam**(i+1)`` are made integers
    (:func:`layer_schedule.fit_counts`) so that ``layer_average == keep`` whenever the segment lengths allow
    (always with 8/16/24 of 32: 8-layer segments). Examples on 576 tokens, 32 layers: 270 -> lam 0.5, 288/144/72
    (official default); 192 -> layers 8/16/24, 146/37/9; 128 -> layers 2/8/16, 240/102/43; 64 -> layers 2/8/16,
    112/20/4 (lam 0.19, issue #29). "last": ``lam = (keep / n) ** (1 / stages)``, ``counts[-1] == keep``.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    layers, mode = stage_layers(keep, n, num_layers, cfg)
    if keep >= n:
        return layers, [n] * len(layers), 1.0
    if mode == "last":
        lam = (keep / n) ** (1 / len(layers))
        counts = [max(keep, int(n * lam ** (i + 1))) for i in range(len(layers) - 1)] + [keep]
        return layers, counts, lam
    ls.check_reachable("PyramidDrop", keep, _least(layers, n, num_layers), n, num_layers)
    lam = ls.solve(lambda x: pyramid_average(x, layers, n, num_layers), keep)
    exact = [n * lam ** (i + 1) for i in range(len(layers))]
    counts = ls.fit_counts(exact, ls.segments(layers, num_layers), keep * num_layers - layers[0] * n, n)
    return layers, counts, lam


# -- stages -------------------------------------------------------------------------------------------------------
def instruction_scores(inputs: StageInputs) -> torch.Tensor:
    """The official ``pdrop_rank_drop`` score (inference): attention of the last instruction token (the last prompt
    token) to each surviving visual token, this layer's q/k with RoPE, softmax over every visible key, head mean:
    (B, n_img)."""
    return last_token_scores(inputs)


def in_order(inputs: StageInputs, kept: torch.Tensor) -> torch.Tensor:
    """Official positions: the kept visual tokens stay in their order when the sequence is renumbered."""
    return torch.arange(kept.shape[1], device=kept.device).expand_as(kept)


def plan(keep: int, num_layers: int, cfg: PDropConfig, tokens_per_image: int | None = None) -> list[LLMStage]:
    """One stage per distinct stage layer, scored at that layer (the official code's ``layers[rank_layer]``)."""
    n = cfg.n_tokens or tokens_per_image
    if n is None:
        raise ValueError("PyramidDrop's schedule is relative to the visual tokens per image: pass n_tokens=...")
    layers, counts, _ = schedule(keep, n, num_layers, cfg)
    renumber = in_order if cfg.positions == "official" else None
    return [LLMStage(layer=l, keep=c, score=instruction_scores, renumber=renumber) for l, c in zip(layers, counts)]


register_method(
    "pdrop", config=PDropConfig, paper="PyramidDrop (CVPR 2025)", plan=plan,
    kept="keep is the layer-averaged count; every token up to the first stage, then fewer after each stage; "
         "indices = the patches whose tokens survive the last stage",
)
