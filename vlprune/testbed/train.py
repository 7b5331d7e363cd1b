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

import torch
import torch.nn.functional as F

from . import scenes

__all__ = ["TestbedSpec", "build", "make_clip", "make_llava", "make_processor", "make_tokenizer"]

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
    llm_width: int = 160
    llm_layers: int = 4
    llm_heads: int = 4
    llm_ffn: int = 512
    clip_steps: int = 1500
    clip_batch: int = 64
    clip_lr: float = 1e-3
    llava_steps: int = 3000
    llava_batch: int = 32
    llava_lr: float = 1e-3
    max_extra_turns: int = 4      # multi-turn training: 0..4 more questions per image
    curriculum: float = 0.3       # scene complexity ramps 0 -> 1 over this fraction of each stage
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
        num_key_value_heads=spec.llm_heads, max_position_embeddings=max(256, 2 * spec.grid ** 2),
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
def _hard_negative(scene: scenes.Scene, rng: random.Random) -> str:
    """The scene's caption with one fact changed (colour, shape, size or place)."""
    obs = list(scene.objects)
    i = rng.randrange(len(obs))
    o = obs[i]
    kind = rng.choices(("color", "shape", "size", "swap"), weights=(0.25, 0.4, 0.1, 0.25))[0]
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
    pix = image_processor(images=imgs, return_tensors="pt")["pixel_values"]
    text = tokenizer(pos + neg, padding=True, return_tensors="pt")
    return pix, text["input_ids"], text["attention_mask"]


def conversation_text(turns: list[tuple[str, str]]) -> str:
    """LLaVA-1.5 multi-turn text: ``USER: <image>\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT: A2</s>``."""
    parts = []
    for k, (q, a) in enumerate(turns):
        parts.append((scenes.prompt_for(q) if k == 0 else f"USER: {q} ASSISTANT:") + f" {a}</s>")
    return "".join(parts)


def _llava_batch(convs: list[tuple[scenes.Sample, list[tuple[str, str]]]], processor):
    """Left-padded conversations; labels on every answer word and the EOS after it."""
    tok = processor.tokenizer
    enc = processor(images=[s.image for s, _ in convs], text=[conversation_text(t) for _, t in convs],
                    return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    asst, colon = tok.convert_tokens_to_ids("assistant"), tok.convert_tokens_to_ids(":")
    is_answer = torch.zeros_like(ids, dtype=torch.bool)
    is_answer[:, 2:] = (ids[:, :-2] == asst) & (ids[:, 1:-1] == colon)
    is_eos = torch.zeros_like(is_answer)
    is_eos[:, 1:] = is_answer[:, :-1] & (ids[:, 1:] == EOS_ID)
    labels = torch.where(is_answer | is_eos, ids, torch.full_like(ids, -100))
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    first = is_answer.long().argmax(-1)  # position of the first (evaluation-format) answer
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos,
            "pixel_values": enc["pixel_values"], "labels": labels}, first


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


# --------------------------------------------------------------------- training
def train_clip(clip, spec: TestbedSpec, tokenizer, image_processor, steps: int, seed: int = 0,
               progress: bool = True, log=None):
    clip.train()
    opt = torch.optim.AdamW(clip.parameters(), lr=spec.clip_lr, weight_decay=0.05, betas=(0.9, 0.98))
    ema = None
    with _progress(progress) as bar:
        task = bar.add_task("CLIP", total=steps, info="")
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = _lr(step, steps, spec.clip_lr, spec.warmup)
            pix, ids, mask = _clip_batch(step, spec, image_processor, tokenizer, seed,
                                         _complexity(step, steps, spec.curriculum))
            img = F.normalize(clip.get_image_features(pixel_values=pix).pooler_output, dim=-1)
            txt = F.normalize(clip.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, dim=-1)
            scale = clip.logit_scale.exp().clamp(max=100)
            b = img.shape[0]
            logits = scale * img @ txt.T                 # [b, 2b]: positives then hard negatives
            target = torch.arange(b)
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :b].T, target)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
            opt.step()
            acc = (logits.argmax(-1) == target).float().mean().item()
            ema = (loss.item(), acc) if ema is None else (0.95 * ema[0] + 0.05 * loss.item(),
                                                          0.95 * ema[1] + 0.05 * acc)
            bar.update(task, advance=1, info=f"loss {ema[0]:.3f} i2t acc {ema[1]:.2f}")
            if log and (step % 100 == 0 or step == steps - 1):
                log(f"clip step {step} loss {ema[0]:.4f} acc {ema[1]:.3f}")
    clip.eval()
    return {"clip_loss": ema[0] if ema else None, "clip_i2t_acc": ema[1] if ema else None}


