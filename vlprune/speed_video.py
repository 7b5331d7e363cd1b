"""``vlprune bench`` on videos: Video-LLaVA at a preset's widths (optionally trimmed in depth) or the tiny test
model, one random video of ``shape.frames`` frames per sample, laid out as transformers' class reads it (every
frame's [CLS] + patch rows: ``frames x (1 + N)`` video placeholders)."""
from __future__ import annotations

import dataclasses

import torch

from .presets import ModelShape
from .speed_models import BenchModel, ImageLayout, _check_depths, _clip_text, _construct, _finish, \
    _llama_clip_configs, _tiny_model, _tiny_shape

VIDEO_TOKEN = 5  # ``vlprune.testing.word_tokenizer(SPECIALS + ["<video>"])``


def video_llava_layout(shape: ModelShape) -> ImageLayout:
    """``shape.frames`` CLIP frames; ``keep`` counts their patches, the frames' [CLS] tokens are ``fixed``."""
    side = shape.image_size // shape.patch_size
    return ImageLayout("video_llava", (shape.image_size, shape.image_size), shape.frames,
                       shape.frames * side * side, fixed=shape.fixed_tokens)


def build_video_llava(shape: ModelShape, layers: int, vision_layers: int, dtype: torch.dtype, device: torch.device,
                      seed: int = 0) -> BenchModel:
    """``VideoLlavaForConditionalGeneration`` at ``shape``'s widths (Vicuna-7B LLM; LanguageBind image and video
    towers, CLIP-L/14 at 224 px), ``layers`` decoder / ``vision_layers`` blocks per tower."""
    from transformers import VideoLlavaConfig, VideoLlavaForConditionalGeneration

    from .testing import SPECIALS, word_tokenizer

    _check_depths(shape, layers, vision_layers)
    text, vision = _llama_clip_configs(shape, layers, vision_layers)
    cfg = VideoLlavaConfig(vision_config=vision, text_config=text, image_token_index=4, video_token_index=VIDEO_TOKEN,
                           vision_feature_layer=-2, vision_feature_select_strategy="default",
                           projector_hidden_act="gelu")
    cfg._attn_implementation = "sdpa"
    model = _finish(_construct(VideoLlavaForConditionalGeneration, cfg, dtype, device), seed, device)
    clip_text = _clip_text(shape.vision_hidden, dtype, device, seed)
    built = dataclasses.replace(shape, layers=layers, vision_layers=vision_layers)
    tok = word_tokenizer(specials=SPECIALS + ["<video>"])
    return BenchModel(model, tok, clip_text, built, VIDEO_TOKEN, shape.name, video_llava_layout(built))


def build_tiny_video(dtype: torch.dtype, device: torch.device, seed: int = 0, frames: int = 8) -> BenchModel:
    """``vlprune.testing.tiny_video_llava`` (16 px frames of 4x4 patches): 8 frames = 128 patches + 8 [CLS]."""
    from .testing import tiny_video_llava
    from .text import load_clip_text

    t = tiny_video_llava(seed=seed, layers=4)
    model = _tiny_model(t.model, dtype, device)
    clip = t.clip.to(device=device, dtype=dtype).eval()
    vc = model.config.vision_config
    shape = _tiny_shape("tiny-video", "vlprune.testing.tiny_video_llava", model, frames * t.grid**2, vc,
                        vc.image_size)
    shape = dataclasses.replace(shape, frames=frames, fixed_tokens=frames)
    return BenchModel(model, t.tokenizer, load_clip_text(clip, t.clip_tokenizer), shape, model.config.video_token_id,
                      "tiny-video", video_llava_layout(shape))


def video_pixels(bm: BenchModel, batch: int, gen: torch.Generator) -> torch.Tensor:
    """``pixel_values_videos`` (batch, frames, 3, s, s)."""
    s = bm.shape.image_size
    return torch.randn(batch, bm.layout.tiles, 3, s, s, generator=gen)
