"""Build the video testbed (``vlprune testbed build-video``): fine-tune a Video-LLaVA started from the image testbed.

Recipe (docs/testbed.md, "Video testbed"): :func:`~.video_model.init_from_image_testbed` (towers frozen); the
frozen tower's layer -2 states of every frame of ``pool`` training clips are computed once (the [CLS] row kept,
as Video-LLaVA feeds it); then projector + LLM train on multi-turn conversations about each clip (every family's
question, in random order, loss on the answers), with the image testbed's grounded projector-alignment term on
every frame's patches, its background curriculum (all [CLS] and object patches, a rising share of the others), and
a dense temporal grounding term (:func:`event_loss`): the state of every video token after LLM layer 0 predicts,
through linear heads that are then discarded, the event of the object under it (static, mover, appearing now,
appeared before, vanishing, changer before / after its change, background) and its frame. Without that term a
run reached 36 % on 50 val clips after 100 of 500 steps and was stopped. ``background_jitter`` (0.7 in the shipped
recipe) keeps showing a random share of the background after the ramp, so that the model cannot lean on every
frame sitting exactly 145 tokens after the previous one: the first checkpoint, trained without it, did, and left
every pruning method at random (docs/testbed.md).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import scenes, video_scenes
from .components import EOS_ID, bf16_autocast, cosine_lr
from .train import alignment_loss, attribute_word_ids, patch_word_targets, reply_labels, TestbedSpec
from .video_model import VideoTestbedProcessor, init_from_image_testbed, make_video_tokenizer, video_pixels

__all__ = ["VideoSpec", "build_video", "video_answers", "video_evaluate"]

BUILD_FILE = "testbed_video_build.json"


@dataclass(frozen=True)
class VideoSpec:
    """Training settings of the video testbed (defaults = the shipped model)."""

    steps: int = 4800
    batch: int = 16
    lr: float = 2e-3
    warmup: int = 30
    pool: int = 8000              # training clips (frozen features computed once)
    turns: int = 8                # questions per training conversation (every one a clip supports)
    align_loss: float = 1.0       # the image testbed's grounded projector alignment, on every frame's patches
    event_loss: float = 1.0       # layer-0 output of every video token predicts its event class and its frame
    background_start: float = 0.2  # curriculum: share of background patches shown at step 0 ...
    background_ramp: float = 0.4   # ... rising to all of them over this fraction of the steps
    background_jitter: float = 0.7  # > 0: after the ramp, each batch shows a share drawn from [1 - jitter, 1]
    val_n: int = 200              # val clips scored at the end
    val_probe: int = 50           # val clips scored every val_every steps (log only)
    val_every: int = 100
    bf16: bool = False            # fp32: on the 2-core CPU as fast as bf16 autocast at this size


# ------------------------------------------------------------------------------ data
def conversation(turns: list[tuple[str, str]], video_tokens: int) -> str:
    parts = [(video_scenes.video_prompt_for(q) if k == 0 else f"USER: {q} ASSISTANT:") + f" {a}</s>"
             for k, (q, a) in enumerate(turns)]
    return "".join(parts).replace("<video>", "<video>" * video_tokens)


def clip_turns(tracks, rng: random.Random, n: int, first: tuple[str, str] | None = None) -> list[tuple[str, str]]:
    """Up to ``n`` questions about a clip: one per family, ``frames`` about objects of distinct counts."""
    qs = [video_scenes.question(tracks, f)[:2] for f in video_scenes.FAMILIES if f != "frames"]
    by_count: dict[str, list] = {}
    for q, a in video_scenes.all_questions(tracks):
        if q.startswith("How many frames"):
            by_count.setdefault(a, []).append((q, a))
    qs += [rng.choice(v) for v in by_count.values()]
    rng.shuffle(qs)
    if first is not None:
        qs = [first] + [t for t in qs if t[0] != first[0]]
    return qs[:n]


@torch.no_grad()
def frame_features(model, pix: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Layer ``vision_feature_layer`` of the video tower for frames ``pix`` (F, 3, H, W), [CLS] row kept."""
    tower, layer = model.model.video_tower, model.config.vision_feature_layer
    return torch.cat([tower(pix[i:i + batch_size], output_hidden_states=True).hidden_states[layer].float()
                      for i in range(0, len(pix), batch_size)])


