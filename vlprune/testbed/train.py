"""Build the trained tiny testbed: a CLIP model and a LLaVA model on top of it.

Stage 1 trains a tiny :class:`~transformers.CLIPModel` contrastively on
scene/caption pairs (with one hard-negative caption per image: a colour, shape,
size or place changed). Stage 2 freezes that vision tower and trains a LLaVA-1.5
style :class:`~transformers.LlavaForConditionalGeneration` (projector + a tiny
Llama) on the testbed questions, loss on the answer tokens only. Both models,
the processor and the tokenizers are saved with ``save_pretrained`` so that the
stock transformers loaders read them offline.

Everything runs on a CPU in well under an hour; see :func:`build`.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import scenes

__all__ = ["TestbedSpec", "build", "make_clip", "make_llava", "make_processor", "make_tokenizer", "method_options"]

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


def _hard_negative(scene: scenes.Scene, rng: random.Random) -> str:
    """The scene's caption with one fact changed (colour, shape, size or place)."""
    obs = list(scene.objects)
    i = rng.randrange(len(obs))
    o = obs[i]
    kind = rng.choices(("color", "shape", "size", "swap"), weights=(0.3, 0.35, 0.1, 0.25))[0]
    if kind == "swap":
        j = [k for k in range(len(obs)) if obs[k].color != o.color]
        if j:
            k = rng.choice(j)
            obs[i], obs[k] = replace(o, color=obs[k].color), replace(obs[k], color=o.color)
            return scenes.caption_for(replace(scene, objects=obs), rng)
        kind = "color"
    if kind == "color":
        obs[i] = replace(o, color=rng.choice([c for c in scenes.COLORS if c != o.color]))
    elif kind == "shape":
        obs[i] = replace(o, shape=rng.choice([s for s in scenes.SHAPES if s != o.shape]))
    else:
        obs[i] = replace(o, size=rng.choice([s for s in scenes.SIZES if s != o.size]))
    return scenes.caption_for(replace(scene, objects=obs), rng)


def _complexity(step: int, steps: int, frac: float) -> float:
    return 1.0 if frac <= 0 else min(1.0, step / (frac * steps))


def _clip_batch(step: int, spec: TestbedSpec, image_processor, tokenizer, seed: int, complexity: float = 1.0):
    rng = random.Random(f"clip-{seed}-{step}")
    base = step * spec.clip_batch
    imgs, pos, neg = [], [], []
    for k in range(spec.clip_batch):
        sc = scenes.make_scene(base + k, spec.image_size, complexity=complexity)  # train block: ids < 1e9
        imgs.append(sc.image)
        pos.append(scenes.caption_for(sc, rng))
        neg.append(_hard_negative(sc, rng))
    text = tokenizer(pos + neg, padding=True, return_tensors="pt")
    return pixels(imgs, image_processor), text["input_ids"], text["attention_mask"]


def conversation_text(turns: list[tuple[str, str]], image_tokens: int = 1) -> str:
    """LLaVA-1.5 multi-turn text: ``USER: <image>\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT: A2</s>``."""
    parts = []
    for k, (q, a) in enumerate(turns):
        parts.append((scenes.prompt_for(q) if k == 0 else f"USER: {q} ASSISTANT:") + f" {a}</s>")
    return "".join(parts).replace("<image>", "<image>" * image_tokens)


