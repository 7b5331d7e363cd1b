"""LLaVA-1.5 in vLLM with encoder-side pruning: K placeholder tokens per image, K pruned embeddings.

The processing info makes vLLM's prompt renderer write ``keep`` image tokens per ``<image>`` (instead of N), so
the KV cache, scheduler and positions only ever see the pruned prompt. The model runs the transformers CLIP
vision tower (all its blocks, as ``LlavaForConditionalGeneration`` does, so every signal vlprune's methods read
is there) and hands vlprune's own selection to the projector: the embeddings equal those of ``vlprune.apply``
on the transformers model with the same weights.

What a request adds (``VlpruneLlavaMultiModalProcessor``): its own settings (``mm_processor_kwargs["vlprune"]``)
and, for DeSAP, its question (the prompt's text after the last image, found as ``vlprune.apply`` finds it). Both
enter the request's multimodal processor kwargs, which vLLM folds into each image's hash: the processor cache,
the encoder cache and prefix caching key an image by (pixels, settings, question), never by the pixels alone.
They reach the model as two per-image byte tensors (UTF-8 JSON / text).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel
from vllm.config import VllmConfig
from vllm.model_executor.models.llava import (
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaImageEmbeddingInputs,
    LlavaMultiModalProcessor,
    LlavaProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import ImageEmbeddingItems, ImageProcessorItems
from vllm.multimodal.processing import PromptReplacement

from ..methods.base import Selection
from ..models.clip_signals import ClipVisionSignals, check_llava_feature_config
from ..registry import get_method
from ..text import ClipText, QuestionBatch, load_clip_text, questions_from_ids
from .settings import CONFIG_KEY, NEEDS_CLIP, PruneSettings, request_settings, settings_from_key, settings_of

ARCH = "VlpruneLlavaForConditionalGeneration"
SETTINGS_FIELD = "vlprune_settings"  # per image: UTF-8 of PruneSettings.key()
QUESTION_FIELD = "vlprune_question"  # per image: UTF-8 of its question ("" when none / not needed)
# hub checkpoints name the tower's weights ``[model.]vision_tower.vision_model.*``; transformers 5's
# ``CLIPVisionModel`` holds them one level up (``vision_tower.*``)
_TOWER_PREFIX = re.compile(r"^((?:model\.)?vision_tower\.)vision_model\.")


def _to_bytes(text: str) -> torch.Tensor:
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)


def _from_bytes(t: torch.Tensor) -> str:
    return bytes(t.cpu().tolist()).decode("utf-8")


def _rows(x: object, n: int) -> list[torch.Tensor] | None:
    """A batched per-image field as one tensor per image (vLLM stacks equal shapes, else gives a list)."""
    if x is None:
        return None
    rows = list(x) if isinstance(x, (list, tuple)) else list(x.unbind(0))
    if len(rows) != n:
        raise ValueError(f"{n} images but {len(rows)} vlprune entries: the processor and the model disagree")
    return rows


class VlpruneLlavaProcessingInfo(LlavaProcessingInfo):
    """LLaVA-1.5's processing info with ``keep`` tokens per image when a method prunes."""

    @property
    def deployment(self) -> PruneSettings:
        return settings_of(self.get_hf_config())

    def full_tokens(self) -> int:
        """Tokens of one unpruned image (LLaVA-1.5: a fixed grid)."""
        size = self.get_image_size_with_most_features()
        return super().get_num_image_tokens(image_width=size.width, image_height=size.height)

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        n = super().get_num_image_tokens(image_width=image_width, image_height=image_height)
        return self.deployment.tokens(n)

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int] | None:
        if self.deployment.prunes:  # a request may ask for more than the deployment's keep (up to N)
            return {"image": self.full_tokens()}
        return super().get_mm_max_tokens_per_item(seq_len, mm_counts)


