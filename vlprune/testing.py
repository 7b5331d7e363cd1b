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
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            sl = slice(width - len(r), width) if left_pad else slice(0, len(r))
            ids[i, sl] = torch.tensor(r)
            mask[i, sl] = 1
        return {"input_ids": ids, "attention_mask": mask}


def tiny_llava(seed: int = 0, grid: int = 4, patch: int = 4, layers: int = 4, attn: str = "sdpa") -> TinyLlava:
    """A tiny random ``LlavaForConditionalGeneration`` (CLIP tower + Llama) and a matching ``CLIPModel``."""
    from transformers import CLIPConfig, CLIPModel, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

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
    clip_tok = word_tokenizer(specials=SPECIALS[:4], bos=False)
    clip_cfg = CLIPConfig(
        vision_config=vision,
        text_config=dict(vocab_size=len(clip_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, projection_dim=24,
                         eos_token_id=3, bos_token_id=2, pad_token_id=0),
        projection_dim=24,
    )
    clip = CLIPModel(clip_cfg).eval()
    # the LVLM's tower is the CLIP's tower, as for llava-hf/llava-1.5 and openai/clip-vit-large-patch14-336
    clip.vision_model.load_state_dict(model.model.vision_tower.state_dict())
    return TinyLlava(model, clip, tok, clip_tok, grid)
