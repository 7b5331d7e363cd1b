"""The video testbed's model, tokenizer and processor.

The model is a stock :class:`~transformers.VideoLlavaForConditionalGeneration` started from the bundled image
testbed: its CLIP tower becomes both the image and the video tower (frozen), its projector and 2-layer Llama are
copied, and the vocabulary grows by ``<video>`` and the words of the video questions (new embedding and LM-head
rows; the image testbed's ids are unchanged). A clip of ``FRAMES`` frames fills ``FRAMES x (1 + 144)``
placeholders, as transformers' Video-LLaVA lays it out (every frame's [CLS] first).

transformers' own Video-LLaVA video processor needs torchvision, which vlprune does not depend on, so the testbed
has its own small processor (:class:`VideoTestbedProcessor`): the image testbed's CLIP normalisation per frame
(:func:`video_pixels`, equal to the image testbed's processor frame by frame: tested) and the ``<video>``
expansion of ``VideoLlavaProcessor``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from . import scenes
from .components import EOS_ID, IMAGE_ID, PAD_ID, SPECIALS, BOS_ID, make_image_processor, pixels, TestbedSpec
from .video_scenes import FRAMES, video_vocabulary

__all__ = ["VIDEO_TOKEN", "VideoTestbedProcessor", "init_from_image_testbed", "make_video_tokenizer",
           "video_pixels"]

VIDEO_TOKEN = "<video>"
PROCESSOR_FILE = "video_testbed_processor.json"


def make_video_tokenizer(padding_side: str = "left"):
    """The image testbed's word-level tokenizer with ``<video>`` and the video words appended (old ids kept)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = [w for w in scenes.vocabulary() if w not in SPECIALS]
    vocab = {tok: i for i, tok in enumerate(list(SPECIALS) + words)}
    for w in [VIDEO_TOKEN, *video_vocabulary()]:
        vocab[w] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens([*SPECIALS, VIDEO_TOKEN])
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", BOS_ID)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        padding_side=padding_side, model_max_length=2048,
        extra_special_tokens={"image_token": "<image>", "video_token": VIDEO_TOKEN})


def video_pixels(clips, image_processor) -> torch.Tensor:
    """``(B, T, 3, H, W)`` CLIP-normalised pixels of clips (lists of PIL frames at the model's size)."""
    return torch.stack([pixels(list(frames), image_processor) for frames in clips])


class VideoTestbedProcessor:
    """Tokenizer + per-frame CLIP normalisation for the video testbed (images work too, as in Video-LLaVA).

    ``processor(text=[...], videos=[[frame, ...], ...], images=[...])`` expands every ``<video>`` to
    ``frames x (1 + patches)`` placeholders and every ``<image>`` to ``patches``, and returns ``input_ids``,
    ``attention_mask``, ``pixel_values_videos`` ``(B, T, 3, H, W)`` and/or ``pixel_values`` ``(B, 3, H, W)``.
    """

    def __init__(self, tokenizer, image_processor, patches: int = 144) -> None:
        self.tokenizer, self.image_processor, self.patches = tokenizer, image_processor, patches

    def __call__(self, text=None, videos=None, images=None, return_tensors: str = "pt", padding: bool = True,
                 **kwargs: Any):
        from transformers import BatchFeature

        texts = [text] if isinstance(text, str) else list(text)
        out: dict[str, Any] = {}
        frames = 0
        if videos is not None:
            frames = len(videos[0])
            if any(len(v) != frames for v in videos):
                raise ValueError("every clip of a batch needs the same number of frames")
            out["pixel_values_videos"] = video_pixels(videos, self.image_processor)
        if images is not None:
            out["pixel_values"] = pixels(images, self.image_processor)
        expanded = [t.replace(VIDEO_TOKEN, VIDEO_TOKEN * (frames * (self.patches + 1)))
                    .replace("<image>", "<image>" * self.patches) for t in texts]
        enc = self.tokenizer(expanded, return_tensors=return_tensors, padding=padding)
        return BatchFeature({**enc, **out})

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        (path / PROCESSOR_FILE).write_text(json.dumps({"patches": self.patches, "frames": FRAMES}, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "VideoTestbedProcessor":
        from transformers import AutoTokenizer, CLIPImageProcessorPil

        path = Path(path)
        cfg = json.loads((path / PROCESSOR_FILE).read_text())
        return cls(AutoTokenizer.from_pretrained(str(path)), CLIPImageProcessorPil.from_pretrained(str(path)),
                   cfg["patches"])


@torch.no_grad()
def init_from_image_testbed(source, tokenizer, frames: int = FRAMES):
    """A ``VideoLlavaForConditionalGeneration`` holding the image testbed ``source`` (a LLaVA): its tower as the
    image and video tower, its projector and LLM; new vocabulary rows start at the mean of the old ones."""
    from transformers import LlamaConfig, VideoLlavaConfig, VideoLlavaForConditionalGeneration

    old = source.config
    vocab = len(tokenizer)
    text = LlamaConfig(**{**old.text_config.to_dict(), "vocab_size": vocab, "max_position_embeddings": 1024})
    vc = old.vision_config
    n = (vc.image_size // vc.patch_size) ** 2
    cfg = VideoLlavaConfig(
        vision_config=vc.to_dict(), text_config=text.to_dict(), image_token_index=IMAGE_ID,
        video_token_index=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN), vision_feature_layer=old.vision_feature_layer,
        vision_feature_select_strategy="default", projector_hidden_act="gelu", image_seq_length=n,
        video_seq_length=frames * (n + 1))
    cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id = PAD_ID, BOS_ID, EOS_ID
    model = VideoLlavaForConditionalGeneration(cfg).eval()
    tower = source.model.vision_tower.state_dict()
    model.model.image_tower.load_state_dict(tower)
    model.model.video_tower.load_state_dict(tower)
    model.model.multi_modal_projector.load_state_dict(source.model.multi_modal_projector.state_dict())
    src_lm = {k: v for k, v in source.model.language_model.state_dict().items() if "embed_tokens" not in k}
    model.model.language_model.load_state_dict(src_lm, strict=False)
    for new, src in ((model.get_input_embeddings().weight, source.get_input_embeddings().weight),
                     (model.lm_head.weight, source.lm_head.weight)):
        k = src.shape[0]
        new[:k] = src
        new[k:] = src.mean(0) + 0.02 * torch.randn_like(new[k:]) * src.std()
    return model


def spec_image_processor():
    """The image testbed's processor (96 px, CLIP mean/std)."""
    return make_image_processor(TestbedSpec())