class VlpruneLlavaMultiModalProcessor(LlavaMultiModalProcessor):
    """Adds the request's settings and (DeSAP) question to its processor kwargs, hence to each image's hash, and
    hands them to the model as per-image fields; writes each image's ``tokens(N)`` placeholders."""

    def apply(self, inputs, timing_ctx):
        deployment = self.info.deployment
        kwargs = dict(inputs.hf_processor_mm_kwargs)
        settings = request_settings(kwargs.get(CONFIG_KEY), deployment, self.info.full_tokens())
        if settings.prunes or CONFIG_KEY in kwargs:
            if CONFIG_KEY in kwargs:
                kwargs[CONFIG_KEY] = settings.key()  # canonical: the same settings hash the same
            if settings.needs_question:
                tokenizer = self.info.get_tokenizer()
                ids = torch.tensor([list(inputs.prompt)], dtype=torch.long)
                image_token_id = self.info.get_hf_config().image_token_index
                kwargs[QUESTION_FIELD] = questions_from_ids(ids, None, image_token_id, tokenizer)[0]
            inputs = replace(inputs, hf_processor_mm_kwargs=kwargs)
        return super().apply(inputs, timing_ctx)

    def _settings(self, hf_kwargs: Mapping[str, object]) -> PruneSettings:
        key = hf_kwargs.get(CONFIG_KEY)
        deployment = self.info.deployment
        return deployment if key is None else settings_from_key(key, deployment.clip)

    def _call_hf_processor(self, hf_data, hf_kwargs):
        hf_kwargs = {k: v for k, v in hf_kwargs.items() if k not in (CONFIG_KEY, QUESTION_FIELD)}
        return super()._call_hf_processor(hf_data, hf_kwargs)

    def _postprocess_hf_mm_data(self, mm_inputs, hf_processor_mm_kwargs, processed_data):
        processed_data = super()._postprocess_hf_mm_data(mm_inputs, hf_processor_mm_kwargs, processed_data)
        pixels = processed_data.get("pixel_values")
        if pixels is not None and self.info.deployment.prunes:
            key = _to_bytes(self._settings(hf_processor_mm_kwargs).key())
            question = _to_bytes(str(hf_processor_mm_kwargs.get(QUESTION_FIELD, "")))
            processed_data[SETTINGS_FIELD] = [key] * len(pixels)
            processed_data[QUESTION_FIELD] = [question] * len(pixels)
        return processed_data

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs) -> Mapping[str, MultiModalFieldConfig]:
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        fields[SETTINGS_FIELD] = MultiModalFieldConfig.batched("image")
        fields[QUESTION_FIELD] = MultiModalFieldConfig.batched("image")
        return fields

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs) -> Sequence[PromptReplacement]:
        image_token_id = self.info.get_hf_config().image_token_index
        settings = self._settings(hf_processor_mm_kwargs)

        def replacement(item_idx: int) -> list[int]:
            images = mm_items.get_items("image", (ImageEmbeddingItems, ImageProcessorItems))
            if isinstance(images, ImageEmbeddingItems):
                return [image_token_id] * images.get_feature_size(item_idx)
            size = images.get_image_size(item_idx)
            n = LlavaProcessingInfo.get_num_image_tokens(self.info, image_width=size.width, image_height=size.height)
            return [image_token_id] * settings.tokens(n)

        return [PromptReplacement(modality="image", target=[image_token_id], replacement=replacement)]


