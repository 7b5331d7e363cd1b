"""``vlprune bench``: prefill / TTFT / pruning-step time, memory, KV cache and FLOPs of every method.

The model is the real transformers architecture at a preset's shape (``vlprune/presets.py``) with random
weights, optionally trimmed in depth so it fits a CPU: ``LlavaForConditionalGeneration`` (LLaVA-1.5),
``LlavaNextForConditionalGeneration`` (LLaVA-NeXT: one 672x672 image = base + 2x2 tiles by default) or
``Qwen2_5_VLForConditionalGeneration`` (one 896x896 image by default), each fed one random image per sample laid
out as its processor would (``make_inputs``). What is measured (docs/speed.md has the details):

- ``prefill_ms``: median wall time of ``model(**inputs, use_cache=True, logits_to_keep=1)`` (vision tower +
  pruning + projector + LLM + last-token logits), after warm-up. CUDA: events + synchronize.
- ``ttft_ms``: median of ``model.generate(**inputs, max_new_tokens=1, do_sample=False)``: everything up to and
  including the first generated token.
- ``prune_ms``: the pruning step alone, timed inside the prefill passes. Encoder-side methods: time from the
  call to the LLM's entry minus the vision-tower forward minus the projector, minus the same quantity of the
  unpruned model (input binding, embedding lookup, feature scatter), i.e. what the method adds before the
  LLM: question decoding, CLIP text encoding, [CLS] attention / key / decoupled-attention recomputation,
  alignment, ranking, merge, prompt shrinking. In-LLM methods: total time spent in the pruner's per-layer
  prefill hook (score recomputation, ranking, gathering hidden states / rotary tables / masks).
- ``peak_mem_mb``: CUDA: ``max_memory_allocated`` minus the allocation before the call. CPU: peak resident set
  size during one prefill, sampled every 0.5 ms from ``/proc/self/statm`` after ``malloc_trim``, minus the
  resident size before it (tracemalloc does not see torch's allocator; ``ru_maxrss`` is a lifetime maximum).
- ``kv_cache_mb``: bytes of every key/value tensor in the cache after prefill.
- ``tflops``: ``vlprune.flops.method_tflops`` (LLM FLOPs of the visual tokens, eq. 6-7) at the built depth.
- ``flops_bound_speedup``: F(full) / F(method) with F the whole prefill: vision tower + projector + LLM over
  visual (NeXT: + newline) and text tokens, counted at the depths actually built (see ``prefill_flops``).
- ``llm_tokens``: tokens cached by the first and the last decoder layer (what the LLM really processed).
- ``speedup`` = prefill(none) / prefill(method); ``efficiency`` = speedup / flops_bound_speedup.
"""
from __future__ import annotations

import ctypes
import dataclasses
import gc
import math
import os
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import typer
from torch import nn

from .compat import output_cache, vision_depth, vision_heads
from .flops import layer_flops, method_tflops, tokens_per_layer
from .cpu_info import matmul_path, pick_dtype
from .speed_report import check_targets, device_name
from .presets import ModelShape, get_preset

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# -- image layouts -----------------------------------------------------------------------------------------
NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # llava-v1.6 anyres grids
QWEN_WINDOW = 112  # Qwen2.5-VL window attention: 112 px = 8x8 patches = 4x4 merged tokens
QWEN_PATCH_IN = 3 * 2  # Qwen2.5-VL patch embedding input: 3 channels x 2 frames (an image is repeated in time)


@dataclass(frozen=True)
class ImageLayout:
    """One image as a model family consumes it: what its vision tower runs on and what the LLM gets."""

    family: str = "llava"  # llava | llava_next | qwen2_5_vl
    size: tuple[int, int] = (336, 336)  # (height, width) in pixels
    tiles: int = 1  # CLIP tiles (LLaVA-NeXT: base tile + grid tiles)
    patches: int = 576  # visual tokens the LLM gets unpruned, newlines aside: what `keep` counts
    newlines: int = 0  # LLaVA-NeXT: one image_newline after every row of the unpadded grid
    merge: int = 1  # Qwen2.5-VL: the merger's side (2: one LLM token per 2x2 patches)
    windows: tuple[int, ...] = ()  # Qwen2.5-VL: patches in each attention window
    full_blocks: tuple[int, ...] = ()  # Qwen2.5-VL: ViT blocks with full (image-wide) attention

    @property
    def image_tokens(self) -> int:
        """Image placeholders in the prompt (patches + newlines)."""
        return self.patches + self.newlines


def llava_layout(shape: ModelShape) -> ImageLayout:
    """LLaVA-1.5: one square tile, one LLM token per patch."""
    side = shape.image_size // shape.patch_size
    return ImageLayout("llava", (shape.image_size, shape.image_size), 1, side * side)


def next_layout(shape: ModelShape, size: tuple[int, int], pinpoints: list = NEXT_PINPOINTS) -> ImageLayout:
    """LLaVA-NeXT anyres: base tile + best-fit grid of tiles, unpadded, one newline per grid row (the model's
    ``pack_image_features``). 672x672 on llava-v1.6: 1 + 2x2 tiles, 576 + 48*48 = 2880 patches + 48 newlines."""
    from .models.llava_next import _best_resolution, _unpadded_rows_cols

    tile, side = shape.image_size, shape.image_size // shape.patch_size
    h, w = _best_resolution(tuple(size), pinpoints)
    nph, npw = h // tile, w // tile
    r0, r1, c0, c1 = _unpadded_rows_cols(tuple(size), nph * side, npw * side)
    hu, wu = r1 - r0, c1 - c0
    return ImageLayout("llava_next", tuple(size), 1 + nph * npw, side * side + hu * wu, hu)


def qwen_full_blocks(depth: int) -> tuple[int, ...]:
    """Full-attention ViT blocks of a Qwen2.5-VL tower of ``depth`` blocks: every 8th (7B: 7, 15, 23, 31), and
    the last one in any case (a trimmed tower keeps a full-attention block where the adapter scores)."""
    return tuple(i for i in range(depth) if (i + 1) % 8 == 0 or i == depth - 1)


