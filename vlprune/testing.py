"""Tiny random-initialised models of the real transformers classes, for tests and offline demos."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

WORDS = (
    "what color is the red green blue circle square triangle star left right of above below how many "
    "are there a an object shape in image picture yes no describe this user assistant : ? . , one two three"
).split()
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]


def word_tokenizer(specials: list[str] = SPECIALS, bos: bool = True):
    """A word-level fast tokenizer (offline) over ``WORDS``; ids: <pad>=0 <unk>=1 <s>=2 </s>=3 <image>=4."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    else:  # CLIP style: [SOT] text [EOT]
        tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"} if "<image>" in specials else None,
    )


@dataclass
class TinyLlava:
    model: Any
    clip: Any
    tokenizer: Any
    clip_tokenizer: Any
    grid: int

    def prompt_ids(self, questions: list[str], n_images: int = 1, left_pad: bool = True) -> dict[str, torch.Tensor]:
        """LLaVA-1.5 style prompts "USER: <image>*N\\n{q} ASSISTANT:" with the image tokens expanded, padded."""
        tok = self.tokenizer
        n = self.grid * self.grid
        rows = []
        for q in questions:
            head = tok("user :", add_special_tokens=True)["input_ids"]
            tail = tok(f"{q} assistant :", add_special_tokens=False)["input_ids"]
            rows.append(head + [4] * (n * n_images) + tail)
        return _pad_rows(rows, left_pad)


def tiny_clip_sharing_tower(vision: dict, tower: Any) -> tuple[Any, Any]:
    """A tiny ``CLIPModel`` (+ its word tokenizer) whose vision tower IS ``tower``'s weights, as
    openai/clip-vit-large-patch14-336 is to llava-hf's LLaVA-1.5/NeXT (DeSAP needs its text tower)."""
    from transformers import CLIPConfig, CLIPModel

    clip_tok = word_tokenizer(specials=SPECIALS[:4], bos=False)
    clip_cfg = CLIPConfig(
        vision_config=vision,
        text_config=dict(vocab_size=len(clip_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, projection_dim=24,
                         eos_token_id=3, bos_token_id=2, pad_token_id=0),
        projection_dim=24,
    )
    clip = CLIPModel(clip_cfg).eval()
    clip.vision_model.load_state_dict(tower.state_dict())
    return clip, clip_tok


def tiny_llava(seed: int = 0, grid: int = 4, patch: int = 4, layers: int = 4, attn: str = "sdpa") -> TinyLlava:
    """A tiny random ``LlavaForConditionalGeneration`` (CLIP tower + Llama) and a matching ``CLIPModel``."""
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    tok = word_tokenizer()
    vocab = len(tok)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  image_size=grid * patch, patch_size=patch, projection_dim=24)
    text = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       pad_token_id=0, bos_token_id=2, eos_token_id=3)
    cfg = LlavaConfig(vision_config=dict(model_type="clip_vision_model", **vision), text_config=text,
                      image_token_id=4, vision_feature_layer=-2, vision_feature_select_strategy="default",
                      projector_hidden_act="gelu")
    cfg._attn_implementation = attn
    model = LlavaForConditionalGeneration(cfg).eval()
    clip, clip_tok = tiny_clip_sharing_tower(vision, model.model.vision_tower)
    return TinyLlava(model, clip, tok, clip_tok, grid)


def _pad_rows(rows: list[list[int]], left_pad: bool, pad: int = 0) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if left_pad else slice(0, len(r))
        ids[i, sl] = torch.tensor(r)
        mask[i, sl] = 1
    return {"input_ids": ids, "attention_mask": mask}


