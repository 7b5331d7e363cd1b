"""Types shared by all methods: what a selection returns and the signals a method may ask for."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class Selection:
    """Result of an encoder-side selection for a batch of B images.

    ``features`` (B, K, D) are the vision features handed to the projector, in the order the LLM sees them.
    ``indices`` (B, K_p) are the patch positions (raster order on the grid) that kept tokens stand for.
    (A list of B tensors where images keep different numbers of patches: HoloV's zero tokens stand for none.)
    ``assign`` (B, N), optional: for merging methods, the kept token (0..K-1) each patch was merged into,
    -1 for patches that were dropped without merging.
    ``projected``: ``features`` are already in the LLM's input space (the adapter skips its projector).
    ``extras["unindexed_last"]``: the rows past an image's indices stand for no patch (HoloV's zero tokens).
    """

    features: torch.Tensor
    indices: torch.Tensor | list[torch.Tensor]
    assign: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)
    projected: bool = False


class SignalSource(Protocol):
    """Lazily computed signals of one vision forward pass; provided by a model adapter.

    Every tensor is batched over images (B). N is the number of patch tokens (no [CLS]).
    Qwen2.5-VL's source also has ``family = "qwen2_5_vl"`` and ``window_order()`` (the raster token at each position
    of the ViT's window order), for HoloV's family rules.
    """

    grid: tuple[int, int]

    def features(self) -> torch.Tensor:  # (B, N, D): features the LLaVA projector consumes
        ...

    def cls_attention(self) -> torch.Tensor:  # (B, N): head-mean [CLS]->patch attention (feature layer)
        ...

    def last_cls_attention(self) -> torch.Tensor:  # (B, N): the same from the tower's LAST block (LLaVA: the
        ...  # block after the feature layer, whose input is hidden_states[-2]; Qwen: the scoring block)

    def projected_features(self) -> torch.Tensor:  # (B, N, D_llm): ``features`` through the model's projector
        ...

    def keys(self) -> torch.Tensor:  # (B, N, Dk): keys of the feature layer's attention
        ...

    def cls_feature(self) -> torch.Tensor | None:  # (B, D): the [CLS] row of the feature layer, if any
        ...

    def decoupled(self, mode: str) -> torch.Tensor:  # (B, 1+N, e): DeSAP eq. 2 in the joint space
        ...

    def image_keys(self) -> list[int]:  # a stable integer per image (hash of its pixels), for seeded methods
        ...

    def question(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token CLIP text embeddings (B, T, e), their mask (B, T), and the EOS embedding (B, e)."""
        ...

    def has_question(self) -> bool:  # any image of the batch has a question; known on the host (no device sync)
        ...


def check_keep(keep: int, n: int, *, minimum: int = 1) -> None:
    """Raise a clear error for a budget that cannot be honoured."""
    if not isinstance(keep, int) or isinstance(keep, bool):
        raise TypeError(f"keep must be an int (number of visual tokens), got {keep!r}")
    if keep < minimum or keep > n:
        raise ValueError(
            f"keep={keep} is out of range: this model has {n} visual tokens per image, "
            f"so choose {minimum} <= keep <= {n}"
        )
