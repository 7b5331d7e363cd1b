"""Stage 1 of the testbed build: the tiny CLIP, trained contrastively on scene captions.

Global InfoNCE with one hard-negative caption per image, a token-wise FILIP term over the caption words that
name something visible, and a patch-position term (docs/testbed.md, "How it was trained").
"""
from __future__ import annotations

import math
import random
from dataclasses import replace

import torch
import torch.nn.functional as F

from . import scenes
from .components import TestbedSpec, bf16_autocast, cosine_lr, progress_bar, pixels


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
                feature_layer: int = -2, decoupled_weight: float = 0.0, decoupled_global: float = 0.0):
    """Contrastive losses of one batch: B images against their B captions and B hard negatives.

    Global: InfoNCE on the [CLS] / EOS embeddings (CLIP). Token-wise (FILIP, Yao et al.
    2021): an image-caption score is the mean over the caption's content words of the
    best-matching patch, ``mean_w max_p <patch_p, word_w>``, so that individual patches
    (not only [CLS]) align with the words that describe them. With ``position_weight`` > 0,
    plus :func:`position_loss` on the patches of hidden state ``feature_layer`` (what LLaVA takes).
    With ``decoupled_weight`` > 0, plus the same token-wise term on the last block's *decoupled* q-q patches
    (DeSAP eq. 2 on the block's input ``feature_layer``, post-LN, visual projection: the patches DeSAP's task cue
    compares with the question; an experiment, off in the shipped recipe). With ``decoupled_global`` > 0, plus the
    global InfoNCE on that decoupled [CLS] row (DeSAP's v_s) against the captions (experiment, off).
    """
    use_position = position_head is not None and position_weight > 0
    vis = clip.vision_model(pixel_values=pix,
                            output_hidden_states=use_position or decoupled_weight > 0 or decoupled_global > 0)
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
    words = F.normalize(clip.text_projection(txt.last_hidden_state), dim=-1)
    keep = torch.isin(ids, content.to(ids.device)) & mask.bool()                 # [2b, T]

    def token_wise(patches: torch.Tensor) -> torch.Tensor:  # FILIP: mean over content words of the best patch
        best = torch.einsum("ipd,jtd->ijtp", F.normalize(patches, dim=-1), words).amax(-1)  # [b, 2b, T]
        return nce(scale * (best * keep).sum(-1) / keep.sum(-1).clamp(min=1))

    if token_weight > 0:
        loss = loss + token_weight * token_wise(
            clip.visual_projection(clip.vision_model.post_layernorm(vis.last_hidden_state[:, 1:])))
    if decoupled_weight > 0 or decoupled_global > 0:
        from ..models.clip_signals import decoupled_joint

        joint = decoupled_joint(vis.hidden_states[feature_layer], block=clip.vision_model.encoder.layers[-1],
                                post_layernorm=clip.vision_model.post_layernorm,
                                projection=clip.visual_projection, mode="qq")
        if decoupled_weight > 0:
            loss = loss + decoupled_weight * token_wise(joint[:, 1:])
        if decoupled_global > 0:
            loss = loss + decoupled_global * nce(scale * F.normalize(joint[:, 0], dim=-1) @ cap.T)
    if use_position:
        patches = vis.hidden_states[feature_layer][:, 1:]
        loss = loss + position_weight * position_loss(patches, position_head, int(math.isqrt(patches.shape[1])))
    acc = (logits.argmax(-1) == target).float().mean()
    return loss, acc


def vision_weights(clip) -> dict[str, torch.Tensor]:
    """The CLIP's vision-model weights, named as a LLaVA ``vision_tower`` holds them (what stage 2 starts from)."""
    return {k[len("vision_model."):]: v for k, v in clip.state_dict().items() if k.startswith("vision_model.")}