@dataclass
class TinyLlavaNext:
    model: Any
    clip: Any
    tokenizer: Any
    clip_tokenizer: Any
    tile: int  # pixels of one tile (the tower's image_size)

    def images(self, sizes: list[tuple[int, int]], seed: int = 0) -> dict[str, torch.Tensor]:
        """Random tiles for images of the given (height, width): pixel_values (n, max_tiles, 3, t, t), image_sizes."""
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        cfg = self.model.config
        n = [image_size_to_num_patches(list(s), cfg.image_grid_pinpoints, self.tile) for s in sizes]
        gen = torch.Generator().manual_seed(seed)
        pv = torch.zeros(len(sizes), max(n), 3, self.tile, self.tile)
        for i, k in enumerate(n):
            pv[i, :k] = torch.randn(k, 3, self.tile, self.tile, generator=gen)
        return {"pixel_values": pv, "image_sizes": torch.tensor(sizes)}

    def tokens_per_image(self, images: dict[str, torch.Tensor]) -> list[int]:
        """Placeholders per image, read off the unpatched model's own packing (independent of vlprune)."""
        with torch.no_grad():
            out = self.model.model.get_image_features(images["pixel_values"], images["image_sizes"])
        return [f.shape[0] for f in out.pooler_output]

    def prompt_ids(self, questions: list[str], images: dict[str, torch.Tensor], per_sample: list[int],
                   left_pad: bool = True) -> dict[str, torch.Tensor]:
        """"user : <image>... {q} assistant :" per sample, ``per_sample[b]`` images each (in order)."""
        tok = self.tokenizer
        counts = iter(self.tokens_per_image(images))
        rows = []
        for q, k in zip(questions, per_sample):
            head = tok("user :", add_special_tokens=True)["input_ids"]
            body = []
            for _ in range(k):
                body += [4] * next(counts) + tok("and", add_special_tokens=False)["input_ids"]
            rows.append(head + body + tok(f"{q} assistant :", add_special_tokens=False)["input_ids"])
        return _pad_rows(rows, left_pad)


def tiny_llava_next(seed: int = 0, side: int = 4, patch: int = 4, layers: int = 4, attn: str = "sdpa",
                    vision_layers: int = 3) -> TinyLlavaNext:
    """A tiny random ``LlavaNextForConditionalGeneration`` (CLIP tower of ``vision_layers`` blocks + Llama, anyres
    pinpoints of 1x2, 2x1, 2x2 tiles) and a ``CLIPModel`` sharing its tower."""
    from transformers import LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

    torch.manual_seed(seed)
    tok = word_tokenizer()
    t = side * patch
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers, num_attention_heads=4,
                  image_size=t, patch_size=patch, projection_dim=24)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                       pad_token_id=0, bos_token_id=2, eos_token_id=3)
    cfg = LlavaNextConfig(vision_config=dict(model_type="clip_vision_model", **vision), text_config=text,
                          image_token_index=4, vision_feature_layer=-2, vision_feature_select_strategy="default",
                          image_grid_pinpoints=[[t, 2 * t], [2 * t, t], [2 * t, 2 * t]])
    cfg._attn_implementation = attn
    model = LlavaNextForConditionalGeneration(cfg).eval()
    clip, clip_tok = tiny_clip_sharing_tower(vision, model.model.vision_tower)
    return TinyLlavaNext(model, clip, tok, clip_tok, t)


QWEN_SPECIALS = SPECIALS + ["<|vision_start|>", "<|vision_end|>", "<video>"]