def reply_labels(ids: torch.Tensor, mask: torch.Tensor, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels on every assistant reply (its words and the EOS that ends it), -100 elsewhere;
    and the position of each row's first reply token."""
    asst, colon = tokenizer.convert_tokens_to_ids("assistant"), tokenizer.convert_tokens_to_ids(":")
    starts = torch.zeros_like(ids, dtype=torch.bool)
    starts[:, 2:] = (ids[:, :-2] == asst) & (ids[:, 1:-1] == colon)
    opened = starts.long().cumsum(-1)                      # replies started so far (inclusive)
    eos = (ids == EOS_ID).long()
    closed = torch.cat([torch.zeros_like(eos[:, :1]), eos[:, :-1]], 1).cumsum(-1)  # EOS strictly before
    inside = (opened > closed) & mask.bool()
    return torch.where(inside, ids, torch.full_like(ids, -100)), starts.long().argmax(-1)


@torch.no_grad()
def vision_features(model, pix: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The frozen features LLaVA feeds its projector: layer ``vision_feature_layer``, [CLS] dropped."""
    tower, layer = model.model.vision_tower, model.config.vision_feature_layer
    out = []
    for i in range(0, len(pix), batch_size):
        hs = tower(pix[i:i + batch_size].to(model.device), output_hidden_states=True).hidden_states
        out.append(hs[layer][:, 1:].float().cpu())
    return torch.cat(out)


def embed_with_features(model, ids: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """``inputs_embeds`` LLaVA builds from ``ids`` and an image's vision features (projector applied)."""
    x = model.get_input_embeddings()(ids)
    img = model.model.multi_modal_projector(feats.to(x.device))
    return x.masked_scatter((ids == model.config.image_token_id)[..., None], img.to(x.dtype))


@torch.no_grad()
def init_projector(model, feats: torch.Tensor) -> None:
    """Data-dependent init of the projector's first layer: centre and scale the frozen
    vision features (their large shared component otherwise makes every image token
    look alike to the language model, which slows down learning where to look)."""
    feats = feats.reshape(-1, feats.shape[-1]).float()
    mu = feats.mean(0)
    sd = (feats - mu).pow(2).mean().sqrt()
    lin = model.model.multi_modal_projector.linear_1
    w = torch.randn_like(lin.weight) / math.sqrt(lin.in_features)
    lin.weight.copy_(w / sd)
    lin.bias.copy_(-(w / sd) @ mu.to(w))


def _lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _progress(enabled: bool):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    disable=not enabled, transient=False)


def _autocast(device, enabled: bool):
    dev = torch.device(device).type
    return torch.autocast(dev, dtype=torch.bfloat16, enabled=enabled)


# --------------------------------------------------------------------- training
def content_word_ids(tokenizer) -> torch.Tensor:
    """Ids of the caption words that name something visible (colours, shapes, sizes, places)."""
    words = list(scenes.COLORS) + list(scenes.SHAPES) + list(scenes.SIZES) + ["top", "bottom", "left", "right",
                                                                                 "center"]
    return torch.tensor(tokenizer.convert_tokens_to_ids(words))


def position_loss(patches: torch.Tensor, head: torch.nn.Module, grid: int) -> torch.Tensor:
    """Patch-position term: a linear ``head`` reads every patch's row and column (``grid`` classes each)
    from ``patches`` ``(B, grid**2, d)``; cross-entropy, averaged over the two.

    LLaVA's language model sees the image tokens only in raster order, so where a patch lies has to come from
    the vision features. A 4-block tower trained for minutes washes its position table out (column linearly
    read at 16 % from layer -2, chance 8 %: tools/testbed_experiments/position_probe.py), and then no
    language model on top can answer "left or right". This term asks the tiny tower to keep it. The head is
    discarded after stage 1."""
    p = torch.arange(grid * grid, device=patches.device)
    logits = head(patches).float()                                        # (B, P, 2 * grid)
    rows, cols = logits[..., :grid], logits[..., grid:]
    target_r = (p // grid).expand(patches.shape[0], -1)
    target_c = (p % grid).expand(patches.shape[0], -1)
    return (F.cross_entropy(rows.reshape(-1, grid), target_r.reshape(-1))
            + F.cross_entropy(cols.reshape(-1, grid), target_c.reshape(-1))) / 2


def clip_losses(clip, pix, ids, mask, content: torch.Tensor, token_weight: float,
                position_head: torch.nn.Module | None = None, position_weight: float = 0.0,
                feature_layer: int = -2):
    """Contrastive losses of one batch: B images against their B captions and B hard negatives.

    Global: InfoNCE on the [CLS] / EOS embeddings (CLIP). Token-wise (FILIP, Yao et al.
    2021): an image-caption score is the mean over the caption's content words of the
    best-matching patch, ``mean_w max_p <patch_p, word_w>``, so that individual patches
    (not only [CLS]) align with the words that describe them. With ``position_weight`` > 0,
    plus :func:`position_loss` on the patches of hidden state ``feature_layer`` (what LLaVA takes).
    """
    use_position = position_head is not None and position_weight > 0
    vis = clip.vision_model(pixel_values=pix, output_hidden_states=use_position)
    txt = clip.text_model(input_ids=ids, attention_mask=mask)
    img = F.normalize(clip.visual_projection(vis.pooler_output), dim=-1)
    cap = F.normalize(clip.text_projection(txt.pooler_output), dim=-1)
    scale = clip.logit_scale.exp().clamp(max=100)
    b = img.shape[0]
    target = torch.arange(b, device=pix.device)

    def nce(logits):  # [b, 2b]: positives then hard negatives
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :b].T, target)) / 2

    logits = scale * img @ cap.T
    loss = nce(logits)
    if token_weight > 0:
        patches = F.normalize(clip.visual_projection(clip.vision_model.post_layernorm(vis.last_hidden_state[:, 1:])),
                              dim=-1)
        words = F.normalize(clip.text_projection(txt.last_hidden_state), dim=-1)
        keep = torch.isin(ids, content.to(ids.device)) & mask.bool()             # [2b, T]
        best = torch.einsum("ipd,jtd->ijtp", patches, words).amax(-1)           # [b, 2b, T]
        tok = (best * keep).sum(-1) / keep.sum(-1).clamp(min=1)
        loss = loss + token_weight * nce(scale * tok)
    if use_position:
        patches = vis.hidden_states[feature_layer][:, 1:]
        loss = loss + position_weight * position_loss(patches, position_head, int(math.isqrt(patches.shape[1])))
    acc = (logits.argmax(-1) == target).float().mean()
    return loss, acc


