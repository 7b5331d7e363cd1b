"""What an in-LLM pruning method hands to :class:`~vlprune.llm_pruning.LLMPruner` and what its callbacks see.

A method describes each of its pruning steps as an :class:`LLMStage` (the layer, the budget and the callbacks that
score, select, merge or renumber the visual tokens); the callbacks receive a :class:`StageInputs` (the current,
already pruned, sequence at a decoder layer's input), and methods that read the unpruned prompt get a
:class:`PromptView`. The machinery that gathers hidden states, masks and caches lives in :mod:`vlprune.llm_pruning`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from . import compat
from .attention import decoder_attention_logits, decoder_attention_probs, mask_logits

__all__ = ["LLMStage", "PromptView", "StageInputs"]

@dataclass
class PromptView:
    """The prompt at the input of decoder layer 0, for the rows of a stage's group (methods that read the
    unpruned prompt, e.g. SparseVLM's text raters). Columns are the original prompt positions."""

    hidden: torch.Tensor  # (B, L0, D)
    is_img: torch.Tensor  # (B, L0) bool: visual tokens
    pad: torch.Tensor  # (B, L0) bool: padding


@dataclass
class StageInputs:
    """What a stage's callbacks see, at the input of a decoder layer (current, already pruned, sequence).

    ``score`` sees the input of its score layer; ``select`` and ``merge`` the input of the drop layer (when the
    two differ, no other stage drops in between, so slot indices agree). The callbacks of a stage run once per
    group of rows with the same number of surviving visual tokens and images (one call for a uniform batch);
    every tensor here holds those rows only. ``keep`` is the number of visual tokens the stage keeps for each of
    them (stage.keep x n_images, less than the current count); ``scores`` and ``aux`` carry what ``score`` (then
    ``select``) returned to the later callbacks of the same stage.
    """

    layer: nn.Module
    hidden: torch.Tensor  # (B, L_cur, D)
    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor | None
    image_pos: torch.Tensor  # (B, n_img) positions of the surviving visual tokens in the current sequence
    rope: Callable
    n_images: int = 1
    keep: int = 0
    scores: torch.Tensor | None = None
    aux: Any = None
    positions: torch.Tensor | None = None  # (B, L_cur) renumbered positions after a ``renumber`` stage, else None
    budget: int = 0  # the stage's budget for these rows (keep x images); ``keep`` adds the stage's ``extra`` tokens
    prompt: PromptView | None = None  # the input of decoder layer 0 (the prompt as the LLM received it)
    columns: torch.Tensor | None = None  # (B, L_cur) the prompt position of each current column (ascending)

    def attention(self, query_pos: torch.Tensor) -> torch.Tensor:
        """Recomputed attention probabilities (B, H, q, L_cur) of this layer for the given queries."""
        return decoder_attention_probs(self.layer, self.hidden, self.cos, self.sin, self.mask, query_pos, self.rope)

    def logits(self, query_pos: torch.Tensor, masked: bool = True) -> torch.Tensor:
        """Recomputed pre-softmax logits (B, H, q, L_cur), float32; ``masked``: the layer's mask applied (-inf)."""
        out = decoder_attention_logits(self.layer, self.hidden, self.cos, self.sin, query_pos, self.rope)
        return mask_logits(out, self.mask, query_pos) if masked else out

    def rotary_rows(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary tables (cos, sin) at rows ``pos`` (B, n) of the current sequence (``compat.table_rows``)."""
        return compat.table_rows(self.cos, pos), compat.table_rows(self.sin, pos)

    @property
    def last_pos(self) -> torch.Tensor:
        return torch.full((self.hidden.shape[0], 1), self.hidden.shape[1] - 1, device=self.hidden.device)


@dataclass
class LLMStage:
    """One pruning step inside the LLM.

    layer: visual tokens are dropped right before this decoder layer (its input and cache are shorter).
    keep: visual tokens that survive per image (per sample: keep x number of images).
    score: StageInputs -> (B, n_img) importance of each surviving visual token (higher is kept), or a pair
        ``(scores, aux)``; ``aux`` (anything) reaches ``select``/``merge`` as ``inputs.aux``.
    score_layer: the layer whose input feeds ``score`` (FastV: layer - 1; default: ``layer``). It must not lie
        before the previous stage's layer.
    select: optional, called at the drop layer with ``inputs.scores``/``inputs.aux`` from ``score``: returns the
        final ranking (B, n_img), or ``(ranking, aux)`` (ASAP re-ranks after consolidating the top-k).
    merge: optional (StageInputs, kept_slots (B, k), dropped_slots (B, n-k)) -> new hidden states (B, k, D)
        of the kept visual tokens, for methods that fold dropped tokens into kept ones.
    The top ``keep`` slots of the ranking are kept (stable: ties go to the earlier token). A stage whose
    ``keep`` covers every surviving visual token does nothing (no scoring, no merging).
    renumber: optional (StageInputs, kept_slots (B, k)) -> (B, k) rank of each kept visual token in a new order;
        after the drop every token takes positions 0..L'-1 (text in place, the visual run in that order) with a
        mask causal in that order (official VisionDrop; one image per sample, 1-D RoPE; vlprune/positions.py).
    compact: after the drop every token takes positions 0..L'-1 in sequence order (FlowCut's official LLaVA-NeXT
        cut); unlike ``renumber`` it runs any batch (rows keeping different counts, several images per sample).
    Without ``renumber``, hidden states, positions, rotary tables and masks of the kept tokens are gathered.
    extra: optional (count, budget) -> tokens kept beyond the budget by a group whose rows hold ``count`` visual
        tokens and keep ``budget`` of them (SparseVLM's recycled tokens, which take the slots of pruned tokens);
        ``inputs.keep`` is then budget + extra (at most ``count``) and ``inputs.budget`` the budget. Only when the
        budget prunes (budget < count): a stage whose budget covers every token still does nothing.
    adaptive: the stage decides per row how many visual tokens it keeps (SparseVLM v1's rank rule): ``keep`` is
        unused, every row with visual tokens is scored, ``inputs.keep`` = ``inputs.budget`` = its count, and the
        ranking marks the tokens to drop with ``-inf`` (rows of a group may keep different numbers; ``merge`` sees
        as kept the top slots up to the largest count, ``renumber`` needs equal counts in the group).
    """

    layer: int
    keep: int
    score: Callable[[StageInputs], Any]
    score_layer: int | None = None
    merge: Callable[[StageInputs, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    select: Callable[[StageInputs], Any] | None = None
    renumber: Callable[[StageInputs, torch.Tensor], torch.Tensor] | None = None
    compact: bool = False
    extra: Callable[[int, int], int] | None = None
    adaptive: bool = False

    @property
    def scored_at(self) -> int:
        return self.layer if self.score_layer is None else self.score_layer
