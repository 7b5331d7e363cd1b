"""The models ``vlprune bench`` times: a preset's real transformers architecture with random weights (optionally
trimmed in depth), or a tiny test model, and one random image per sample laid out as its processor would."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import typer
from torch import nn

from .compat import vision_depth, vision_heads
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
    fixed: int = 0  # Video-LLaVA: the frames' [CLS] placeholders, which no method prunes
    slices: int = 1  # Qwen2.5-VL videos: temporal slices (2 frames each); ``windows`` are one slice's

    @property
    def image_tokens(self) -> int:
        """Image placeholders in the prompt (patches + newlines; Video-LLaVA: + the frames' [CLS])."""
        return self.patches + self.newlines + self.fixed


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
                full_blocks: Optional[tuple[int, ...]] = None, slices: int = 1) -> ImageLayout:
    """Qwen2.5-VL at native resolution: (h/p) x (w/p) patches, one LLM token per ``merge x merge`` of them, windows
    of ``window`` px cut from the top-left (edge windows are smaller, as ``get_vision_window_index``). A video has
    ``slices`` temporal slices of 2 frames, each laid out as one such image (``video_grid_thw`` = (slices, h/p,
    w/p)); ``patches`` counts the merged tokens of all of them, what ``keep`` counts for a video."""
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
    return ImageLayout("qwen2_5_vl", (h, w), 1, slices * mh * mw, 0, merge, windows, full, slices=slices)


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
    one image of ``size`` (default the preset's square) per sample, or for a video preset (``shape.frames`` > 1)
    one video of that many frames at ``size`` each. DeSAP uses the adapter's fallback (no CLIP)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from .testing import QWEN_SPECIALS, word_tokenizer

    _check_depths(shape, layers, vision_layers)
    built = dataclasses.replace(shape, layers=layers, vision_layers=vision_layers)
    layout = qwen_layout(built, size or (shape.image_size, shape.image_size), slices=qwen_slices(shape.frames))
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
    return BenchModel(model, tok, None, built, ids[7] if shape.frames > 1 else ids[4], shape.name, layout)


def qwen_slices(frames: int, temporal_patch: int = 2) -> int:
    """Temporal slices of a Qwen2.5-VL video of ``frames`` frames (the processor pairs frames: 16 -> 8); 1 for an
    image (``frames`` = 1)."""
    if frames > 1 and frames % temporal_patch:
        raise typer.BadParameter(f"a Qwen2.5-VL video needs an even number of frames (pairs of {temporal_patch}), "
                                 f"got {frames}")
    return max(1, frames // temporal_patch)


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
                    size: tuple[int, int] = (40, 56), frames: int = 1) -> BenchModel:
    """``vlprune.testing.tiny_qwen2_5_vl`` (4 px patches, 16 px windows): 40x56 images = 10x14 patches, 5x7 merged
    tokens, windows of 2x2 merged tokens with partial ones at the bottom and right edges."""
    from .testing import tiny_qwen2_5_vl

    t = tiny_qwen2_5_vl(seed=seed, layers=4)
    model = _tiny_model(t.model, dtype, device)
    vc = model.config.vision_config
    shape = _tiny_shape("tiny-qwen", "vlprune.testing.tiny_qwen2_5_vl", model, 0, vc, size[0])
    layout = qwen_layout(shape, size, vc.window_size, vc.spatial_merge_size, tuple(vc.fullatt_block_indexes),
                         slices=qwen_slices(frames))
    shape = dataclasses.replace(shape, visual_tokens=layout.patches, frames=frames)
    name = "tiny-qwen-video" if frames > 1 else "tiny-qwen"
    token = model.config.video_token_id if frames > 1 else model.config.image_token_id
    return BenchModel(model, t.tokenizer, None, shape, token, name, layout)


def build_tiny_qwen_video(dtype: torch.dtype, device: torch.device, seed: int = 0,
                          size: tuple[int, int] = (40, 56)) -> BenchModel:
    """``tiny-qwen`` on one 4-frame video per sample: 2 temporal slices of 5x7 merged tokens (70 in all)."""
    return build_tiny_qwen(dtype, device, seed, size, frames=4)


TINY = {"tiny": build_tiny, "tiny-next": build_tiny_next, "tiny-qwen": build_tiny_qwen,
        "tiny-qwen-video": build_tiny_qwen_video}


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
    if key == "tiny-video" or key.startswith("video-llava"):
        from .speed_video import build_tiny_video, build_video_llava

        if image_size is not None:
            raise typer.BadParameter("Video-LLaVA takes 224x224 frames: --image-size is for llava-next / qwen2.5-vl",
                                     param_hint="--image-size")
        if key == "tiny-video":
            return build_tiny_video(dtype, device, seed)
        shape = get_preset(key)
        n_layers = layers or shape.layers
        return build_video_llava(shape, n_layers, vision_layers_for(shape, n_layers, vision_layers), dtype, device,
                                 seed)
    shape = get_preset(key)
    if shape.frames > 1 and not key.startswith("qwen2.5-vl"):
        raise NotImplementedError(f"{model}: the benchmark builds videos for Video-LLaVA and Qwen2.5-VL presets "
                                  "only; `vlprune flops` counts this preset")
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
      (B, 3) = (1, h, w) in patches, mm_token_type_ids; a video preset: S slices x (h w / 4) video placeholders,
      pixel_values_videos (B * S * h * w, ...), video_grid_thw (S, h, w), second_per_grid_ts 1, type ids 2.
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
    if qwen:  # an image, or a video (``lay.slices`` pairs of frames): the same flattened patches, per slice
        vc = bm.model.config.vision_config
        gh, gw = (s // vc.patch_size for s in lay.size)
        dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
        pixels = torch.randn(batch * lay.slices * gh * gw, dim, generator=gen).to(device=device, dtype=dtype)
        grid = torch.tensor([[lay.slices, gh, gw]] * batch, device=device)
        video = bm.shape.frames > 1
        if video:
            out.update(pixel_values_videos=pixels, video_grid_thw=grid,
                       second_per_grid_ts=torch.ones(batch, device=device))
        else:
            out.update(pixel_values=pixels, image_grid_thw=grid)
        out["mm_token_type_ids"] = (ids == bm.image_token_id).int() * (2 if video else 1)
        return out
    if bm.family == "video_llava":  # one video per sample: video placeholders, pixel_values_videos
        from .speed_video import video_pixels

        out["pixel_values_videos"] = video_pixels(bm, batch, gen).to(device=device, dtype=dtype)
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