class ClipPool:
    """``n`` training clips: frozen features ``(n, T, 1 + N, d)`` (bf16), per-frame patch targets, tracks."""

    def __init__(self, model, processor, n: int, chunk: int = 64):
        self.samples, feats, targets, events = [], [], [], []
        grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
        spec = TestbedSpec(grid=grid)
        for i in range(0, n, chunk):
            part = [video_scenes.make_video_sample(j, video_scenes.FAMILIES[j % 5]) for j in range(i, min(n, i + chunk))]
            pix = video_pixels([s.frames for s in part], processor.image_processor)
            feats.append(frame_features(model, pix.flatten(0, 1)).view(len(part), *pix.shape[1:2], -1,
                                                                       model.config.vision_config.hidden_size)
                         .to(torch.bfloat16))
            for s in part:
                targets.append(torch.stack([patch_word_targets(
                    [scenes.SceneObject(tr.shape, tr.colors[t], tr.size, tr.boxes[t]) for tr in s.tracks
                     if tr.boxes[t] is not None], spec) for t in range(video_scenes.FRAMES)]))
                events.append(event_targets(s.tracks, spec))
                s.frames = None
            self.samples += part
        self.feats, self.targets = torch.cat(feats), torch.stack(targets)  # (n, T, 1+N, d), (n, T, N, 2)
        self.events = torch.stack(events)  # (n, T, N)

    def __len__(self) -> int:
        return len(self.samples)

    def batch(self, step: int, batch_size: int, tokenizer, turns: int, background: float = 1.0):
        n = len(self)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(step * batch_size // n))
        idx = [int(order[(step * batch_size + k) % n]) for k in range(batch_size)]
        epoch = step * batch_size // n
        feats, targets, events = self.feats[idx].float(), self.targets[idx], self.events[idx]
        keep = torch.ones(feats.shape[:3], dtype=torch.bool)  # (B, T, 1 + N)
        if background < 1:
            noise = torch.rand(targets.shape[:3], generator=torch.Generator().manual_seed(7_000_003 + step))
            keep[:, :, 1:] = (targets[..., 0] >= 0) | (noise < background)
        texts = []
        for i, k in zip(idx, keep.flatten(1).sum(1)):
            s = self.samples[i]
            rng = random.Random(f"video-turns-{i}-{epoch}")
            first = (s.question, s.answer) if epoch == 0 else None
            texts.append(conversation(clip_turns(s.tracks, rng, turns, first), int(k)))
        enc = tokenizer(texts, return_tensors="pt", padding=True)
        labels, first_pos = reply_labels(enc["input_ids"], enc["attention_mask"], tokenizer)
        return enc["input_ids"], enc["attention_mask"], labels, first_pos, feats, targets, keep, events


EVENTS = ("background", "static", "mover", "appearer-new", "appearer", "vanisher", "changer-before", "changer-after")


def event_targets(tracks, spec: TestbedSpec) -> torch.Tensor:
    """``(T, N)`` event class (index in ``EVENTS``) of the object covering each patch of each frame."""
    from .answer import boxes_to_patch_mask

    out = torch.zeros(video_scenes.FRAMES, spec.grid ** 2, dtype=torch.long)
    for tr in tracks:
        first = tr.present()[0]
        for t, box in enumerate(tr.boxes):
            if box is None:
                continue
            if tr.role == "appearer":
                name = "appearer-new" if t == first else "appearer"
            elif tr.role == "changer":
                name = "changer-before" if tr.colors[t] == tr.colors[0] else "changer-after"
            else:
                name = tr.role
            out[t, boxes_to_patch_mask([box], spec.image_size, spec.grid)] = EVENTS.index(name)
    return out


def event_loss(model, heads, hidden: torch.Tensor, ids: torch.Tensor, events: torch.Tensor,
               keep: torch.Tensor) -> torch.Tensor:
    """Dense temporal grounding (the video analogue of the projector alignment): every video token's state after
    LLM layer 0 predicts, through linear ``heads`` discarded after training, the event class of the object under
    its patch (``EVENTS``; [CLS] rows: none) and the frame it belongs to."""
    import torch.nn.functional as F

    h = hidden[ids == model.config.video_token_id]                           # (kept tokens, d), prompt order
    b, t, n1 = keep.shape
    ev = torch.cat([torch.full((b, t, 1), -100, dtype=torch.long), events], 2)[keep]
    frame = torch.arange(t).view(1, t, 1).expand(b, t, n1)[keep]
    return F.cross_entropy(heads[0](h).float(), ev, ignore_index=-100) + F.cross_entropy(heads[1](h).float(), frame)


def _embed(model, ids: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    x = model.get_input_embeddings()(ids)
    vid = model.model.multi_modal_projector(feats)
    return x.masked_scatter((ids == model.config.video_token_id)[..., None], vid.to(x.dtype))


# ------------------------------------------------------------------------------ scoring
@torch.no_grad()
def video_answers(model, processor, samples, batch_size: int = 25, max_new_tokens: int = 2) -> list[str]:
    """Greedy answers of the (unpatched or patched) model for video samples."""
    tok = processor.tokenizer
    tok.padding_side = "left"
    out = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        enc = processor(text=[s.prompt for s in chunk], videos=[s.frames for s in chunk])
        gen = model.generate(**enc.to(model.device), max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        out += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def video_evaluate(model, processor, samples, batch_size: int = 25) -> dict:
    """Accuracy overall and per family of greedy first-word answers."""
    from .answer import is_correct

    preds = video_answers(model, processor, samples, batch_size)
    hits: dict[str, list[bool]] = {}
    for s, p in zip(samples, preds):
        hits.setdefault(s.family, []).append(is_correct(p, s.answer))
    flat = [h for v in hits.values() for h in v]
    return {"acc": sum(flat) / max(1, len(flat)), "n": len(flat),
            "per_family": {f: sum(v) / len(v) for f, v in sorted(hits.items())}}


# ------------------------------------------------------------------------------ training
def train_video(model, processor, pool: ClipPool, spec: VideoSpec, log) -> dict:
    tok = processor.tokenizer
    tok.padding_side = "right"
    model.train()
    for tower in (model.model.video_tower, model.model.image_tower):
        tower.eval()
        tower.requires_grad_(False)
    d = model.config.text_config.hidden_size
    heads = torch.nn.ModuleList([torch.nn.Linear(d, len(EVENTS)), torch.nn.Linear(d, video_scenes.FRAMES)])
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    if spec.event_loss > 0:
        params += list(heads.parameters())
    decay = [p for p in params if p.ndim >= 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                            lr=spec.lr, betas=(0.9, 0.98))
    words = attribute_word_ids(tok)
    val = video_scenes.load_video_split("val", spec.val_probe) if spec.val_probe else []
    ema = None
    for step in range(spec.steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, spec.steps, spec.lr, spec.warmup)
        bg = min(1.0, spec.background_start + (1 - spec.background_start) * step
                 / max(1.0, spec.background_ramp * spec.steps))
        if bg >= 1.0 and spec.background_jitter > 0:  # no fixed layout to lean on: frames 145 tokens apart
            bg = 1.0 - spec.background_jitter * random.Random(f"background-{step}").random()
        ids, mask, labels, first, feats, targets, keep, events = pool.batch(step, spec.batch, tok, spec.turns, bg)
        with bf16_autocast("cpu", spec.bf16):
            out = model(inputs_embeds=_embed(model, ids, feats[keep]), attention_mask=mask, labels=labels,
                        output_hidden_states=spec.event_loss > 0)
            loss = out.loss
            if spec.event_loss > 0:
                loss = loss + spec.event_loss * event_loss(model, heads, out.hidden_states[1], ids, events, keep)
            if spec.align_loss > 0:
                loss = loss + spec.align_loss * alignment_loss(model, feats[:, :, 1:].flatten(0, 1),
                                                               targets.flatten(0, 1), words)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            rows = torch.arange(len(first))
            acc = (out.logits[rows, first - 1].argmax(-1) == labels[rows, first]).float().mean().item()
        ema = (out.loss.item(), acc) if ema is None else (0.95 * ema[0] + 0.05 * out.loss.item(),
                                                          0.95 * ema[1] + 0.05 * acc)
        if step % 25 == 0 or step == spec.steps - 1:
            log(f"step {step} loss {ema[0]:.4f} acc {ema[1]:.3f} background {bg:.2f}")
        if val and (step % spec.val_every == spec.val_every - 1):
            tok.padding_side = "left"
            model.eval()
            log(f"step {step} val {json.dumps(video_evaluate(model, processor, val))}")
            model.train()
            model.model.video_tower.eval()
            model.model.image_tower.eval()
            tok.padding_side = "right"
    tok.padding_side = "left"
    model.eval()
    model.requires_grad_(True)
    return {"loss": ema[0] if ema else None, "train_first_answer_acc": ema[1] if ema else None}


def build_video(out_dir: str | Path, source: str | Path | None = None, spec: VideoSpec | None = None,
                seed: int = 0, threads: int | None = 2, log_file: str | Path | None = None) -> dict:
    """Build the video testbed from the image testbed at ``source`` (default: the bundled one) into ``out_dir``;
    write the model, processor, ``method_options.json`` (the image testbed's) and ``testbed_video_build.json``
    (settings, wall-clock and CPU seconds per phase, val accuracy)."""
    from transformers import LlavaForConditionalGeneration

    from . import checkpoint_dir
    from ..evaluation import METHOD_OPTIONS_FILE

    t0, c0 = time.perf_counter(), time.process_time()
    spec = spec or VideoSpec()
    source = Path(source or checkpoint_dir())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    logf = open(log_file, "a") if log_file else None

    def log(msg: str) -> None:
        line = f"[{time.perf_counter() - t0:8.1f}s] {msg}"
        if logf:
            logf.write(line + "\n")
            logf.flush()

    tok = make_video_tokenizer()
    src = LlavaForConditionalGeneration.from_pretrained(str(source)).eval()
    model = init_from_image_testbed(src, tok)
    from .components import make_image_processor

    processor = VideoTestbedProcessor(tok, make_image_processor(TestbedSpec(grid=src.config.vision_config.image_size
                                                                            // src.config.vision_config.patch_size)))
    result: dict = {"spec": asdict(spec), "seed": seed, "source": str(source), "threads": torch.get_num_threads()}
    t = time.perf_counter()
    pool = ClipPool(model, processor, spec.pool)
    result["time_features_s"] = time.perf_counter() - t
    log(f"features of {len(pool)} clips in {result['time_features_s']:.1f}s")
    t = time.perf_counter()
    result.update(train_video(model, processor, pool, spec, log))
    result["time_train_s"] = time.perf_counter() - t
    del pool
    t = time.perf_counter()
    if spec.val_n:
        result["val"] = video_evaluate(model, processor, video_scenes.load_video_split("val", spec.val_n))
        log(f"val {json.dumps(result['val'])}")
    result["time_eval_s"] = time.perf_counter() - t
    model.save_pretrained(out)
    processor.save_pretrained(out)
    options = source / METHOD_OPTIONS_FILE
    if options.exists():
        (out / METHOD_OPTIONS_FILE).write_text(options.read_text())
    result["time_total_s"] = time.perf_counter() - t0
    result["cpu_total_s"] = time.process_time() - c0
    (out / BUILD_FILE).write_text(json.dumps(result, indent=2) + "\n")
    log(f"done {json.dumps({k: v for k, v in result.items() if k != 'spec'})}")
    if logf:
        logf.close()
    return result
