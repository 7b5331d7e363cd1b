"""FastV (Chen et al., ECCV 2024, "An Image is Worth 1/2 Tokens After Layer 2"): after decoder layer K
(default 2), keep the visual tokens that the last prompt token attends to most in layer K-1 (head mean)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..llm_stage import LLMStage, StageInputs
from ..registry import register_method


@dataclass
class FastVConfig:
    """layer: K, the number of decoder layers that see every visual token (paper: 2)."""

    layer: int = 2

    def __post_init__(self) -> None:
        if self.layer < 1:
            raise ValueError(f"FastV layer K must be >= 1, got {self.layer}")


def last_token_scores(inputs: StageInputs) -> torch.Tensor:
    """Head-mean attention of the last prompt token to every surviving visual token: (B, n_img)."""
    probs = inputs.attention(inputs.last_pos).mean(dim=1)[:, 0]  # (B, L_cur)
    return torch.gather(probs, 1, inputs.image_pos)


def plan(keep: int, num_layers: int, cfg: FastVConfig) -> list[LLMStage]:
    """One stage: score with layer K-1's attention, drop before layer K."""
    return [LLMStage(layer=cfg.layer, keep=keep, score=last_token_scores, score_layer=cfg.layer - 1)]


register_method("fastv", config=FastVConfig, paper="FastV (ECCV 2024)", plan=plan)