def qwen_layout(shape: ModelShape, size: tuple[int, int], window: int = QWEN_WINDOW, merge: int = 2,
                full_blocks: Optional[tuple[int, ...]] = None) -> ImageLayout:
    """Qwen2.5-VL at native resolution: (h/p) x (w/p) patches, one LLM token per ``merge x merge`` of them, windows
    of ``window`` px cut from the top-left (edge windows are smaller, as ``get_vision_window_index``)."""
    h, w = size
    unit = shape.patch_size * merge
    if h % unit or w % unit:
        raise typer.BadParameter(f"Qwen2.5-VL image sides must be multiples of {unit} px, got {h}x{w}",
                                 param_hint="--image-size")
    mh, mw, ws = h // unit, w // unit, window // unit

    def chunks(n: int) -> list[int]:
        return [ws] * (n // ws) + ([n % ws] if n % ws else [])

    windows = tuple(a * b * merge * merge for a in chunks(mh) for b in chunks(mw))
    full = qwen_full_blocks(shape.vision_layers) if full_blocks is None else tuple(full_blocks)
    return ImageLayout("qwen2_5_vl", (h, w), 1, mh * mw, 0, merge, windows, full)


# -- building the model ------------------------------------------------------------------------------------
@dataclass
class BenchModel:
    """A built model plus what the benchmark needs to drive it."""

    model: nn.Module
    tokenizer: Any
    clip_text: Any  # vlprune.text.ClipText for DeSAP; None: the adapter's own question encoder (Qwen2.5-VL)
    shape: ModelShape  # preset shape at the BUILT depths (layers, vision_layers) and real widths
    image_token_id: int
    name: str
    layout: ImageLayout = ImageLayout()

    @property
    def family(self) -> str:
        return self.layout.family

    @property
    def patches(self) -> int:
        """Visual tokens per image, unpruned (what ``keep`` counts)."""
        return self.layout.patches

    @property
    def image_tokens(self) -> int:
        """Image placeholders per prompt (LLaVA-NeXT: patches + newlines)."""
        return self.layout.image_tokens


def _fill_random_(model: nn.Module, seed: int, std: float = 0.02) -> None:
    """Cheap init: norm weights 1, biases 0, other weights uniform with standard deviation ``std``."""
    gens: dict[torch.device, torch.Generator] = {}
    bound = std * math.sqrt(3.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1 and name.endswith("weight"):
                p.fill_(1.0)
            else:
                if p.device not in gens:
                    gens[p.device] = torch.Generator(device=p.device).manual_seed(seed)
                p.uniform_(-bound, bound, generator=gens[p.device])
        for name, b in model.named_buffers():
            if b.is_floating_point() and not torch.isfinite(b).all():
                raise RuntimeError(f"buffer {name} was left uninitialised by the fast constructor")


def _construct(cls: Any, config: Any, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """Instantiate ``cls(config)`` in ``dtype`` directly on ``device`` (a 7B model never passes through host
    memory on CUDA) without transformers' / torch's weight init (fast)."""
    from transformers.initialization import no_init_weights

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.no_grad(), no_init_weights(), torch.device(device):
            model = cls(config)
    finally:
        torch.set_default_dtype(old)
    return model


def vision_layers_for(shape: ModelShape, layers: int, vision_layers: Optional[int]) -> int:
    """Default vision depth: the preset's tower scaled like the LLM (keeps the full model's FLOPs ratio),
    at least 2 (the feature layer -2 and the block after it)."""
    if vision_layers is not None:
        return vision_layers
    return max(2, round(shape.vision_layers * layers / shape.layers))


def _clip_text(width: int, dtype: torch.dtype, device: torch.device, seed: int, text_hidden: int = 768,
               text_layers: int = 12, text_heads: int = 12, text_ffn: int = 3072, projection: int = 768) -> Any:
    """Random CLIP text tower (CLIP-L/336: 768 wide, 12 layers, projection 768) + visual projection."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from .testing import SPECIALS, word_tokenizer
    from .text import ClipText

    tok = word_tokenizer(specials=SPECIALS[:4], bos=False)
    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=text_hidden, intermediate_size=text_ffn,
                         num_hidden_layers=text_layers, num_attention_heads=text_heads, max_position_embeddings=77,
                         projection_dim=projection, eos_token_id=3, bos_token_id=2, pad_token_id=0)
    cfg._attn_implementation = "sdpa"
    text = _construct(CLIPTextModelWithProjection, cfg, dtype, device)
    visual = nn.Linear(width, projection, bias=False, dtype=dtype, device=device)
    holder = nn.ModuleDict({"text": text, "visual": visual})
    _fill_random_(holder, seed + 1)
    holder.to(device).eval()
    return ClipText(text.text_model, text.text_projection, visual, tok, 77)


def _check_depths(shape: ModelShape, layers: int, vision_layers: int) -> None:
    if not 1 <= layers <= shape.layers:
        raise typer.BadParameter(f"--layers must be in 1..{shape.layers}", param_hint="--layers")
    if not 2 <= vision_layers <= shape.vision_layers:
        raise typer.BadParameter(f"--vision-layers must be in 2..{shape.vision_layers}", param_hint="--vision-layers")


def _llama_clip_configs(shape: ModelShape, layers: int, vision_layers: int) -> tuple[Any, dict]:
    """Llama decoder + CLIP vision tower configs of LLaVA-1.5 / LLaVA-NeXT (vicuna) at ``shape``'s widths."""
    from transformers import LlamaConfig

    text = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.ffn,
                       num_hidden_layers=layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                       max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    vision = dict(model_type="clip_vision_model", hidden_size=shape.vision_hidden, intermediate_size=shape.vision_ffn,
                  num_hidden_layers=vision_layers, num_attention_heads=shape.vision_heads,
                  image_size=shape.image_size, patch_size=shape.patch_size, projection_dim=768, hidden_act="quick_gelu")
    return text, vision


def _word_tokenizer_ids(model: nn.Module) -> nn.Module:
    """Generation pad/eos ids of ``vlprune.testing.word_tokenizer`` (0, 3)."""
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 3
    return model


def _finish(model: nn.Module, seed: int, device: torch.device) -> nn.Module:
    """Random weights, device, eval mode, greedy generation ids of the word tokenizers."""
    _fill_random_(model, seed)
    return _word_tokenizer_ids(model.to(device).eval())


def build_llava(shape: ModelShape, layers: int, vision_layers: int, dtype: torch.dtype, device: torch.device,
                seed: int = 0) -> BenchModel:
    """``LlavaForConditionalGeneration`` at ``shape``'s widths, ``layers`` decoder / ``vision_layers`` CLIP blocks."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from .testing import word_tokenizer

    _check_depths(shape, layers, vision_layers)
    text, vision = _llama_clip_configs(shape, layers, vision_layers)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=4, vision_feature_layer=-2,
                      vision_feature_select_strategy="default", projector_hidden_act="gelu")
    cfg._attn_implementation = "sdpa"
    model = _finish(_construct(LlavaForConditionalGeneration, cfg, dtype, device), seed, device)
    clip_text = _clip_text(shape.vision_hidden, dtype, device, seed)
    built = dataclasses.replace(shape, layers=layers, vision_layers=vision_layers)
    return BenchModel(model, word_tokenizer(), clip_text, built, 4, shape.name, llava_layout(built))


def build_llava_next(shape: ModelShape, layers: int, vision_layers: int, dtype: torch.dtype, device: torch.device,
                     seed: int = 0, size: tuple[int, int] = (672, 672)) -> BenchModel:
    """``LlavaNextForConditionalGeneration`` (llava-v1.6-vicuna: CLIP-L/336 tiles, anyres pinpoints, newline token)
    at ``shape``'s widths; one image of ``size`` (height, width) per sample."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    from .testing import word_tokenizer

    _check_depths(shape, layers, vision_layers)
    text, vision = _llama_clip_configs(shape, layers, vision_layers)
    cfg = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=4, vision_feature_layer=-2,
                          vision_feature_select_strategy="default", image_grid_pinpoints=NEXT_PINPOINTS,
                          projector_hidden_act="gelu")
    cfg._attn_implementation = "sdpa"
    model = _finish(_construct(LlavaNextForConditionalGeneration, cfg, dtype, device), seed, device)
    clip_text = _clip_text(shape.vision_hidden, dtype, device, seed)
    built = dataclasses.replace(shape, layers=layers, vision_layers=vision_layers)
    layout = next_layout(built, size, NEXT_PINPOINTS)
    return BenchModel(model, word_tokenizer(), clip_text, built, 4, shape.name, layout)


def build_qwen2_5_vl(shape: ModelShape, layers: int, vision_layers: int, dtype: torch.dtype, device: torch.device,
                     seed: int = 0, size: Optional[tuple[int, int]] = None) -> BenchModel:
    """``Qwen2_5_VLForConditionalGeneration`` at ``shape``'s widths (7B: ViT 1280 wide, SwiGLU 3420, window 112 px,
    full attention every 8th block and in the last one, 2x2 merger; Qwen2 LLM with 4 KV heads, M-RoPE 16/24/24);
    one image of ``size`` (default the preset's square) per sample. DeSAP uses the adapter's fallback (no CLIP)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from .testing import QWEN_SPECIALS, word_tokenizer

    _check_depths(shape, layers, vision_layers)
    built = dataclasses.replace(shape, layers=layers, vision_layers=vision_layers)
    layout = qwen_layout(built, size or (shape.image_size, shape.image_size))
    tok = word_tokenizer(specials=QWEN_SPECIALS, bos=False)
    ids = tok.convert_tokens_to_ids(QWEN_SPECIALS)
    vision = dict(depth=vision_layers, hidden_size=shape.vision_hidden, intermediate_size=shape.vision_ffn,
                  num_heads=shape.vision_heads, patch_size=shape.patch_size, spatial_merge_size=layout.merge,
                  temporal_patch_size=2, window_size=QWEN_WINDOW, fullatt_block_indexes=list(layout.full_blocks),
                  out_hidden_size=shape.hidden)
    head_half = shape.hidden // shape.heads // 2
    section = [head_half // 4, 3 * head_half // 8, 3 * head_half // 8]  # 7B: 16, 24, 24
    text = dict(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.ffn,
                num_hidden_layers=layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                max_position_embeddings=32768, rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": section})
    cfg = Qwen2_5_VLConfig(vision_config=vision, text_config=text, image_token_id=ids[4], video_token_id=ids[7],
                           vision_start_token_id=ids[5], vision_end_token_id=ids[6], tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    model = _finish(_construct(Qwen2_5_VLForConditionalGeneration, cfg, dtype, device), seed, device)
    return BenchModel(model, tok, None, built, ids[4], shape.name, layout)


def _tiny_shape(name: str, source: str, model: nn.Module, visual_tokens: int, vc: Any, image_size: int) -> ModelShape:
    """A ``ModelShape`` read off a tiny test model's config."""
    tc = model.config.text_config
    return ModelShape(name, source, tc.num_hidden_layers, tc.hidden_size, tc.intermediate_size,
                      tc.num_attention_heads, tc.num_key_value_heads, visual_tokens, vocab=tc.vocab_size,
                      vision_layers=vision_depth(vc), vision_hidden=vc.hidden_size,
                      vision_ffn=vc.intermediate_size, vision_heads=vision_heads(vc),
                      image_size=image_size, patch_size=vc.patch_size)


def _tiny_model(model: nn.Module, dtype: torch.dtype, device: torch.device) -> nn.Module:
    return _word_tokenizer_ids(model.to(device=device, dtype=dtype).eval())


def build_tiny(dtype: torch.dtype, device: torch.device, seed: int = 0) -> BenchModel:
    """The tiny test model of ``vlprune.testing`` (CPU tests: seconds, not minutes)."""
    from .testing import tiny_llava
    from .text import load_clip_text

    t = tiny_llava(seed=seed, grid=6, layers=4)
    model = _tiny_model(t.model, dtype, device)
    clip = t.clip.to(device=device, dtype=dtype).eval()
    vc = model.config.vision_config
    shape = _tiny_shape("tiny", "vlprune.testing.tiny_llava", model, t.grid * t.grid, vc, vc.image_size)
    return BenchModel(model, t.tokenizer, load_clip_text(clip, t.clip_tokenizer), shape, 4, "tiny", llava_layout(shape))


def build_tiny_next(dtype: torch.dtype, device: torch.device, seed: int = 0,
                    size: tuple[int, int] = (32, 32)) -> BenchModel:
    """``vlprune.testing.tiny_llava_next`` (16 px tiles of 4x4 patches): 32x32 images = base + 2x2 tiles,
    16 + 64 patches + 8 newlines."""
    from .testing import tiny_llava_next
    from .text import load_clip_text

    t = tiny_llava_next(seed=seed, layers=4)
    model = _tiny_model(t.model, dtype, device)
    clip = t.clip.to(device=device, dtype=dtype).eval()
    vc = model.config.vision_config
    shape = _tiny_shape("tiny-next", "vlprune.testing.tiny_llava_next", model, 0, vc, vc.image_size)
    layout = next_layout(shape, size, [list(p) for p in model.config.image_grid_pinpoints])
    shape = dataclasses.replace(shape, visual_tokens=layout.patches)
    return BenchModel(model, t.tokenizer, load_clip_text(clip, t.clip_tokenizer), shape, 4, "tiny-next", layout)


def build_tiny_qwen(dtype: torch.dtype, device: torch.device, seed: int = 0,
                    size: tuple[int, int] = (40, 56)) -> BenchModel:
    """``vlprune.testing.tiny_qwen2_5_vl`` (4 px patches, 16 px windows): 40x56 images = 10x14 patches, 5x7 merged
    tokens, windows of 2x2 merged tokens with partial ones at the bottom and right edges."""
    from .testing import tiny_qwen2_5_vl

    t = tiny_qwen2_5_vl(seed=seed, layers=4)
    model = _tiny_model(t.model, dtype, device)
    vc = model.config.vision_config
    shape = _tiny_shape("tiny-qwen", "vlprune.testing.tiny_qwen2_5_vl", model, 0, vc, size[0])
    layout = qwen_layout(shape, size, vc.window_size, vc.spatial_merge_size, tuple(vc.fullatt_block_indexes))
    shape = dataclasses.replace(shape, visual_tokens=layout.patches)
    return BenchModel(model, t.tokenizer, None, shape, model.config.image_token_id, "tiny-qwen", layout)


TINY = {"tiny": build_tiny, "tiny-next": build_tiny_next, "tiny-qwen": build_tiny_qwen}


def build(model: str, layers: Optional[int], vision_layers: Optional[int], dtype: torch.dtype,
          device: torch.device, seed: int = 0, image_size: Optional[tuple[int, int]] = None) -> BenchModel:
    """The model named by a preset (``--layers`` / ``--vision-layers`` trim it) or a tiny test model."""
    key = model.lower()
    llava_1_5 = key == "tiny" or key.startswith("llava-1.5")
    if image_size is not None and llava_1_5:
        raise typer.BadParameter("LLaVA-1.5 takes one 336x336 image: --image-size is for llava-next / qwen2.5-vl",
                                 param_hint="--image-size")
    if key in TINY:
        size = {} if image_size is None else {"size": image_size}
        return TINY[key](dtype, device, seed, **size)
    shape = get_preset(key)
    n_layers = layers or shape.layers
    v_layers = vision_layers_for(shape, n_layers, vision_layers)
    if key.startswith("llava-1.5"):
        return build_llava(shape, n_layers, v_layers, dtype, device, seed)
    if key.startswith("llava-next"):
        return build_llava_next(shape, n_layers, v_layers, dtype, device, seed, image_size or (672, 672))
    if key.startswith("qwen2.5-vl"):
        return build_qwen2_5_vl(shape, n_layers, v_layers, dtype, device, seed, image_size)
    raise NotImplementedError(f"{model}: no benchmark builder")


QUESTION_WORDS = ("what color is the red circle left of the blue square how many green triangle are there above "
                  "star below yes no one two three shape in picture").split()


def make_inputs(bm: BenchModel, batch: int, prompt_tokens: int, device: torch.device, dtype: torch.dtype,
                seed: int = 0) -> dict[str, torch.Tensor]:
    """One random image per sample and ``prompt_tokens`` text tokens in all (the question is padded/cut to fit),
    no padding (every sample the same length). Per family, as its processor would lay them out:

    - LLaVA-1.5: "<s> user : <image>*576 {question} assistant :", pixel_values (B, 3, 336, 336);
    - LLaVA-NeXT: the same with ``patches + newlines`` placeholders, pixel_values (B, tiles, 3, 336, 336) and
      image_sizes (B, 2);
    - Qwen2.5-VL: "user : <|vision_start|><image>*(h w / 4)<|vision_end|> {question} assistant :", pixel_values
      (B * h * w, 3 * 2 * 14 * 14) flattened patches (random, so their order does not matter), image_grid_thw
      (B, 3) = (1, h, w) in patches, mm_token_type_ids.
    """
    tok = bm.tokenizer
    qwen = bm.family == "qwen2_5_vl"
    head = tok("user :", add_special_tokens=not qwen)["input_ids"]
    tail_end = tok("assistant :", add_special_tokens=False)["input_ids"]
    image = [bm.image_token_id] * bm.image_tokens
    if qwen:
        image = tok.convert_tokens_to_ids(["<|vision_start|>"]) + image + tok.convert_tokens_to_ids(["<|vision_end|>"])
    n_q = max(1, prompt_tokens - len(head) - len(tail_end) - (len(image) - bm.image_tokens))
    words = [QUESTION_WORDS[i % len(QUESTION_WORDS)] for i in range(n_q)]
    q = tok(" ".join(words), add_special_tokens=False)["input_ids"][:n_q]
    ids = torch.tensor([head + image + q + tail_end] * batch, device=device)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    gen = torch.Generator().manual_seed(seed)
    lay = bm.layout
    if qwen:
        vc = bm.model.config.vision_config
        gh, gw = (s // vc.patch_size for s in lay.size)
        dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
        out["pixel_values"] = torch.randn(batch * gh * gw, dim, generator=gen).to(device=device, dtype=dtype)
        out["image_grid_thw"] = torch.tensor([[1, gh, gw]] * batch, device=device)
        out["mm_token_type_ids"] = (ids == bm.image_token_id).int()
        return out
    tile = bm.shape.image_size
    shape = (batch, lay.tiles, 3, tile, tile) if bm.family == "llava_next" else (batch, 3, tile, tile)
    out["pixel_values"] = torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)
    if bm.family == "llava_next":
        out["image_sizes"] = torch.tensor([list(lay.size)] * batch, device=device)
    return out


def method_kwargs(method: str, bm: BenchModel) -> dict[str, Any]:
    if method == "desap":
        clip = {} if bm.clip_text is None else {"clip": bm.clip_text}  # None: the adapter's own question encoder
        return {**clip, "processor": bm.tokenizer}
    return {}


# -- FLOPs of the whole prefill ----------------------------------------------------------------------------
def llm_layer_flops(n: int, shape: ModelShape) -> float:
    """One decoder layer over n tokens: eq. 6 (``flops.layer_flops``) with the key/value projections at their real
    width ``d * kv_heads / heads``: ``4 n d^2 + 2 n^2 d + 3 n d m - 2 n d (d - d_kv)`` (eq. 6 when there is no GQA)."""
    d_kv = shape.hidden * shape.kv_heads // shape.heads
    return layer_flops(n, shape.hidden, shape.ffn) - 2 * n * shape.hidden * (shape.hidden - d_kv)


def clip_tower_flops(shape: ModelShape, blocks: int) -> float:
    """One CLIP tile, n = patches + 1 ([CLS]): ``n 3 p^2 D_v + blocks (4 n D_v^2 + 2 n^2 D_v + 2 n D_v M_v)``."""
    n = (shape.image_size // shape.patch_size) ** 2 + 1
    dv, mv = shape.vision_hidden, shape.vision_ffn
    return n * 3 * shape.patch_size**2 * dv + blocks * (4 * n * dv * dv + 2 * n * n * dv + 2 * n * dv * mv)


def qwen_vit_flops(shape: ModelShape, image: ImageLayout) -> float:
    """Qwen2.5-VL ViT + merger on one image of N = (h/p)(w/p) patches, width D_v, SwiGLU width M_v, L_v blocks:

        patch embedding  N * (3 * 2 * p^2) * D_v                     (3 channels x 2 frames per patch)
        every block      4 N D_v^2 + 3 N D_v M_v                     (qkv + proj; gate, up, down)
        attention        2 D_v * N^2          in a full-attention block,
                         2 D_v * sum_w n_w^2  in a window block (n_w patches in window w: 112 px = 8x8 patches,
                                              smaller at the bottom / right edges)
        merger           (N / 4) * ((4 D_v)^2 + 4 D_v d)            (2x2 patches -> one d-wide LLM token)

    Every method runs all of it: Qwen2.5-VL selects among the merger's outputs."""
    n = image.patches * image.merge**2
    dv, mv, unit = shape.vision_hidden, shape.vision_ffn, image.merge**2
    attn = 0
    for block in range(shape.vision_layers):
        attn += n * n if block in image.full_blocks else sum(w * w for w in image.windows)
    blocks = shape.vision_layers * (4 * n * dv * dv + 3 * n * dv * mv) + 2 * dv * attn
    merger = image.patches * ((unit * dv) ** 2 + unit * dv * shape.hidden)
    return n * QWEN_PATCH_IN * shape.patch_size**2 * dv + blocks + merger


def prefill_flops(shape: ModelShape, method: Optional[str], keep: Optional[int], text_tokens: int,
                  batch: int = 1, image: Optional[ImageLayout] = None, newlines: Optional[int] = None) -> float:
    """FLOPs of one prefill at the built depths, in the papers' convention (eq. 6 counts a multiply-add once).

    ``image`` is the layout of the one image per sample (default: LLaVA-1.5 from ``shape``).
    vision tower: LLaVA-1.5 / NeXT: ``clip_tower_flops`` per tile (NeXT: base + grid tiles); Qwen2.5-VL:
        ``qwen_vit_flops`` (windows, full-attention blocks, merger).
    projector (LLaVA: 2-layer MLP) on the k tokens handed to the LLM: k * (D_v d + d^2); the unpruned model
        projects every tile's patches (NeXT unpads after projecting). Qwen's merger is counted with its ViT.
    LLM: sum over layers l of ``llm_layer_flops`` (eq. 6; GQA's narrower k/v for Qwen) with n_l = (visual tokens at
        layer l) + text tokens (visual tokens per layer from ``flops.tokens_per_layer``: encoder methods k
        everywhere, FastV all tokens before layer K). LLaVA-NeXT: the newline tokens are LLM tokens too: the
        unpruned model has one per grid row; encoder-side methods keep one per row that kept a patch: ``newlines``
        if given (the bench passes the count it measured), else one per row, the most there can be; in-LLM
        methods see and prune newlines like any placeholder (their k includes them).
    The vision tower runs on every patch for every method (selection happens at its output). The unpatched
    model and in-LLM methods run all L_v blocks; on LLaVA(-NeXT) encoder-side methods stop at the feature layer
    (``hidden_states[-2]``: L_v - 1 blocks), since the last block only feeds outputs LLaVA discards; on Qwen2.5-VL
    they run the whole ViT. The cost of the selection itself is not counted (it is overhead the measured
    speedup has to pay for). The depths are the built ones, so a trimmed LLM with a full vision tower gets a
    correspondingly smaller bound.
    """
    image = image or llava_layout(shape)
    stage = None if method in (None, "none") else get_stage(method)
    encoder_side = stage is not None and stage != "llm"
    if image.family == "qwen2_5_vl":
        vision, projector = qwen_vit_flops(shape, image), 0
        counts = tokens_per_layer(method, keep, shape, image.patches)
        extra = 0
    else:
        blocks = shape.vision_layers - (1 if encoder_side else 0)  # feature layer -2: the last block is skipped
        vision = image.tiles * clip_tower_flops(shape, blocks)
        tile_patches = (shape.image_size // shape.patch_size) ** 2
        in_llm = stage == "llm"
        counts = tokens_per_layer(method, keep, shape, image.image_tokens if in_llm else image.patches)
        extra = 0 if in_llm else (image.newlines if newlines is None or not encoder_side else newlines)
        projected = counts[0] if encoder_side else image.tiles * tile_patches
        projector = projected * (shape.vision_hidden * shape.hidden + shape.hidden * shape.hidden)
    llm = sum(llm_layer_flops(c + extra + text_tokens, shape) for c in counts)
    return float(batch * (vision + projector + llm))


def get_stage(method: str) -> str:
    from .registry import get_method

    return get_method(method).stage

# -- measuring ---------------------------------------------------------------------------------------------
class Clock:
    """Wall time; on CUDA, events: for whole calls, and as marks inside the pass (hooks record an event and never
    synchronise, so timing the parts does not serialise the host and the device and slow the pass it measures)."""

    def __init__(self, device: torch.device, kind: str = "wall") -> None:
        if kind not in ("wall", "cpu"):
            raise typer.BadParameter("--clock must be wall or cpu", param_hint="--clock")
        self.cuda = device.type == "cuda"
        # "cpu": process CPU time (all threads), robust to other processes on a shared CPU; with --threads 1 it is
        # the compute time of the pass. Meaningless on CUDA (the GPU works asynchronously): wall time there.
        self._t = time.process_time if (kind == "cpu" and not self.cuda) else time.perf_counter
        self.kind = "wall" if self.cuda else kind

    def mark(self) -> Any:
        """A point of the pass: a recorded CUDA event, or a host clock reading."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return self._t()

    def ms(self, start: Any, end: Any) -> float:
        """Milliseconds between two marks (on CUDA, waits until the device has passed ``end``)."""
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end)
        return 1e3 * (end - start)

    def time(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        """(milliseconds, result) of ``fn()``."""
        if self.cuda:
            torch.cuda.synchronize()
        start = self.mark()
        out = fn()
        return self.ms(start, self.mark()), out


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - no procfs: lifetime maximum only
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Peak memory (MB) that ``fn()`` needs above what was allocated before it, and its result."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20, out
    _malloc_trim()
    before = _rss_bytes()
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.0005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        out = fn()
        peak[0] = max(peak[0], _rss_bytes())
    finally:
        stop.set()
        thread.join()
    return (peak[0] - before) / 2**20, out


def kv_cache_mb(cache: Any) -> float:
    """Bytes of every key/value tensor held by a transformers cache (DynamicCache layers or legacy tuples)."""
    if cache is None:
        return 0.0
    total = 0
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
    else:
        for pair in cache:
            for t in pair:
                total += t.numel() * t.element_size()
    return total / 2**20


def timed_parts(model: nn.Module) -> tuple[nn.Module, nn.Module, list[nn.Module], nn.Module]:
    """(projector, patch embedding, vision blocks, LLM) of a LLaVA / LLaVA-NeXT / Qwen2.5-VL model."""
    inner = model.model
    visual = getattr(inner, "visual", None)
    if visual is not None:  # Qwen2.5-VL: the ViT's merger projects into the LLM
        return visual.merger, visual.patch_embed, list(visual.blocks), inner.language_model
    tower = inner.vision_tower
    return inner.multi_modal_projector, tower.embeddings, list(tower.encoder.layers), inner.language_model


class StepTimer:
    """Times the parts of one prefill with hooks that set clock marks: vision tower, projector, entry into the LLM,
    in-LLM pruning. Read the parts after the pass."""

    def __init__(self, model: nn.Module, clock: Clock) -> None:
        self.clock = clock
        self.t0: Any = None
        self.vision_start: Any = None
        self.vision_end: Any = None
        self.llm_entry: Any = None
        self.end: Any = None
        self.projector_spans: list[tuple[Any, Any]] = []
        self.prune_spans: list[tuple[Any, Any]] = []
        self._projector_start: Any = None
        self._handles = []
        proj, embed, blocks, llm = timed_parts(model)
        self._handles.append(proj.register_forward_pre_hook(self._projector_in))
        self._handles.append(proj.register_forward_hook(self._projector_out))
        # The vision forward is timed from the patch embedding to the last block that runs: the unpatched model
        # calls the tower's forward, encoder-side pruning on LLaVA runs the blocks up to the feature layer itself.
        self._handles.append(embed.register_forward_pre_hook(self._vision_in))
        for block in blocks:
            self._handles.append(block.register_forward_hook(self._vision_block_done))
        self._handles.append(llm.register_forward_pre_hook(self._enter_llm))
        self._wrapped = None

    def _projector_in(self, module, args):
        if not self.projector_spans:
            self._projector_start = self.clock.mark()

    def _projector_out(self, module, args, out):
        """Only the first call per pass counts: DeSAP on Qwen2.5-VL runs the merger again on its decoupled
        attention, which is selection work, not the projection of the image."""
        if self._projector_start is not None:
            self.projector_spans.append((self._projector_start, self.clock.mark()))
            self._projector_start = None

    def _vision_in(self, module, args):
        if self.vision_start is None:
            self.vision_start = self.clock.mark()

    def _vision_block_done(self, module, args, out):
        self.vision_end = self.clock.mark()

    def _enter_llm(self, module, args):
        if self.llm_entry is None:
            self.llm_entry = self.clock.mark()

    def wrap_pruner(self, pruner: Any) -> None:
        """Mark the in-LLM pruner's per-layer prefill step (an instance attribute, removed later)."""
        orig = pruner._prefill

        def timed(*args, **kwargs):
            start = self.clock.mark()
            try:
                return orig(*args, **kwargs)
            finally:
                self.prune_spans.append((start, self.clock.mark()))

        pruner.__dict__["_prefill"] = timed
        self._wrapped = pruner

    def start(self) -> None:
        self.vision_start = self.vision_end = self.llm_entry = self.end = self._projector_start = None
        self.projector_spans, self.prune_spans = [], []
        self.t0 = self.clock.mark()

    def finish(self) -> None:
        """Mark the end of the pass (right after the call returns)."""
        self.end = self.clock.mark()

    def vision_ms(self) -> float:
        """The vision tower's forward: patch embedding to the last block that ran."""
        return self.clock.ms(self.vision_start, self.vision_end) if self.vision_start is not None else 0.0

    def llm_ms(self) -> float:
        """From the LLM's entry to the end of the pass: decoder layers (in-LLM pruning included), final norm, logits."""
        return self.clock.ms(self.llm_entry, self.end) if self.llm_entry is not None and self.end is not None else 0.0

    def pre_llm_overhead_ms(self) -> float:
        """Time from the call to the LLM's entry that is neither vision tower nor projector."""
        if self.llm_entry is None:
            return 0.0
        projector = sum(self.clock.ms(a, b) for a, b in self.projector_spans)
        return self.clock.ms(self.t0, self.llm_entry) - self.vision_ms() - projector

    def llm_prune_ms(self) -> float:
        return sum(self.clock.ms(a, b) for a, b in self.prune_spans)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        if self._wrapped is not None:
            self._wrapped.__dict__.pop("_prefill", None)


def cached_tokens(cache: Any) -> Optional[list[int]]:
    """Tokens the first and the last layer cached in the prefill: the LLM's input length, and what is left after
    in-LLM pruning (checks the token counts the FLOPs assume, e.g. LLaVA-NeXT's kept newlines)."""
    layers = getattr(cache, "layers", None)
    if not layers or getattr(layers[0], "keys", None) is None:
        return None
    return [int(layers[0].keys.shape[-2]), int(layers[-1].keys.shape[-2])]


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


class Cell:
    """One (method, keep) of the benchmark; ``session()`` patches the model for one pass and unpatches it."""

    def __init__(self, bm: BenchModel, inputs: dict[str, torch.Tensor], method: str, keep: Optional[int],
                 clock: Clock) -> None:
        self.bm, self.inputs, self.method, self.keep, self.clock = bm, inputs, method, keep, clock
        self.prefills: list[float] = []
        self.ttfts: list[float] = []
        self.pre_llm: list[float] = []
        self.llm_prune: list[float] = []
        self.vision: list[float] = []
        self.llm: list[float] = []
        self.peak = self.kv = float("nan")
        self.llm_tokens: Optional[list[int]] = None

    @property
    def label(self) -> str:
        return f"{self.method} {self.keep if self.keep is not None else 'full'}"

    def _enter(self) -> StepTimer:
        from . import api

        model = self.bm.model
        if self.method != "none":
            api.apply(model, self.method, self.keep, **method_kwargs(self.method, self.bm))
        timer = StepTimer(model, self.clock)
        state = model.__dict__.get("_vlprune_state")
        if state is not None and state.pruner is not None:
            timer.wrap_pruner(state.pruner)
        return timer

    def _exit(self, timer: StepTimer) -> None:
        from . import api

        timer.remove()
        api.remove(self.bm.model)

    def _prefill(self):
        with torch.inference_mode():
            return self.bm.model(**self.inputs, use_cache=True, logits_to_keep=1)

    def warm(self, warmup: int, device: torch.device) -> None:
        """Warm-up passes; the first measures peak memory and the KV cache."""
        timer = self._enter()
        try:
            for i in range(max(1, warmup)):
                timer.start()
                if i == 0:
                    self.peak, out = peak_memory_mb(self._prefill, device)
                    self.kv = kv_cache_mb(output_cache(out))
                    self.llm_tokens = cached_tokens(output_cache(out))
                    del out
                else:
                    self._prefill()
        finally:
            self._exit(timer)

    def time_prefill(self) -> None:
        timer = self._enter()
        try:
            timer.start()
            ms, out = self.clock.time(self._prefill)
            timer.finish()
            del out
            self.pre_llm.append(timer.pre_llm_overhead_ms())
            self.llm_prune.append(timer.llm_prune_ms())
            self.vision.append(timer.vision_ms())
            self.llm.append(timer.llm_ms())
        finally:
            self._exit(timer)
        self.prefills.append(ms)

    def time_first_token(self) -> None:
        timer = self._enter()
        try:
            with torch.inference_mode():
                ms, _ = self.clock.time(
                    lambda: self.bm.model.generate(**self.inputs, max_new_tokens=1, do_sample=False))
        finally:
            self._exit(timer)
        self.ttfts.append(ms)

    def summary(self) -> dict:
        return {
            "method": self.method, "keep": self.keep, "prefill_ms": _median(self.prefills),
            "prefill_min_ms": min(self.prefills) if self.prefills else float("nan"),
            "ttft_ms": _median(self.ttfts), "pre_llm_ms": _median(self.pre_llm),
            "llm_prune_ms": _median(self.llm_prune), "vision_ms": _median(self.vision), "llm_ms": _median(self.llm),
            "peak_mem_mb": self.peak, "kv_cache_mb": self.kv,
            "llm_tokens": self.llm_tokens,
        }


def run_bench(model: str = "llava-1.5-7b", layers: Optional[int] = None, vision_layers: Optional[int] = None,
              batch: int = 1, dtype: str = "auto", device: str = "cpu", methods: list[str] | None = None,
              keeps: list[int] | None = None, repeats: int = 3, warmup: int = 1, prompt_tokens: int = 32,
              seed: int = 0, progress: Optional[Callable[[str, int, int], None]] = None, clock: str = "wall",
              image_size: Optional[tuple[int, int]] = None) -> dict:
    """Build, measure every (method, keep), and return the JSON report (``results``: the ``none`` row first)."""
    from .registry import get_method

    methods = methods or ["none", "desap", "vispruner", "visionzip", "fastv", "random"]
    keeps = keeps or [64, 128, 192]
    dev = torch.device(device)
    dtype, dtype_reason = pick_dtype(dtype, dev)
    if dtype not in DTYPES:
        raise typer.BadParameter(f"--dtype must be auto or one of {sorted(DTYPES)}", param_hint="--dtype")
    torch_dtype = DTYPES[dtype]
    torch.manual_seed(seed)
    t_build = time.perf_counter()
    bm = build(model, layers, vision_layers, torch_dtype, dev, seed, image_size)
    build_s = time.perf_counter() - t_build
    inputs = make_inputs(bm, batch, prompt_tokens, dev, torch_dtype, seed)
    text_tokens = int(inputs["input_ids"].shape[1]) - bm.image_tokens
    clock = Clock(dev, clock)
    cells: list[tuple[str, Optional[int]]] = [("none", None)] if "none" in methods else []
    skipped: list[dict] = []
    for name in methods:
        if name == "none":
            continue
        try:
            get_method(name)
        except ValueError as e:
            skipped.append({"method": name, "reason": str(e)})
            continue
        cells += [(name, k) for k in keeps]
    # Warm every cell, then time the cells round-robin (repeat r of every cell, then r+1, ...) so a change of
    # load on a shared machine hits all cells alike instead of whichever cell happened to be running.
    total = len(cells) * (max(1, warmup) + 2 * repeats)
    done = [0]

    def step(label: str, n: int = 1) -> None:
        done[0] += n
        if progress:
            progress(label, done[0], total)

    live: list[Cell] = []
    for name, k in cells:
        cell = Cell(bm, inputs, name, k, clock)
        try:
            cell.warm(warmup, dev)
            live.append(cell)
        except (ValueError, NotImplementedError) as e:
            skipped.append({"method": name, "keep": k, "reason": str(e)})
            total -= 2 * repeats
        step(cell.label, max(1, warmup))
    for _ in range(repeats):
        for cell in live:
            cell.time_prefill()
            step(cell.label)
    for _ in range(repeats):
        for cell in live:
            cell.time_first_token()
            step(cell.label)
    raw = [c.summary() for c in live]

    full = next((r for r in raw if r["method"] == "none"), None)
    base_overhead = full["pre_llm_ms"] if full else 0.0
    full_flops = prefill_flops(bm.shape, None, None, text_tokens, batch, bm.layout)
    results = []
    for r in raw:
        m, k = r["method"], r["keep"]
        if m == "none":
            prune = 0.0
        else:
            stage = get_method(m).stage
            prune = 0.0
            if "encoder" in stage:
                prune += r["pre_llm_ms"] - base_overhead
            if "llm" in stage:
                prune += r["llm_prune_ms"]
        flops = prefill_flops(bm.shape, None if m == "none" else m, k, text_tokens, batch, bm.layout,
                              kept_newlines(bm, m, k, r["llm_tokens"], text_tokens))
        bound = full_flops / flops
        speedup = full["prefill_ms"] / r["prefill_ms"] if full else None
        results.append({
            "method": m, "keep": k if k is not None else bm.patches,
            "prefill_ms": r["prefill_ms"], "prefill_min_ms": r["prefill_min_ms"], "prune_ms": prune, "ttft_ms": r["ttft_ms"],
            "vision_ms": r["vision_ms"], "llm_ms": r["llm_ms"],
            "peak_mem_mb": r["peak_mem_mb"], "kv_cache_mb": r["kv_cache_mb"], "llm_tokens": r["llm_tokens"],
            "tflops": method_tflops(None if m == "none" else m, k, bm.shape, bm.patches),
            "prefill_tflops": flops / 1e12,
            "speedup": speedup, "flops_bound_speedup": bound,
            "efficiency": (speedup / bound) if speedup is not None else None,
        })
    report = {
        "device": device_name(dev), "model": bm.name, "family": bm.family, "layers": bm.shape.layers,
        "vision_layers": bm.shape.vision_layers, "batch": batch, "dtype": dtype,
        "dtype_reason": dtype_reason, "cpu_matmul": matmul_path() if dev.type == "cpu" else None,
        "image_size": list(bm.layout.size), "tiles": bm.layout.tiles, "newlines": bm.layout.newlines,
        "visual_tokens": bm.patches, "text_tokens": text_tokens, "repeats": repeats, "warmup": warmup,
        "threads": torch.get_num_threads(), "clock": clock.kind, "build_s": build_s, "torch": torch.__version__,
        "results": results, "skipped": skipped,
    }
    report["targets"] = check_targets(report)
    return report


def kept_newlines(bm: BenchModel, method: str, keep: Optional[int], llm_tokens: Optional[list[int]],
                  text_tokens: int) -> Optional[int]:
    """LLaVA-NeXT newline tokens per sample an encoder-side method handed the LLM, from the first layer's cache
    (LLM input = kept tokens + newlines + text; a batch is padded to its longest sample, which is what the LLM
    computes on); None where there is nothing to measure."""
    if bm.family != "llava_next" or method == "none" or llm_tokens is None or keep is None:
        return None
    if get_stage(method) == "llm":
        return None
    visual = tokens_per_layer(method, keep, bm.shape, bm.patches)[0]
    return max(0, llm_tokens[0] - visual - text_tokens)
