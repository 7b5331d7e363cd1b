"""Build the trained tiny testbed: a CLIP model and a LLaVA model on top of it.

Stage 1 (:mod:`.clip_stage`) trains a tiny :class:`~transformers.CLIPModel` contrastively on
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
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from . import scenes
from .clip_stage import (clip_losses, content_word_ids, position_loss, train_clip,  # noqa: F401 (re-exported)
                         vision_weights)
from .components import (  # noqa: F401  (re-exported: the tools and tests build parts of the recipe from here)
    CHAT_TEMPLATE, EOS_ID, IMAGE_ID, SPECIALS, TestbedSpec, bf16_autocast, cosine_lr, progress_bar, make_clip,
    make_clip_tokenizer, make_image_processor, make_llava, make_processor, make_tokenizer, pixels)


__all__ = ["TestbedSpec", "build", "make_clip", "make_llava", "make_processor", "make_tokenizer", "method_options"]

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
    with progress_bar(progress) as bar:
        task = bar.add_task("LLaVA", total=steps, info="")
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, steps, spec.llava_lr, spec.warmup)
            background = min(1.0, spec.background_start + (1 - spec.background_start) * step
                             / max(1.0, spec.background_ramp * steps))
            ids, mask, labels, first, feats, targets, keep = (
                t.to(dev) for t in pool.batch(step, spec.llava_batch, tok, background))
            with bf16_autocast(dev, spec.bf16):
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
    model.model.vision_tower.load_state_dict(vision_weights(clip))
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
