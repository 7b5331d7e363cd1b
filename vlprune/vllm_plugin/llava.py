"""LLaVA-1.5 in vLLM with encoder-side pruning: K placeholder tokens per image, K pruned embeddings.

The processing info makes vLLM's prompt renderer write ``keep`` image tokens per ``<image>`` (instead of N), so
the KV cache, scheduler and positions only ever see the pruned prompt. The model runs the transformers CLIP
vision tower (all its blocks, as ``LlavaForConditionalGeneration`` does, so every signal vlprune's methods read
is there) and hands vlprune's own selection to the LLM: the embeddings equal those of ``vlprune.apply`` on the
transformers model with the same weights. A request may bring its own settings and, for DeSAP, its question
(``processing.py``).
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
    LlavaMultiModalProcessor,
    LlavaProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from ..methods.base import Selection
from ..models.clip_signals import ClipVisionSignals, check_llava_feature_config
from ..registry import get_method
from ..text import ClipText, QuestionBatch, load_clip_text
from .processing import PruneInfoMixin, PruneProcessorMixin, embed_per_setting, pop_fields
from .settings import NEEDS_CLIP, PruneSettings, check_family, settings_of

ARCH = "VlpruneLlavaForConditionalGeneration"
# hub checkpoints name the tower's weights ``[model.]vision_tower.vision_model.*``; transformers 5's
# ``CLIPVisionModel`` holds them one level up (``vision_tower.*``)
_TOWER_PREFIX = re.compile(r"^((?:model\.)?vision_tower\.)vision_model\.")


class VlpruneLlavaProcessingInfo(PruneInfoMixin, LlavaProcessingInfo):
    """LLaVA-1.5's processing info: ``min(keep, N)`` tokens per image when a method prunes."""

    def keep_limit(self) -> int:
        size = self.get_image_size_with_most_features()
        return self.unpruned_tokens(size.width, size.height)

    def pruned_tokens(self, settings: PruneSettings, width: int, height: int) -> int:
        return settings.tokens(self.unpruned_tokens(width, height))


class VlpruneLlavaMultiModalProcessor(PruneProcessorMixin, LlavaMultiModalProcessor):
    pass


class PrunedClipTower:
    """Model-side parts shared by the plugin's CLIP families: the transformers tower, DeSAP's CLIP text side,
    the signal source and the checkpoint's tower names."""

    prune: PruneSettings
    clip_text: ClipText | None

    def _init_pruning(self, vllm_config: VllmConfig, family: str, name: str) -> bool:
        """Read the settings; when a method prunes, swap in the full transformers tower. False: unpruned."""
        config = self.config
        self.prune = settings_of(config)
        self.clip_text = None
        if not self.prune.prunes:
            return False  # "none"/"full": vLLM's own model, unchanged
        check_family(self.prune, name)
        if not isinstance(config.vision_config, CLIPVisionConfig):
            raise NotImplementedError(f"vlprune's vLLM plugin prunes CLIP towers ({family}); this model has "
                                      f"{type(config.vision_config).__name__}")
        check_llava_feature_config(config, family)
        vc = config.vision_config
        self.side = vc.image_size // vc.patch_size
        with self._mark_tower_model(vllm_config, "image"):
            # the full transformers tower (vLLM's stops at the feature layer): same parameter names as the
            # checkpoint's ``model.vision_tower.*``, loaded by vLLM's AutoWeightsLoader
            self.vision_tower = CLIPVisionModel(vc)
        # DeSAP's text side, loaded as vlprune.apply(..., clip=PATH) loads it; kept out of the module tree (its
        # weights are not the checkpoint's) and moved to the tower's device on first use
        self.clip_text = load_clip_text(self.prune.clip) if self.prune.clip else None
        return True

    def _question_batch(self, settings: PruneSettings, questions: list[str],
                        device: torch.device) -> QuestionBatch | None:
        if not settings.needs_question:
            return None
        clip = self.clip_text
        if clip is None:
            raise ValueError(NEEDS_CLIP)
        if clip.text_projection.weight.device != device:
            for module in (clip.text_model, clip.text_projection, clip.visual_projection):
                module.to(device)
        return QuestionBatch(clip, questions)

    def _signals(self, pixel_values: torch.Tensor, questions: QuestionBatch | None) -> ClipVisionSignals:
        tower = self.vision_tower  # transformers 5: CLIPVisionModel holds embeddings/encoder itself
        dtype = next(tower.parameters()).dtype
        return ClipVisionSignals(tower, pixel_values.to(dtype), self.config.vision_feature_layer,
                                 questions=questions, clip_text=self.clip_text, grid=(self.side, self.side),
                                 projector=self.multi_modal_projector)

    def embed_multimodal(self, **kwargs: object):
        if not self.prune.prunes:
            pop_fields(kwargs)
            return super().embed_multimodal(**kwargs)
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("vlprune_")}
        image_input = self._parse_and_validate_image_input(**kwargs)
        if image_input is None:
            return []
        if image_input["type"] != "pixel_values":  # precomputed image_embeds: handed to the LLM as they are
            return self._process_image_input(image_input)
        return self._embed_pruned(image_input, fields)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        if self.prune.prunes:
            weights = ((_TOWER_PREFIX.sub(r"\1", name), w) for name, w in weights)
        return super().load_weights(weights)


@MULTIMODAL_REGISTRY.register_processor(
    VlpruneLlavaMultiModalProcessor, info=VlpruneLlavaProcessingInfo, dummy_inputs=LlavaDummyInputsBuilder
)
class VlpruneLlavaForConditionalGeneration(PrunedClipTower, LlavaForConditionalGeneration):
    """vLLM's LLaVA-1.5 whose image embeddings are pruned by a vlprune method (config key ``vlprune``)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        if self._init_pruning(vllm_config, "LLaVA-1.5", "llava"):
            self.prune.check(self.side * self.side)

    def _embed_pruned(self, image_input, fields: dict) -> tuple[torch.Tensor, ...]:
        pixel_values = image_input["pixel_values"]
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = torch.stack(list(pixel_values))

        def embed(idx: list[int], settings: PruneSettings, questions: list[str]) -> torch.Tensor:
            return self._embed(pixel_values[idx], settings, questions)

        return embed_per_setting(fields, pixel_values.shape[0], self.prune, embed)

    def _embed(self, pixel_values: torch.Tensor, settings: PruneSettings, questions: list[str]) -> torch.Tensor:
        """The LLM-input embeddings (B, K, D) of images that share ``settings``."""
        if not settings.prunes:  # a request asked for every patch
            return self.multi_modal_projector(self._signals(pixel_values, None).features())
        sel = self.select(pixel_values, settings, questions)
        return sel.features if sel.projected else self.multi_modal_projector(sel.features)

    @torch.no_grad()
    def select(self, pixel_values: torch.Tensor, settings: PruneSettings | None = None,
               questions: list[str] | None = None) -> Selection:
        """vlprune's selection for a batch of images (B, 3, H, W) under ``settings`` (default: the deployment's),
        with one question per image for DeSAP: features (B, K, D), kept indices."""
        settings = settings or self.prune
        if questions is None:
            questions = [""] * pixel_values.shape[0]
        source = self._signals(pixel_values, self._question_batch(settings, questions, pixel_values.device))
        keep = min(settings.keep, self.side * self.side)
        return get_method(settings.method).encoder(source, keep, settings.config())