def _optimise(opt, params, loss, acc, ema):
    """One AdamW step (gradients clipped at norm 1); returns the running (loss, acc) EMA."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    if ema is None:
        return loss.item(), acc.item()
    return 0.95 * ema[0] + 0.05 * loss.item(), 0.95 * ema[1] + 0.05 * acc.item()


def train_clip(clip, spec: TestbedSpec, tokenizer, image_processor, steps: int, seed: int = 0,
               progress: bool = True, log=None):
    clip.train()
    dev = clip.device
    content = content_word_ids(tokenizer)
    head = torch.nn.Linear(spec.vision_width, 2 * spec.grid).to(dev) if spec.position_loss > 0 else None
    params = list(clip.parameters()) + (list(head.parameters()) if head is not None else [])
    opt = torch.optim.AdamW(params, lr=spec.clip_lr, weight_decay=0.05, betas=(0.9, 0.98))
    ema = None
    with progress_bar(progress) as bar:
        task = bar.add_task("CLIP", total=steps, info="")
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, steps, spec.clip_lr, spec.warmup)
            pix, ids, mask = (t.to(dev) for t in _clip_batch(step, spec, image_processor, tokenizer, seed,
                                                             _complexity(step, steps, spec.curriculum)))
            with bf16_autocast(dev, spec.bf16):
                loss, acc = clip_losses(clip, pix, ids, mask, content, spec.token_loss, head, spec.position_loss,
                                        decoupled_weight=spec.decoupled_token_loss,
                                        decoupled_global=spec.decoupled_global_loss)
            ema = _optimise(opt, params, loss, acc, ema)
            bar.update(task, advance=1, info=f"loss {ema[0]:.3f} i2t acc {ema[1]:.2f}")
            if log and (step % 100 == 0 or step == steps - 1):
                log(f"clip step {step} loss {ema[0]:.4f} acc {ema[1]:.3f}")
    clip.eval()
    return {"clip_loss": ema[0] if ema else None, "clip_i2t_acc": ema[1] if ema else None}


def retune_last_block(clip, spec: TestbedSpec, tokenizer, image_processor, steps: int, lr: float,
                      decoupled_weight: float, seed: int = 0, train_text: bool = False, log=None) -> dict:
    """Stage 1b: train only the tower's LAST block (+ post-LN, visual projection; the text tower too with
    ``train_text``) on stage 1's losses plus the token-wise term on its decoupled q-q patches (``decoupled_weight``).

    LLaVA reads hidden state -2, the input of that block, so every LLaVA built on this tower sees the same features
    before and after: only the signals read from the last block change (DeSAP's A_t and A_s, PruMerge's [CLS]
    attention). Scenes continue after stage 1's (``spec.clip_steps`` on), captions from their own seed.
    An experiment of issue 22 (tools/testbed_experiments/retune_last_block.py), not part of the recipe: it did not
    make the decoupled cue localise (docs/testbed.md)."""
    vision = clip.vision_model
    clip.requires_grad_(False)
    trained = [vision.encoder.layers[-1], vision.post_layernorm, clip.visual_projection]
    if train_text:
        trained += [clip.text_model, clip.text_projection]
    params = [p for m in trained for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    clip.train()
    content = content_word_ids(tokenizer)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05, betas=(0.9, 0.98))
    ema = None
    warmup = min(spec.warmup, steps // 5)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr, warmup)
        pix, ids, mask = (t.to(clip.device) for t in _clip_batch(spec.clip_steps + step, spec, image_processor,
                                                                 tokenizer, seed + 1))
        with bf16_autocast(clip.device, spec.bf16):
            loss, acc = clip_losses(clip, pix, ids, mask, content, spec.token_loss,
                                    decoupled_weight=decoupled_weight)
        ema = _optimise(opt, params, loss, acc, ema)
        if log and (step % 50 == 0 or step == steps - 1):
            log(f"retune step {step} loss {ema[0]:.4f} acc {ema[1]:.3f}")
    clip.requires_grad_(True)
    clip.eval()
    return {"retune_loss": ema[0] if ema else None, "retune_i2t_acc": ema[1] if ema else None}