def train_clip(clip, spec: TestbedSpec, tokenizer, image_processor, steps: int, seed: int = 0,
               progress: bool = True, log=None):
    clip.train()
    dev = clip.device
    content = content_word_ids(tokenizer)
    head = torch.nn.Linear(spec.vision_width, 2 * spec.grid).to(dev) if spec.position_loss > 0 else None
    params = list(clip.parameters()) + (list(head.parameters()) if head is not None else [])
    opt = torch.optim.AdamW(params, lr=spec.clip_lr, weight_decay=0.05, betas=(0.9, 0.98))
    ema = None
    with _progress(progress) as bar:
        task = bar.add_task("CLIP", total=steps, info="")
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = _lr(step, steps, spec.clip_lr, spec.warmup)
            pix, ids, mask = (t.to(dev) for t in _clip_batch(step, spec, image_processor, tokenizer, seed,
                                                             _complexity(step, steps, spec.curriculum)))
            with _autocast(dev, spec.bf16):
                loss, acc = clip_losses(clip, pix, ids, mask, content, spec.token_loss, head, spec.position_loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            ema = (loss.item(), acc.item()) if ema is None else (0.95 * ema[0] + 0.05 * loss.item(),
                                                                 0.95 * ema[1] + 0.05 * acc.item())
            bar.update(task, advance=1, info=f"loss {ema[0]:.3f} i2t acc {ema[1]:.2f}")
            if log and (step % 100 == 0 or step == steps - 1):
                log(f"clip step {step} loss {ema[0]:.4f} acc {ema[1]:.3f}")
    clip.eval()
    return {"clip_loss": ema[0] if ema else None, "clip_i2t_acc": ema[1] if ema else None}


def patch_word_targets(objects, spec: TestbedSpec) -> torch.Tensor:
    """``(P, 2)`` indices into (COLORS, SHAPES) of the object covering each patch, -1 on background."""
    from .answer import boxes_to_patch_mask

    out = torch.full((spec.grid ** 2, 2), -1, dtype=torch.long)
    cols, shps = list(scenes.COLORS), list(scenes.SHAPES)
    for o in objects:
        out[boxes_to_patch_mask([o.box], spec.image_size, spec.grid)] = torch.tensor(
            [cols.index(o.color), shps.index(o.shape)])
    return out


def alignment_loss(model, feats: torch.Tensor, targets: torch.Tensor, word_ids: tuple[torch.Tensor, torch.Tensor]):
    """Grounded projector alignment (LLaVA's feature-alignment stage, made dense): the projected token of
    every patch, scored against the LLM's input embeddings of the colour words and of the shape words
    (plus a fixed logit 0 for "no object"), predicts the colour and shape of the object covering it, or
    "no object" on the background. Touches only the projector and the embeddings."""
    img = model.model.multi_modal_projector(feats)                        # (B, P, d)
    emb = model.get_input_embeddings().weight
    loss = img.new_zeros(())
    for k, ids in enumerate(word_ids):
        logits = img @ emb[ids.to(emb.device)].T                           # (B, P, n_words)
        logits = torch.cat([logits, torch.zeros_like(logits[..., :1])], -1).reshape(-1, len(ids) + 1)
        t = targets[..., k].reshape(-1)
        t = torch.where(t < 0, torch.full_like(t, len(ids)), t)           # background -> "no object"
        loss = loss + F.cross_entropy(logits.float(), t)
    return loss


def align_projector(model, spec: TestbedSpec, pool, words, steps: int, batch_size: int = 64, log=None) -> float:
    """Warm-up before stage 2: the projector (and the word embeddings) alone, on
    :func:`alignment_loss` over the pool's cached features. Cheap (no LLM forward),
    and it hands the LLM image tokens that already say which object they show."""
    mm = model.model.multi_modal_projector
    params = list(mm.parameters()) + [model.get_input_embeddings().weight]
    opt = torch.optim.AdamW(params, lr=spec.llava_lr, betas=(0.9, 0.98), weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    loss = torch.zeros(())
    for step in range(steps):
        idx = torch.randint(len(pool), (batch_size,), generator=g)
        loss = alignment_loss(model, pool.feats[idx].to(model.device), pool.targets[idx].to(model.device), words)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log and (step % 100 == 0 or step == steps - 1):
            log(f"align step {step} loss {loss.item():.4f}")
    return loss.item()


def attribute_word_ids(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of the colour words and of the shape words (the alignment classes)."""
    return (torch.tensor(tokenizer.convert_tokens_to_ids(list(scenes.COLORS))),
            torch.tensor(tokenizer.convert_tokens_to_ids(list(scenes.SHAPES))))


class ConversationPool:
    """``n`` training scenes whose frozen vision features are computed once; every
    epoch asks new questions about them (epoch 0: the balanced family question first)."""

    def __init__(self, model, spec: TestbedSpec, image_processor, n: int, batch_size: int = 256):
        self.spec, self.samples, self.feats = spec, [], []
        for i in range(0, n, batch_size):
            chunk = [scenes.make_conversation(j, scenes.FAMILIES[j % len(scenes.FAMILIES)], spec.image_size)[0]
                     for j in range(i, min(n, i + batch_size))]
            self.feats.append(vision_features(model, pixels([s.image for s in chunk], image_processor)))
            self.samples += [replace(s, image=None) for s in chunk]   # keep objects, drop pixels
        self.feats = torch.cat(self.feats)
        self.targets = torch.stack([patch_word_targets(s.objects, spec) for s in self.samples])

    def __len__(self) -> int:
        return len(self.samples)

    def turns(self, i: int, epoch: int) -> list[tuple[str, str]]:
        s = self.samples[i]
        rng = random.Random(f"turns-{i}-{epoch}")
        scene = scenes.Scene(s.scene_id, self.spec.image_size, s.objects, None, None)
        first = [(s.question, s.answer)] if epoch == 0 else []
        more = scenes.more_turns(scene, rng, self.spec.turns - len(first), {s.question} if first else None)
        turns = first + more
        if rng.random() < self.spec.describe_prob:
            turns.insert(rng.randint(0, len(turns)), (scenes.DESCRIBE, scenes.describe(scene)))
        return turns

    def batch(self, step: int, batch_size: int, tokenizer, background: float = 1.0):
        """One training batch. ``background`` < 1 keeps every object patch but only that share of the
        background patches (a curriculum on how many image tokens the LLM must search through); the
        image features of the kept patches come back flattened in sequence order, as ``keep``."""
        n = len(self)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(step * batch_size // n))
        idx = [int(order[(step * batch_size + k) % n]) for k in range(batch_size)]
        epoch = step * batch_size // n
        targets = self.targets[idx]
        keep = torch.ones(targets.shape[:2], dtype=torch.bool)
        if background < 1:
            noise = torch.rand(keep.shape, generator=torch.Generator().manual_seed(10_000_019 + step))
            keep = (targets[..., 0] >= 0) | (noise < background)
        texts = [conversation_text(self.turns(i, epoch), int(k)) for i, k in zip(idx, keep.sum(1))]
        enc = tokenizer(texts, return_tensors="pt", padding=True)
        labels, first = reply_labels(enc["input_ids"], enc["attention_mask"], tokenizer)
        return enc["input_ids"], enc["attention_mask"], labels, first, self.feats[idx], targets, keep


def train_llava(model, spec: TestbedSpec, processor, pool: ConversationPool, steps: int, seed: int = 0,
                progress: bool = True, log=None):
    """Stage 2: projector + language model on the pool's conversations, vision tower frozen."""
    tok = processor.tokenizer
    side = tok.padding_side
    tok.padding_side = "right"
    model.train()
    model.model.vision_tower.eval()
    params = [p for n, p in model.named_parameters() if not n.startswith("model.vision_tower")]
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=spec.llava_lr, betas=(0.9, 0.98))
    dev = model.device
    val = scenes.load_split("val", spec.val_probe, image_size=spec.image_size) if spec.val_probe else []
    words = attribute_word_ids(tok)
    ema = None
    with _progress(progress) as bar:
        task = bar.add_task("LLaVA", total=steps, info="")
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = _lr(step, steps, spec.llava_lr, spec.warmup)
            background = min(1.0, spec.background_start + (1 - spec.background_start) * step
                             / max(1.0, spec.background_ramp * steps))
            ids, mask, labels, first, feats, targets, keep = (
                t.to(dev) for t in pool.batch(step, spec.llava_batch, tok, background))
            with _autocast(dev, spec.bf16):
                out = model(inputs_embeds=embed_with_features(model, ids, feats[keep]), attention_mask=mask,
                            labels=labels)
                loss = out.loss
                if spec.align_loss > 0:
                    loss = loss + spec.align_loss * alignment_loss(model, feats, targets, words)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            with torch.no_grad():
                rows = torch.arange(len(first), device=dev)  # logits at t predict token t+1
                acc = (out.logits[rows, first - 1].argmax(-1) == labels[rows, first]).float().mean().item()
            ema = (out.loss.item(), acc) if ema is None else (0.97 * ema[0] + 0.03 * out.loss.item(),
                                                              0.97 * ema[1] + 0.03 * acc)
            bar.update(task, advance=1, info=f"loss {ema[0]:.3f} acc {ema[1]:.2f}")
            if log and (step % 100 == 0 or step == steps - 1):
                log(f"llava step {step} loss {ema[0]:.4f} acc {ema[1]:.3f}")
            if val and log and step % spec.val_every == spec.val_every - 1:
                from .evaluate import evaluate

                tok.padding_side = side
                res = evaluate(model, processor, val)
                tok.padding_side = "right"
                model.train()
                model.model.vision_tower.eval()
                log(f"llava step {step} val {json.dumps(res)}")
    tok.padding_side = side
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return {"llava_loss": ema[0] if ema else None, "llava_train_acc": ema[1] if ema else None}


def method_options(spec: TestbedSpec) -> dict[str, dict]:
    """Defaults of the in-LLM methods for this testbed's LLM depth, saved as ``method_options.json`` beside the
    checkpoint (``vlprune eval`` / ``show`` apply them; ``--set`` overrides). The papers prune after layer 2 of
    32 and VisionDrop after 8/16/24; a pruning layer must lie inside the LLM, so a 2-layer LLM prunes after its
    first layer, and below 4 layers VisionDrop keeps one LLM stage at half depth with the first and last of its
    official segment ratios, and SparseVLM one stage at half depth keeping ``keep`` tokens (plus recycled ones).
    From 4 layers on the papers' own settings are written out (FastV/ASAP after layer 2, VisionDrop at 1/4, 1/2
    and 3/4 of the depth)."""
    from ..methods.visiondrop import VisionDropConfig

    options: dict[str, dict] = {}
    if spec.llm_layers >= 4:  # deep enough for the papers' own layers: written out so a row can be traced
        vd = VisionDropConfig()
        options.update({name: {"layer": 2} for name in ("asap", "fastv", "fastv+bimask")})
        options["visiondrop"] = {"layer_fractions": list(vd.layer_fractions)}
    if spec.llm_layers <= 2:
        options.update({name: {"layer": 1} for name in ("asap", "fastv", "fastv+bimask")})
    if spec.llm_layers < 4:
        vd = VisionDropConfig()
        options["visiondrop"] = {"layer_fractions": [0.5],
                                 "stage_ratios": [vd.stage_ratios[0], vd.stage_ratios[-1]],
                                 "contextual_ratios": [vd.contextual_ratios[0], vd.contextual_ratios[-1]]}
        options["sparsevlm"] = {"layer_fractions": [0.5], "stage_ratios": [1.0]}  # one stage: keep (+ recycled)
    return options


def check_out_dir(out_dir: str | Path | None, replace_bundled: bool) -> Path:
    """Where ``build`` writes: ``out_dir``; the bundled checkpoint only when asked to replace it explicitly."""
    from . import checkpoint_dir

    bundled = checkpoint_dir()
    if out_dir is None and not replace_bundled:
        raise ValueError("pass --out DIR for the new checkpoint (then `vlprune eval --model DIR`), or "
                         f"--replace-bundled to overwrite the bundled one at {bundled}")
    out = Path(out_dir) if out_dir is not None else bundled
    if out.resolve() == bundled.resolve() and not replace_bundled:
        raise ValueError(f"--out {out_dir} is the bundled checkpoint; pass --replace-bundled to overwrite it, "
                         "or another --out folder")
    return out


def build(out_dir: str | Path | None = None, grid: int = 12, seed: int = 0, clip_steps: int | None = None,
          llava_steps: int | None = None, progress: bool = True, spec: TestbedSpec | None = None,
          val_n: int | None = None, threads: int | None = 2, log_file: str | Path | None = None,
          clip_dir: str | Path | None = None, device: str = "cpu", replace_bundled: bool = False,
          llm_init: str | Path | None = None, llm_init_mode: str = "identity") -> dict:
    """Train both stages and save them under ``out_dir``; the packaged checkpoint is written (``out_dir`` None
    or that folder) only with ``replace_bundled=True``.

    Layout: ``out_dir/`` holds the LLaVA model, its processor and ``method_options.json``
    (:func:`method_options`), ``out_dir/clip/`` the full CLIP model (text tower +
    projections), its tokenizer and image processor.
    Returns timings (seconds), training summaries and the val accuracy (overall
    and per family, greedy decoding, first word). Deterministic for a given seed
    and thread count. ``clip_dir`` skips stage 1 and reuses a saved CLIP. ``llm_init`` (a built testbed
    whose LLM depth divides ``spec.llm_layers``) starts stage 2 from its LLaVA, deepened by
    :func:`~vlprune.testbed.deepen.deepen_from` (``llm_init_mode``; no projector init, no alignment warm-up, no background
    curriculum: the source has had them).
    """
    from ..evaluation import METHOD_OPTIONS_FILE
    from .evaluate import evaluate


    t0 = time.perf_counter()
    spec = replace(spec or TestbedSpec(), grid=grid)
    if clip_steps is not None:
        spec = replace(spec, clip_steps=clip_steps)
    if llava_steps is not None:
        spec = replace(spec, llava_steps=llava_steps)
    if val_n is not None:
        spec = replace(spec, val_n=val_n)
    out = check_out_dir(out_dir, replace_bundled)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    random.seed(seed)

    logf = open(log_file, "a") if log_file else None

    def log(msg: str) -> None:
        if logf:
            logf.write(f"[{time.perf_counter() - t0:8.1f}s] {msg}\n")
            logf.flush()

    tokenizer = make_tokenizer()
    clip_tok = make_clip_tokenizer()
    processor = make_processor(spec, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"spec": asdict(spec), "seed": seed}
    t = time.perf_counter()
    if clip_dir is not None:  # reuse a trained stage 1 (e.g. to iterate on stage 2)
        from transformers import CLIPModel

        clip = CLIPModel.from_pretrained(clip_dir).eval()
        result["clip_from"] = str(clip_dir)
    else:
        clip = make_clip(spec, len(tokenizer)).to(device)
        result.update(train_clip(clip, spec, clip_tok, processor.image_processor, spec.clip_steps, seed,
                                 progress, log))
        clip = clip.cpu()
    result["time_clip_s"] = time.perf_counter() - t
    (out / "clip").mkdir(exist_ok=True)
    clip.save_pretrained(out / "clip")
    clip_tok.save_pretrained(out / "clip")
    processor.image_processor.save_pretrained(out / "clip")

    torch.manual_seed(seed + 1)
    model = make_llava(spec, len(tokenizer), clip.config.vision_config)
    vis = {k[len("vision_model."):]: v for k, v in clip.state_dict().items() if k.startswith("vision_model.")}
    model.model.vision_tower.load_state_dict(vis)
    if llm_init is not None:
        from transformers import LlavaForConditionalGeneration

        from .deepen import deepen_from

        source = LlavaForConditionalGeneration.from_pretrained(str(llm_init)).eval()
        result["llm_init"] = {"from": str(llm_init), **deepen_from(model, source, llm_init_mode)}
        spec = replace(spec, align_steps=0, background_start=1.0)
        result["spec"] = asdict(spec)
        del source
    model = model.to(device)
    t = time.perf_counter()
    pool = ConversationPool(model, spec, processor.image_processor, spec.pool)
    if llm_init is None:
        init_projector(model, pool.feats[:256])
    result["time_features_s"] = time.perf_counter() - t
    log(f"features of {len(pool)} scenes in {result['time_features_s']:.1f}s")
    if spec.align_steps > 0:
        result["align_loss"] = align_projector(model, spec, pool, attribute_word_ids(tokenizer), spec.align_steps,
                                               log=log)
    t = time.perf_counter()
    result.update(train_llava(model, spec, processor, pool, spec.llava_steps, seed, progress, log))
    result["time_llava_s"] = time.perf_counter() - t

    t = time.perf_counter()
    if spec.val_n > 0:
        val = scenes.load_split("val", spec.val_n, image_size=spec.image_size)
        result["val"] = evaluate(model, processor, val)
        log(f"val {json.dumps(result['val'])}")
    result["time_eval_s"] = time.perf_counter() - t

    model = model.cpu()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / METHOD_OPTIONS_FILE).write_text(json.dumps(method_options(spec), indent=2) + "\n")
    result["time_total_s"] = time.perf_counter() - t0
    (out / "testbed_build.json").write_text(json.dumps(result, indent=2) + "\n")
    log(f"done {json.dumps({k: v for k, v in result.items() if k != 'spec'})}")
    if logf:
        logf.close()
    return result
