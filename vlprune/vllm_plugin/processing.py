"""What a request adds, shared by the plugin's families: its own settings (``mm_processor_kwargs["vlprune"]``)
and, for DeSAP, its question (the prompt's text after the last image, found as ``vlprune.apply`` finds it).

Both enter the request's multimodal processor kwargs, which vLLM folds into each image's hash: the processor
cache, the encoder cache and prefix caching key an image by (pixels, settings, question), never by the pixels
alone. They reach the model as two per-image byte tensors (UTF-8 JSON / text), and the processor writes each
image's placeholders from the same settings (``pruned_tokens``), so prompt and embeddings always agree.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import torch
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import ImageEmbeddingItems, ImageProcessorItems
from vllm.multimodal.processing import PromptReplacement

from ..text import questions_from_ids
from .settings import CONFIG_KEY, PruneSettings, check_family, request_settings, settings_from_key, settings_of

SETTINGS_FIELD = "vlprune_settings"  # per image: UTF-8 of PruneSettings.key()
QUESTION_FIELD = "vlprune_question"  # per image: UTF-8 of its question ("" when none / not needed)


def to_bytes(text: str) -> torch.Tensor:
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)


def from_bytes(t: torch.Tensor) -> str:
    return bytes(t.cpu().tolist()).decode("utf-8")


def _rows(x: object, n: int) -> list[torch.Tensor]:
    """A batched per-image field as one tensor per image (vLLM stacks equal shapes, else gives a list)."""
    rows = list(x) if isinstance(x, (list, tuple)) else list(x.unbind(0))
    if len(rows) != n:
        raise ValueError(f"{n} images but {len(rows)} vlprune entries: the processor and the model disagree")
    return rows


class PruneInfoMixin:
    """For a ``ProcessingInfo``: the deployment's settings and each image's placeholder count under settings."""

    family = "llava"  # vlprune's family name (methods may be limited to some)

    @property
    def deployment(self) -> PruneSettings:
        return settings_of(self.get_hf_config())

    def unpruned_tokens(self, width: int, height: int) -> int:
        """Placeholders of the unpruned image: the family's own count (the next class in the MRO)."""
        return super().get_num_image_tokens(image_width=width, image_height=height)

    def keep_limit(self) -> int:
        """The largest ``keep`` (patches per image, or per tile)."""
        raise NotImplementedError

    def pruned_tokens(self, settings: PruneSettings, width: int, height: int) -> int:
        raise NotImplementedError

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        return self.pruned_tokens(self.deployment, image_width, image_height)

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int] | None:
        if self.deployment.prunes:  # a request may ask for more than the deployment's keep (up to unpruned)
            size = self.get_image_size_with_most_features()
            return {"image": self.unpruned_tokens(size.width, size.height)}
        return super().get_mm_max_tokens_per_item(seq_len, mm_counts)


class PruneProcessorMixin:
    """For a ``BaseMultiModalProcessor``: the request's settings and question into its processor kwargs (hence
    into each image's hash) and into two per-image fields; each image's placeholders from the same settings."""

    def apply(self, inputs, timing_ctx):
        info = self.info
        kwargs = dict(inputs.hf_processor_mm_kwargs)
        settings = request_settings(kwargs.get(CONFIG_KEY), info.deployment, info.keep_limit())
        check_family(settings, info.family)
        if settings.prunes or CONFIG_KEY in kwargs:
            if CONFIG_KEY in kwargs:
                kwargs[CONFIG_KEY] = settings.key()  # canonical: the same settings hash the same
            if settings.needs_question:
                ids = torch.tensor([list(inputs.prompt)], dtype=torch.long)
                image_token_id = info.get_hf_config().image_token_index
                kwargs[QUESTION_FIELD] = questions_from_ids(ids, None, image_token_id, info.get_tokenizer())[0]
            inputs = replace(inputs, hf_processor_mm_kwargs=kwargs)
        return super().apply(inputs, timing_ctx)

    def _settings(self, hf_kwargs: Mapping[str, object]) -> PruneSettings:
        key = hf_kwargs.get(CONFIG_KEY)
        deployment = self.info.deployment
        return deployment if key is None else settings_from_key(key, deployment)

    def _call_hf_processor(self, hf_data, hf_kwargs):
        hf_kwargs = {k: v for k, v in hf_kwargs.items() if k not in (CONFIG_KEY, QUESTION_FIELD)}
        return super()._call_hf_processor(hf_data, hf_kwargs)

    def _postprocess_hf_mm_data(self, mm_inputs, hf_processor_mm_kwargs, processed_data):
        processed_data = super()._postprocess_hf_mm_data(mm_inputs, hf_processor_mm_kwargs, processed_data)
        pixels = processed_data.get("pixel_values")
        if pixels is not None and self.info.deployment.prunes:
            key = to_bytes(self._settings(hf_processor_mm_kwargs).key())
            question = to_bytes(str(hf_processor_mm_kwargs.get(QUESTION_FIELD, "")))
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
            return [image_token_id] * self.info.pruned_tokens(settings, size.width, size.height)

        return [PromptReplacement(modality="image", target=[image_token_id], replacement=replacement)]


def embed_per_setting(kwargs: dict, n: int, deployment: PruneSettings,
                      embed: Callable[[list[int], PruneSettings, list[str]], Sequence[torch.Tensor]]
                      ) -> tuple[torch.Tensor, ...]:
    """Pop the two per-image fields from ``kwargs`` and call ``embed(image indices, settings, questions)`` once
    per distinct setting (a batched selection each); the embeddings back in image order."""
    settings, questions = kwargs.pop(SETTINGS_FIELD, None), kwargs.pop(QUESTION_FIELD, None)
    keys = [from_bytes(t) for t in _rows(settings, n)] if settings is not None else [deployment.key()] * n
    texts = [from_bytes(t) for t in _rows(questions, n)] if questions is not None else [""] * n
    out: list[torch.Tensor | None] = [None] * n
    for key in dict.fromkeys(keys):  # first-seen order
        idx = [i for i, k in enumerate(keys) if k == key]
        for i, e in zip(idx, embed(idx, settings_from_key(key, deployment), [texts[i] for i in idx])):
            out[i] = e
    return tuple(out)


def pop_fields(kwargs: dict) -> None:
    kwargs.pop(SETTINGS_FIELD, None)
    kwargs.pop(QUESTION_FIELD, None)