@MULTIMODAL_REGISTRY.register_processor(
    VlpruneLlavaMultiModalProcessor, info=VlpruneLlavaProcessingInfo, dummy_inputs=LlavaDummyInputsBuilder
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
        with self._mark_tower_model(vllm_config, "image"):
            # the full transformers tower (vLLM's stops at the feature layer): same parameter names as the
            # checkpoint's ``model.vision_tower.*``, loaded by vLLM's AutoWeightsLoader
            self.vision_tower = CLIPVisionModel(vc)
        # DeSAP's text side, loaded as vlprune.apply(..., clip=PATH) loads it; kept out of the module tree (its
        # weights are not the checkpoint's) and moved to the tower's device on first use
        self.clip_text: ClipText | None = load_clip_text(self.prune.clip) if self.prune.clip else None

    def embed_multimodal(self, **kwargs: object):
        settings, questions = kwargs.pop(SETTINGS_FIELD, None), kwargs.pop(QUESTION_FIELD, None)
        if not self.prune.prunes:
            return super().embed_multimodal(**kwargs)
        image_input = self._parse_and_validate_image_input(**kwargs)
        if image_input is None:
            return []
        if isinstance(image_input, LlavaImageEmbeddingInputs):  # precomputed image_embeds: handed to the LLM as they are
            return super()._process_image_input(image_input)
        pixel_values = image_input["pixel_values"]
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = torch.stack(list(pixel_values))
        n = pixel_values.shape[0]
        keys = [_from_bytes(t) for t in _rows(settings, n)] if settings is not None else [self.prune.key()] * n
        texts = [_from_bytes(t) for t in _rows(questions, n)] if questions is not None else [""] * n
        out: list[torch.Tensor | None] = [None] * n
        for key in dict.fromkeys(keys):  # one batched selection per setting, in first-seen order
            idx = [i for i, k in enumerate(keys) if k == key]
            embeds = self._embed(pixel_values[idx], settings_from_key(key, self.prune.clip), [texts[i] for i in idx])
            for j, i in enumerate(idx):
                out[i] = embeds[j]
        return tuple(out)  # one (K_i, D) tensor per image, as vLLM splits them

    def _embed(self, pixel_values: torch.Tensor, settings: PruneSettings, questions: list[str]) -> torch.Tensor:
        """The LLM-input embeddings (B, K, D) of images that share ``settings``."""
        if not settings.prunes:  # a request asked for every patch
            source = self._signals(pixel_values, None)
            return self.multi_modal_projector(source.features())
        sel = self.select(pixel_values, settings, questions)
        return sel.features if sel.projected else self.multi_modal_projector(sel.features)

    def _signals(self, pixel_values: torch.Tensor, questions: list[str] | None) -> ClipVisionSignals:
        tower = self.vision_tower  # transformers 5: CLIPVisionModel holds embeddings/encoder itself
        param = next(tower.parameters())
        batch = None
        if questions is not None and self.clip_text is not None:
            self._move_clip(param.device)
            batch = QuestionBatch(self.clip_text, questions)
        return ClipVisionSignals(tower, pixel_values.to(param.dtype), self.config.vision_feature_layer,
                                 questions=batch, clip_text=self.clip_text, grid=(self.side, self.side),
                                 projector=self.multi_modal_projector)

    def _move_clip(self, device: torch.device) -> None:
        clip = self.clip_text
        if clip.text_projection.weight.device != device:
            for module in (clip.text_model, clip.text_projection, clip.visual_projection):
                module.to(device)

    @torch.no_grad()
    def select(self, pixel_values: torch.Tensor, settings: PruneSettings | None = None,
               questions: list[str] | None = None) -> Selection:
        """vlprune's selection for a batch of images (B, 3, H, W) under ``settings`` (default: the deployment's),
        with one question per image for DeSAP: features (B, K, D), kept indices."""
        settings = settings or self.prune
        if settings.needs_question:
            if self.clip_text is None:
                raise ValueError(NEEDS_CLIP)
            questions = questions if questions is not None else [""] * pixel_values.shape[0]
        source = self._signals(pixel_values, questions if settings.needs_question else None)
        keep = min(settings.keep, self.side * self.side)
        return get_method(settings.method).encoder(source, keep, settings.config())

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        if self.prune.prunes:
            weights = ((_TOWER_PREFIX.sub(r"\1", name), w) for name, w in weights)
        return super().load_weights(weights)
