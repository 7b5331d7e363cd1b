"""What every model-family adapter provides to the pruning runtime."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from .. import compat
from ..ops import visual_mask


@dataclass
class PrunedImages:
    """Encoder-side result for all images of a batch, in prompt order."""

    features: list[torch.Tensor]  # per image (K_i, D_llm), already projected into the LLM space
    tokens_per_image: list[int]  # placeholders each image had before pruning
    indices: list[torch.Tensor]  # per image, kept patch indices on its grid
    assign: list[torch.Tensor | None]  # per image, merge target of every patch (or None)
    grids: list[tuple[int, int]]
    # per item, the LLM tokens in-LLM stages may prune (None: every placeholder, ``features[i].shape[0]``);
    # Video-LLaVA's frame [CLS] tokens are placeholders that no method prunes
    llm_tokens: list[int] | None = None


class Adapter:
    """Base class: one subclass per model family, matched by class name (tomesd's ``isinstance_str``)."""

    class_names: ClassVar[tuple[str, ...]] = ()
    family: ClassVar[str] = ""
    options: ClassVar[tuple[str, ...]] = ()  # keyword options the adapter takes (``vlprune.apply(adapter_options=)``)
    takes_videos: ClassVar[bool] = False  # the family prunes videos too (``video_token_id`` placeholders)

    def __init__(self, model: nn.Module, **options: Any) -> None:
        if options:
            raise TypeError(f"the {self.family or type(self).__name__} adapter takes no options, got {sorted(options)}")
        self.model = model

    def observe(self, call: dict[str, Any]) -> None:
        """Sees the bound arguments of every patched forward/generate call first (e.g. image sizes); default: no-op."""

    def finish_call(
        self, original: dict[str, Any], call: dict[str, Any], cols: torch.Tensor, valid: torch.Tensor
    ) -> dict[str, Any]:
        """Last edit of a shrunk call (``cols``/``valid`` from ``splice.shrink_prompt``); default: unchanged."""
        return call

    def llm_layout(self) -> list[tuple[int, tuple[int, int], torch.Tensor | None]] | None:
        """Per image of the last observed call (prompt order): (LLM tokens, grid, LLM position -> patch index or
        None for identity). None: every image has ``tokens_per_image()`` tokens on a square grid."""
        return None

    def question_encoder(self, tokenizer: Any) -> Any:
        """DeSAP's text side when no CLIP is given (an object with ``encode(questions)``), or None if a CLIP is needed."""
        return None

    # -- prompt layout -------------------------------------------------------------------------------------
    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @property
    def video_token_id(self) -> int:
        return int(self.model.config.video_token_id)

    @property
    def visual_token_ids(self) -> tuple[int, ...]:
        """Placeholder ids of every visual input the family takes (images; videos where it has them)."""
        return (self.image_token_id, self.video_token_id) if self.takes_videos else (self.image_token_id,)

    @property
    def per_item_budget(self) -> bool:
        """``keep`` counts per image / per video (not per tile or per frame): what in-LLM stages can honour."""
        return getattr(self, "budget", "global") == "global"

    def has_visual_inputs(self, call: dict[str, Any]) -> bool:
        """The call carries pixels for the encoder step."""
        return call.get("pixel_values") is not None

    def llm_visual_mask(self, input_ids: torch.Tensor, after_encoder: bool = False) -> torch.Tensor:
        """(B, L) bool: the visual tokens in-LLM stages rank and drop (``after_encoder``: ``input_ids`` is the prompt
        the encoder step shrank). Default: every placeholder."""
        return visual_mask(input_ids, self.visual_token_ids)

    def give_features(self, call: dict[str, Any], result: PrunedImages, per_sample: list[int]) -> dict[str, Any]:
        """Hand the pruned features to the model (``compat.give_image_features``)."""
        return compat.give_image_features(self.model, call, result.features, per_sample)

    def tokens_per_image(self) -> int:
        """Visual tokens of one image (LLaVA-1.5) or one tile (LLaVA-NeXT): the range of ``keep``."""
        raise NotImplementedError

    def repeat_samples(self, per_sample: list[int], r: int) -> None:
        """``generate()`` repeated every prompt row ``r`` times (beams, returned sequences): repeat the per-image
        layout seen on the prompt to match. Default: nothing to repeat (every image has the same tokens)."""

    def images_per_sample(self, input_ids: torch.Tensor, tokens_per_image: list[int] | None = None) -> list[int]:
        counts = visual_mask(input_ids, self.visual_token_ids).sum(-1).tolist()
        n = self.tokens_per_image()
        return [c // n for c in counts]

    # -- encoder side --------------------------------------------------------------------------------------
    def prune_images(self, kwargs: dict[str, Any], run: Any) -> PrunedImages:
        raise NotImplementedError

    # -- LLM side ------------------------------------------------------------------------------------------
    def llm_layers(self) -> nn.ModuleList:
        return self.model.model.language_model.layers

    def rope(self) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        """``rope(x, cos, sin)`` for x (B, H, L, d) with the LLM's own ``apply_rotary_pos_emb``."""
        return compat.rope_function(self.llm_layers()[0].self_attn)