@dataclass
class TinyQwen:
    model: Any
    tokenizer: Any
    patch: int

    def images(self, sizes: list[tuple[int, int]], seed: int = 0) -> dict[str, torch.Tensor]:
        """Hand-built Qwen2.5-VL inputs (no torchvision): random flattened patches in the processor's order
        (2x2 merge units contiguous), ``image_grid_thw`` = (1, h/patch, w/patch) per image of (height, width)."""
        vc = self.model.config.vision_config
        dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
        thw = torch.tensor([[1, h // self.patch, w // self.patch] for h, w in sizes])
        gen = torch.Generator().manual_seed(seed)
        pv = torch.randn(int(thw.prod(-1).sum()), dim, generator=gen)
        return {"pixel_values": pv, "image_grid_thw": thw}

    def prompt_ids(self, questions: list[str], images: dict[str, torch.Tensor], per_sample: list[int],
                   left_pad: bool = True) -> dict[str, torch.Tensor]:
        """"user : <|vision_start|><image>...<|vision_end|> {q} assistant :" with mm_token_type_ids."""
        tok = self.tokenizer
        m = self.model.config.vision_config.spatial_merge_size
        counts = iter((images["image_grid_thw"].prod(-1) // (m * m)).tolist())
        vs, ve = tok.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>"])
        rows = []
        for q, k in zip(questions, per_sample):
            body = tok("user :", add_special_tokens=False)["input_ids"]
            for _ in range(k):
                body += [vs] + [4] * next(counts) + [ve]
            rows.append(body + tok(f"{q} assistant :", add_special_tokens=False)["input_ids"])
        out = _pad_rows(rows, left_pad)
        out["mm_token_type_ids"] = (out["input_ids"] == 4).int()
        return out

    def videos(self, sizes: list[tuple[int, int]], frames: int = 4, seed: int = 1,
               seconds: float = 1.0) -> dict[str, torch.Tensor]:
        """Hand-built Qwen2.5-VL video inputs: ``frames`` frames of (height, width) per video, i.e.
        ``video_grid_thw`` = (frames / temporal_patch_size, h/patch, w/patch), ``second_per_grid_ts`` = ``seconds``."""
        vc = self.model.config.vision_config
        dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
        t = frames // vc.temporal_patch_size
        thw = torch.tensor([[t, h // self.patch, w // self.patch] for h, w in sizes])
        gen = torch.Generator().manual_seed(seed)
        pv = torch.randn(int(thw.prod(-1).sum()), dim, generator=gen)
        return {"pixel_values_videos": pv, "video_grid_thw": thw,
                "second_per_grid_ts": torch.full((len(sizes),), float(seconds))}

    def mixed_prompt_ids(self, questions: list[str], inputs: dict[str, torch.Tensor], items: list[str],
                         left_pad: bool = True) -> dict[str, torch.Tensor]:
        """Prompts whose sample b holds the images ("i") and videos ("v") of ``items[b]`` in that order, each
        wrapped in <|vision_start|> ... <|vision_end|>; ``mm_token_type_ids`` 1 for images, 2 for videos."""
        tok = self.tokenizer
        m = self.model.config.vision_config.spatial_merge_size
        video_id = self.model.config.video_token_id
        counts = {kind: iter((inputs[key].prod(-1) // (m * m)).tolist() if key in inputs else [])
                  for kind, key in (("i", "image_grid_thw"), ("v", "video_grid_thw"))}
        vs, ve = tok.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>"])
        rows = []
        for q, kinds in zip(questions, items):
            body = tok("user :", add_special_tokens=False)["input_ids"]
            for kind in kinds:
                body += [vs] + [4 if kind == "i" else video_id] * next(counts[kind]) + [ve]
            rows.append(body + tok(f"{q} assistant :", add_special_tokens=False)["input_ids"])
        out = _pad_rows(rows, left_pad)
        out["mm_token_type_ids"] = (out["input_ids"] == 4).int() + 2 * (out["input_ids"] == video_id).int()
        return out


def tiny_qwen2_5_vl(seed: int = 0, patch: int = 4, layers: int = 4, attn: str = "sdpa") -> TinyQwen:
    """A tiny random ``Qwen2_5_VLForConditionalGeneration``: 2 ViT blocks (a window block, then a full-attention
    one), windows of 2x2 merged tokens (16 px), 2x2 merger, M-RoPE sections (2, 3, 3)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    tok = word_tokenizer(specials=QWEN_SPECIALS, bos=False)
    ids = tok.convert_tokens_to_ids(QWEN_SPECIALS)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=patch, spatial_merge_size=2,
                  temporal_patch_size=2, window_size=4 * patch, fullatt_block_indexes=[1], out_hidden_size=64)
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                pad_token_id=0, bos_token_id=2, eos_token_id=3)
    cfg = Qwen2_5_VLConfig(vision_config=vision, text_config=text, image_token_id=ids[4], video_token_id=ids[7],
                           vision_start_token_id=ids[5], vision_end_token_id=ids[6])
    cfg._attn_implementation = attn
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    return TinyQwen(model, tok, patch)


@dataclass
class TinyVideoLlava:
    model: Any
    clip: Any
    tokenizer: Any
    clip_tokenizer: Any
    grid: int  # patches per side of one frame / image

    def pixels(self, images: int = 0, videos: int = 0, frames: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
        """Random ``pixel_values`` (images, 3, s, s) and ``pixel_values_videos`` (videos, frames, 3, s, s); videos
        of ``frames`` frames (a Video-LLaVA processor samples 8)."""
        import inspect

        s = self.model.config.vision_config.image_size
        gen = torch.Generator().manual_seed(seed)
        out = {}
        # the image pixels are ``pixel_values_images`` before transformers 5.23
        key = "pixel_values" if "pixel_values" in inspect.signature(type(self.model).forward).parameters \
            else "pixel_values_images"
        if images:
            out[key] = torch.randn(images, 3, s, s, generator=gen)
        if videos:
            out["pixel_values_videos"] = torch.randn(videos, frames, 3, s, s, generator=gen)
        return out

    def prompt_ids(self, questions: list[str], items: list[str], frames: int = 4,
                   left_pad: bool = True) -> dict[str, torch.Tensor]:
        """"user : <image|video>... {q} assistant :" per sample; ``items[b]`` names its items in order ("iv": an
        image then a video); a video is ``frames`` x (1 + grid^2) placeholders (each frame's [CLS] + patches)."""
        tok = self.tokenizer
        n = self.grid * self.grid
        video_id = self.model.config.video_token_id
        rows = []
        for q, kinds in zip(questions, items):
            body = tok("user :", add_special_tokens=True)["input_ids"]
            for kind in kinds:
                body += [4] * n if kind == "i" else [video_id] * (frames * (n + 1))
            rows.append(body + tok(f"{q} assistant :", add_special_tokens=False)["input_ids"])
        return _pad_rows(rows, left_pad)


def tiny_video_llava(seed: int = 0, grid: int = 4, patch: int = 4, layers: int = 4, attn: str = "sdpa") -> TinyVideoLlava:
    """A tiny random ``VideoLlavaForConditionalGeneration`` (image and video CLIP towers + Llama; the image tower
    holds the video tower's weights) and a ``CLIPModel`` sharing them (DeSAP's text tower + visual projection)."""
    from transformers import LlamaConfig, VideoLlavaConfig, VideoLlavaForConditionalGeneration

    torch.manual_seed(seed)
    tok = word_tokenizer(specials=SPECIALS + ["<video>"])
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  image_size=grid * patch, patch_size=patch, projection_dim=24)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                       pad_token_id=0, bos_token_id=2, eos_token_id=3)
    cfg = VideoLlavaConfig(vision_config=dict(model_type="clip_vision_model", **vision), text_config=text,
                           image_token_index=4, video_token_index=len(SPECIALS), vision_feature_layer=-2,
                           vision_feature_select_strategy="default", projector_hidden_act="gelu")
    cfg._attn_implementation = attn
    model = VideoLlavaForConditionalGeneration(cfg).eval()
    model.model.image_tower.load_state_dict(model.model.video_tower.state_dict())
    clip, clip_tok = tiny_clip_sharing_tower(vision, model.model.video_tower)
    return TinyVideoLlava(model, clip, tok, clip_tok, grid)