def train_llava(model, spec: TestbedSpec, processor, steps: int, seed: int = 0, progress: bool = True,
                log=None):
    model.train()
    model.model.vision_tower.eval()
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=spec.llava_lr, betas=(0.9, 0.98))
    stream = scenes.iter_train_conversations(
        0, spec.image_size, spec.max_extra_turns,
        complexity=lambda i: _complexity(i // spec.llava_batch, steps, spec.curriculum))
    val = scenes.load_split("val", spec.val_probe, image_size=spec.image_size) if spec.val_probe else []
    ema = None
    with _progress(progress) as bar:
        task = bar.add_task("LLaVA", total=steps, info="")
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = _lr(step, steps, spec.llava_lr, spec.warmup)
            batch, first = _llava_batch([next(stream) for _ in range(spec.llava_batch)], processor)
            out = model(**batch)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            with torch.no_grad():
                rows = torch.arange(len(first))  # logits at t predict token t+1
                pred = out.logits[rows, first - 1].argmax(-1)
                acc = (pred == batch["labels"][rows, first]).float().mean().item()
            ema = (out.loss.item(), acc) if ema is None else (0.97 * ema[0] + 0.03 * out.loss.item(),
                                                              0.97 * ema[1] + 0.03 * acc)
            bar.update(task, advance=1, info=f"loss {ema[0]:.3f} acc {ema[1]:.2f}")
            if log and (step % 100 == 0 or step == steps - 1):
                log(f"llava step {step} loss {ema[0]:.4f} acc {ema[1]:.3f}")
            if val and log and step % spec.val_every == spec.val_every - 1:
                from .evaluate import evaluate

                res = evaluate(model, processor, val)
                model.train()
                model.model.vision_tower.eval()
                log(f"llava step {step} val {json.dumps(res)}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return {"llava_loss": ema[0] if ema else None, "llava_train_acc": ema[1] if ema else None}


def build(out_dir: str | Path | None = None, grid: int = 12, seed: int = 0, clip_steps: int | None = None,
          llava_steps: int | None = None, progress: bool = True, spec: TestbedSpec | None = None,
          val_n: int | None = None, threads: int | None = 2, log_file: str | Path | None = None,
          clip_dir: str | Path | None = None) -> dict:
    """Train both stages and save them under ``out_dir`` (default: the packaged checkpoint).

    Layout: ``out_dir/`` holds the LLaVA model and its processor, ``out_dir/clip/``
    the full CLIP model (text tower + projections), its tokenizer and image processor.
    Returns timings (seconds), training summaries and the val accuracy (overall
    and per family, greedy decoding, first word). Deterministic for a given seed
    and thread count. ``clip_dir`` skips stage 1 and reuses a saved CLIP.
    """
    from .evaluate import evaluate

    from . import checkpoint_dir

    t0 = time.perf_counter()
    spec = replace(spec or TestbedSpec(), grid=grid)
    if clip_steps is not None:
        spec = replace(spec, clip_steps=clip_steps)
    if llava_steps is not None:
        spec = replace(spec, llava_steps=llava_steps)
    if val_n is not None:
        spec = replace(spec, val_n=val_n)
    out = Path(out_dir) if out_dir is not None else checkpoint_dir()
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
        clip = make_clip(spec, len(tokenizer))
        result.update(train_clip(clip, spec, clip_tok, processor.image_processor, spec.clip_steps, seed,
                                 progress, log))
    result["time_clip_s"] = time.perf_counter() - t
    (out / "clip").mkdir(exist_ok=True)
    clip.save_pretrained(out / "clip")
    clip_tok.save_pretrained(out / "clip")
    processor.image_processor.save_pretrained(out / "clip")

    torch.manual_seed(seed + 1)
    model = make_llava(spec, len(tokenizer), clip.config.vision_config)
    vis = {k[len("vision_model."):]: v for k, v in clip.state_dict().items() if k.startswith("vision_model.")}
    model.model.vision_tower.load_state_dict(vis)
    t = time.perf_counter()
    result.update(train_llava(model, spec, processor, spec.llava_steps, seed, progress, log))
    result["time_llava_s"] = time.perf_counter() - t

    t = time.perf_counter()
    if spec.val_n > 0:
        val = scenes.load_split("val", spec.val_n, image_size=spec.image_size)
        result["val"] = evaluate(model, processor, val)
        log(f"val {json.dumps(result['val'])}")
    result["time_eval_s"] = time.perf_counter() - t

    model.save_pretrained(out)
    processor.save_pretrained(out)
    result["time_total_s"] = time.perf_counter() - t0
    (out / "testbed_build.json").write_text(json.dumps(result, indent=2) + "\n")
    log(f"done {json.dumps({k: v for k, v in result.items() if k != 'spec'})}")
    if logf:
        logf.close()
    return result
