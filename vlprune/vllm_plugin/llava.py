"""LLaVA-1.5 in vLLM with encoder-side pruning: K placeholder tokens per image, K pruned embeddings.

The processing info makes vLLM's prompt renderer write ``keep`` image tokens per ``<image>`` (instead of N), so
the KV cache, scheduler and positions only ever see the pruned prompt. The model runs the transformers CLIP
vision tower (all its blocks, as ``LlavaForConditionalGeneration`` does, so every signal vlprune's methods read
is there) and hands vlprune's own selection to the projector: the embeddings equal those of ``vlprune.apply``
on the transformers model with the same weights.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel
from vllm.config import VllmConfig
from vllm.model_executor.models.llava import (
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaImagePixelInputs,
    LlavaMultiModalProcessor,
    LlavaProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from ..methods.base import Selection
from ..models.clip_signals import ClipVisionSignals, check_llava_feature_config
from ..registry import get_method
from .settings import PruneSettings, settings_of

ARCH = "VlpruneLlavaForConditionalGeneration"
# hub checkpoints name the tower's weights ``[model.]vision_tower.vision_model.*``; transformers 5's
# ``CLIPVisionModel`` holds them one level up (``vision_tower.*``)
_TOWER_PREFIX = re.compile(r"^((?:model\.)?vision_tower\.)vision_model\.")


class VlpruneLlavaProcessingInfo(LlavaProcessingInfo):
    """LLaVA-1.5's processing info with ``keep`` tokens per image when a method prunes."""

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        n = super().get_num_image_tokens(image_width=image_width, image_height=image_height)
        return settings_of(self.get_hf_config()).tokens(n)


@MULTIMODAL_REGISTRY.register_processor(
    LlavaMultiModalProcessor, info=VlpruneLlavaProcessingInfo, dummy_inputs=LlavaDummyInputsBuilder
)
class VlpruneLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """vLLM's LLaVA-1.5 whose image embeddings are pruned by a vlprune method (config key ``vlprune``)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        config = self.config
        self.prune: PruneSettings = settings_of(config)
        if not self.prune.prunes:
            return  # "none"/"full": vLLM's own LLaVA, unchanged
        if not isinstance(config.vision_config, CLIPVisionConfig):
            raise NotImplementedError(
                f"vlprune's vLLM plugin prunes CLIP towers (LLaVA-1.5); this model has "
                f"{type(config.vision_config).__name__}"
            )
        check_llava_feature_config(config, "LLaVA-1.5")
        vc = config.vision_config
        self.side = vc.image_size // vc.patch_size
        self.prune.check(self.side * self.side)
        self.method = get_method(self.prune.method)
        self.method_config = self.prune.config()
        with self._mark_tower_model(vllm_config, "image"):
            # the full transformers tower (vLLM's stops at the feature layer): same parameter names as the
            # checkpoint's ``model.vision_tower.*``, loaded by vLLM's AutoWeightsLoader
            self.vision_tower = CLIPVisionModel(vc)

    def _process_image_pixels(self, inputs: LlavaImagePixelInputs) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if not self.prune.prunes:
            return super()._process_image_pixels(inputs)
        return self.select(inputs["pixel_values"]).features

    def _process_image_input(self, image_input) -> torch.Tensor | tuple[torch.Tensor, ...]:
        embeds = super()._process_image_input(image_input)
        if self.prune.prunes and isinstance(embeds, torch.Tensor):
            return tuple(embeds)  # one (K, D) tensor per image, as vLLM splits them
        return embeds

    @torch.no_grad()
    def select(self, pixel_values: torch.Tensor) -> Selection:
        """vlprune's selection for a batch of images (B, 3, H, W): features (B, K, D_vision), kept indices."""
        tower = self.vision_tower  # transformers 5: CLIPVisionModel holds embeddings/encoder itself
        dtype = next(tower.parameters()).dtype
        source = ClipVisionSignals(tower, pixel_values.to(dtype), self.config.vision_feature_layer,
                                   grid=(self.side, self.side))
        keep = min(self.prune.keep, self.side * self.side)
        return self.method.encoder(source, keep, self.method_config)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        if self.prune.prunes:
            weights = ((_TOWER_PREFIX.sub(r"\1", name), w) for name, w in weights)
        return super().load_weights(weights)
