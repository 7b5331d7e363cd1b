"""The testbed's parts: its spec, tokenizers, processor, the CLIP and LLaVA models, and training helpers.

Shared by both training stages (:mod:`.clip_stage`, :mod:`.train`) and by the tools that rebuild parts of the
recipe. Every model is a stock transformers class, so ``from_pretrained`` reads the saved checkpoint offline.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import scenes



SPECIALS = ("<pad>", "<unk>", "<s>", "</s>", "<image>")
PAD_ID, UNK_ID, BOS_ID, EOS_ID, IMAGE_ID = range(5)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %} {% else %}ASSISTANT: "
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "</s>{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class TestbedSpec:
    """Sizes and training settings of the testbed (defaults = the shipped model)."""

    grid: int = 12                # patches per side; image side = grid * patch_size
    patch_size: int = 8
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    text_width: int = 128         # CLIP text tower
    text_layers: int = 3
    text_heads: int = 4
    projection_dim: int = 64      # CLIP joint space
    llm_width: int = 128
    llm_layers: int = 2
    llm_heads: int = 4
    llm_ffn: int = 384
    clip_steps: int = 500
    clip_batch: int = 64
    clip_lr: float = 1e-3
    llava_steps: int = 6000
    llava_batch: int = 32
    llava_lr: float = 2e-3
    turns: int = 12               # questions per training conversation (LLaVA-style multi-turn)
    pool: int = 12000             # stage-2 training scenes (frozen features computed once)
    curriculum: float = 0.3       # CLIP: scene complexity ramps 0 -> 1 over this fraction of the steps
    token_loss: float = 1.0       # weight of CLIP's token-wise (FILIP) loss beside the global one
    position_loss: float = 1.0    # CLIP: weight of the patch-position term (layer -2 patches name their row/column)
    decoupled_token_loss: float = 0.0  # CLIP: FILIP term on the last block's decoupled q-q patches (experiment, off)
    decoupled_global_loss: float = 0.0  # CLIP: InfoNCE of that block's decoupled [CLS] row (experiment, off)
    describe_prob: float = 0.0    # share of conversations with a dense "Describe the image ." turn
    bf16: bool = True             # bf16 autocast for both stages
    align_loss: float = 1.0       # stage 2: projected patches predict their object's colour/shape words
    align_steps: int = 400        # projector-only alignment warm-up before stage 2
    background_start: float = 0.1  # stage 2 curriculum: share of background patches shown at step 0 ...
    background_ramp: float = 0.5   # ... rising to all of them over this fraction of the steps
    warmup: int = 100
    val_n: int = 500              # val samples scored at the end
    val_probe: int = 100          # val samples scored every val_every steps (log only)
    val_every: int = 500

    @property
    def image_size(self) -> int:
        return self.grid * self.patch_size


# ------------------------------------------------------------------ construction
def make_tokenizer(padding_side: str = "left"):
    """Word-level tokenizer over the testbed vocabulary (shared by CLIP and LLaVA).

    ``<s>`` is prepended; with ``add_eos=True`` (CLIP) ``</s>`` is appended too,
    which is where CLIP's text tower pools.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = [w for w in scenes.vocabulary() if w not in SPECIALS]
    vocab = {tok: i for i, tok in enumerate(list(SPECIALS) + words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens(list(SPECIALS))
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", BOS_ID)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", padding_side=padding_side, model_max_length=1024,
        extra_special_tokens={"image_token": "<image>"})
    return tok


def make_clip_tokenizer():
    """Same vocabulary, but ``<s> text </s>`` so CLIP pools at the EOS, right-padded."""
    from tokenizers import processors

    tok = make_tokenizer(padding_side="right")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A $B </s>", special_tokens=[("<s>", BOS_ID), ("</s>", EOS_ID)])
    tok.model_max_length = 64
    return tok


def make_clip(spec: TestbedSpec, vocab_size: int):
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    vision = CLIPVisionConfig(
        hidden_size=spec.vision_width, intermediate_size=4 * spec.vision_width,
        num_hidden_layers=spec.vision_layers, num_attention_heads=spec.vision_heads,
        image_size=spec.image_size, patch_size=spec.patch_size, projection_dim=spec.projection_dim,
        hidden_act="quick_gelu")
    text = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=spec.text_width, intermediate_size=4 * spec.text_width,
        num_hidden_layers=spec.text_layers, num_attention_heads=spec.text_heads,
        max_position_embeddings=64, projection_dim=spec.projection_dim, hidden_act="quick_gelu",
        pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                        projection_dim=spec.projection_dim)
    return CLIPModel(config)


def make_llava(spec: TestbedSpec, vocab_size: int, vision_config):
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    text = LlamaConfig(
        vocab_size=vocab_size, hidden_size=spec.llm_width, intermediate_size=spec.llm_ffn,
        num_hidden_layers=spec.llm_layers, num_attention_heads=spec.llm_heads,
        num_key_value_heads=spec.llm_heads, max_position_embeddings=max(512, 4 * spec.grid ** 2),
        rms_norm_eps=1e-5, pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
        tie_word_embeddings=False)
    config = LlavaConfig(
        vision_config=vision_config.to_dict(), text_config=text.to_dict(), image_token_index=IMAGE_ID,
        image_seq_length=spec.grid ** 2, vision_feature_layer=-2,
        vision_feature_select_strategy="default", projector_hidden_act="gelu")
    config.pad_token_id = PAD_ID
    config.bos_token_id = BOS_ID
    config.eos_token_id = EOS_ID
    return LlavaForConditionalGeneration(config)


def make_image_processor(spec: TestbedSpec):
    from transformers import CLIPImageProcessorPil

    side = spec.image_size
    return CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})


def make_processor(spec: TestbedSpec, tokenizer=None):
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=make_image_processor(spec), tokenizer=tokenizer or make_tokenizer(),
        patch_size=spec.patch_size, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE, image_token="<image>")


# ------------------------------------------------------------------------- data
def pixels(images, image_processor) -> torch.Tensor:
    """CLIP-normalised ``(B, 3, H, W)`` pixels of images already at the model's size.

    Equal to ``image_processor(images)["pixel_values"]`` for such images (tested),
    without the per-image resize/crop round trip, which dominates batch building.
    """
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images]) / 255.0
    mean = np.asarray(image_processor.image_mean, dtype=np.float32)
    std = np.asarray(image_processor.image_std, dtype=np.float32)
    return torch.from_numpy(((arr - mean) / std).transpose(0, 3, 1, 2).copy())


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak``, then cosine decay to 5 % of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def progress_bar(enabled: bool):
    """A rich progress bar for a training stage (disabled: prints nothing)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    disable=not enabled, transient=False)


def bf16_autocast(device, enabled: bool):
    """bf16 autocast on ``device`` when ``enabled``."""
    dev = torch.device(device).type
    return torch.autocast(dev, dtype=torch.bfloat16, enabled=enabled)
