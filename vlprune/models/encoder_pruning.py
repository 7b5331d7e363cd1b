"""Pruning INSIDE a ViT: run its blocks one by one and let a method drop rows between them (FlowCut).

Generic over towers whose blocks are called as ``block(hidden, None)`` on (B, L, D) rows (CLIP's encoder layers, as
``ClipVisionSignals`` runs them). The method sees every block's input and output and returns the rows of the output
that go on to the next block, or None to keep them all.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..ops import gather_rows

# step(i, block, block_input, block_output) -> rows (B, L') of block_output to keep (ascending), or None
PruneStep = Callable[[int, nn.Module, torch.Tensor, torch.Tensor], Optional[torch.Tensor]]


def run_blocks_pruned(hidden: torch.Tensor, blocks: Sequence[nn.Module], step: PruneStep) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``blocks`` on ``hidden`` (B, L, D), gathering after block i the rows ``step`` returns.

    Returns the last block's output (B, L', D) and, per surviving row, its position in ``hidden`` (B, L') -- rows
    the steps never drop keep their order, so a step that returns ascending rows keeps raster order.
    """
    b, n = hidden.shape[:2]
    origin = torch.arange(n, device=hidden.device).expand(b, n)
    for i, block in enumerate(blocks):
        out = block(hidden, None)
        out = out[0] if isinstance(out, tuple) else out
        rows = step(i, block, hidden, out)
        if rows is not None:
            out = gather_rows(out, rows)
            origin = torch.gather(origin, 1, rows)
        hidden = out
    return hidden, origin
