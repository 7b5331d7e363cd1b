"""Accuracy-retention benchmark on the bundled testbed: methods x budgets, per-family accuracy, object recall."""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import api
from .flops import measured_tflops, method_tflops
from .flops_match import matched_keep, prunes_in_llm
from .presets import ModelShape
from .report_file import ReportFile


METHOD_OPTIONS_FILE = "method_options.json"  # per-method option defaults a checkpoint may carry


@dataclass
class LoadedModel:
    model: Any
    processor: Any
    clip: Any  # path or object for DeSAP
    name: str
    options: dict[str, dict] = field(default_factory=dict)  # the checkpoint's method_options.json, if any


def resolve_model(name: str) -> Path | str:
    """``testbed`` / ``testbed-deep`` / ``testbed-video`` name the bundled checkpoints; anything else is a hub id or
    local path."""
    from .testbed import BUNDLED

    if name in BUNDLED:
        path = BUNDLED[name]()
        if not (path / "config.json").exists():
            build = {"testbed": "build --replace-bundled", "testbed-deep": "build --out DIR (docs/testbed.md, "
                     "testbed-deep; then copy it there)"}.get(name, "build-video --out DIR (then copy it there)")
            raise FileNotFoundError(f"the {name} checkpoint is missing at {path}; reinstall vlprune or rebuild it "
                                    f"with `vlprune testbed {build}`")
        return path
    from .hub import check_source

    check_source(name)
    return name


def load_model(name: str, clip: str | None = None, dtype: torch.dtype = torch.float32,
               device: str | None = None) -> LoadedModel:
    """Load the testbed or any image-text-to-text checkpoint (LLaVA-1.5 / LLaVA-NeXT / Qwen2.5-VL) + processor."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging as hf_logging

    path = resolve_model(name)
    hf_logging.disable_progress_bar()  # one "Loading weights" bar per checkpoint says nothing a user needs
    model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=dtype).eval()
    if device:
        model.to(device)
    from .testbed import BUNDLED, clip_dir

    video = (Path(path) / "video_testbed_processor.json").exists()  # the video testbed: its own small processor
    if video:
        from .testbed.video_model import VideoTestbedProcessor

        processor = VideoTestbedProcessor.from_pretrained(path)
    else:
        processor = AutoProcessor.from_pretrained(str(path))
    if clip is None and (Path(path) / "clip" / "config.json").exists():  # testbed layout: CLIP beside the LVLM
        clip = str(Path(path) / "clip")
    if clip is None and (video or name in BUNDLED):  # a testbed without clip/ (deep, video) shares the testbed's CLIP
        clip = str(clip_dir())
    options = attach_method_options(model, path)
    return LoadedModel(model, processor, clip, name, options)


def attach_method_options(model: Any, path: str | Path) -> dict[str, dict]:
    """Read the checkpoint's ``method_options.json`` (if any) onto ``model.config``, where ``vlprune.apply`` finds
    it: options not passed explicitly default to the checkpoint's (e.g. the testbed's FastV layer)."""
    from .registry import CHECKPOINT_DEFAULTS

    options_file = Path(path) / METHOD_OPTIONS_FILE
    options = json.loads(options_file.read_text()) if options_file.exists() else {}
    if options:
        setattr(model.config, CHECKPOINT_DEFAULTS, options)
    return options


def effective_options(loaded: LoadedModel, user: dict[str, dict]) -> dict[str, dict]:
    """Per-method options: the checkpoint's own defaults (``method_options.json``, e.g. the testbed's in-LLM
    pruning layer for its 2-layer LLM), overridden option by option by the user's ``--set``."""
    names = set(loaded.options) | set(user)
    return {m: {**loaded.options.get(m, {}), **user.get(m, {})} for m in sorted(names)}


def shape_of(model: Any, visual_tokens: int) -> ModelShape:
    """A FLOPs shape read off a loaded model's LLM config."""
    tc = model.config.text_config
    return ModelShape(
        name=type(model).__name__, hf_id="", layers=tc.num_hidden_layers, hidden=tc.hidden_size,
        ffn=tc.intermediate_size, heads=tc.num_attention_heads,
        kv_heads=getattr(tc, "num_key_value_heads", tc.num_attention_heads), visual_tokens=visual_tokens,
    )


def method_kwargs(method: str, loaded: LoadedModel) -> dict[str, Any]:
    """What ``apply`` needs besides options: DeSAP's processor and CLIP (loaded once, then reused)."""
    if method == "desap":
        if isinstance(loaded.clip, (str, Path)):
            from .text import load_clip_text

            loaded.clip = load_clip_text(loaded.clip)
        return {"processor": loaded.processor, "clip": loaded.clip}
    return {}


@torch.no_grad()
def answer(loaded: LoadedModel, samples: list, batch_size: int = 32, max_new_tokens: int = 3,
           on_batch: Callable[[list, list[str], Any], None] | None = None) -> list[str]:
    """Greedy answers for ``samples`` (batched, left-padded); ``on_batch`` sees each batch's selection."""
    proc = loaded.processor
    proc.tokenizer.padding_side = "left"
    outs: list[str] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        visual = {"videos": [s.frames for s in chunk]} if hasattr(chunk[0], "frames") else \
            {"images": [s.image for s in chunk]}
        inputs = proc(**visual, text=[s.prompt for s in chunk], return_tensors="pt", padding=True)
        gen = loaded.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        texts = proc.tokenizer.batch_decode(gen[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        outs.extend(texts)
        if on_batch is not None:
            on_batch(chunk, texts, api._state(loaded.model).last if api._state(loaded.model) else None)
    return outs


def object_recall(samples: list, kept: Any, grid: int, image_size: int) -> tuple[list[float], list[float]]:
    """Per sample with an asked-about object: share of its patches kept (strict), and kept-or-merged.

    "Merged" counts a dropped patch whose information went into a kept token that itself lies on the
    object (a merge into an off-object token does not preserve the object as a token).
    """
    from .testbed import boxes_to_patch_mask

    strict, merged = [], []
    for i, s in enumerate(samples):
        if not any(s.boxes):  # no asked-about object (image: no box; video: none in any frame)
            continue
        if hasattr(s, "frames"):  # a video: per-frame boxes over the frames' patches, frame-major
            on = torch.cat([boxes_to_patch_mask(b, image_size, grid) for b in s.boxes])
        else:
            on = boxes_to_patch_mask(s.boxes, image_size, grid)
        idx = kept.indices[i].cpu()
        keep_mask = torch.zeros_like(on)
        keep_mask[idx[idx >= 0]] = True
        strict.append(float((on & keep_mask).sum()) / float(on.sum()))
        assign = kept.assign[i] if kept.assign else None
        if assign is None:
            merged.append(strict[-1])
            continue
        assign = assign.cpu()
        slot_on = torch.zeros(int(assign.max()) + 2, dtype=torch.bool)
        # a kept token's slot is on the object if its own patch is
        slot_patch = {int(assign[p]): p for p in idx.tolist() if 0 <= p < len(assign) and assign[p] >= 0}
        for slot, patch in slot_patch.items():
            slot_on[slot] = bool(on[patch])
        covered = on & ((keep_mask) | ((assign >= 0) & slot_on[assign.clamp(min=0)]))
        merged.append(float(covered.sum()) / float(on.sum()))
    return strict, merged


def evaluate(loaded: LoadedModel, samples: list, methods: list[str], keeps: list[int], batch_size: int = 32,
             progress: Callable[[str, int], None] | None = None, options: dict[str, dict] | None = None,
             record: ReportFile | None = None, match_flops: bool = False) -> dict:
    """Full-budget accuracy, then every (method, keep): accuracy, % of full, per family, recall, TFLOPs.

    ``record`` (the ``--json`` file) is rewritten after every row, and rows it already holds from a run with the
    same configuration are reused instead of recomputed. ``match_flops``: an in-LLM method runs at the budget whose
    LLM FLOPs equal an encoder-side method's at ``keep`` (:func:`vlprune.flops_match.matched_keep`; the row keeps
    ``keep`` and adds ``effective_keep``); where none is that cheap the pair is listed under ``unmatched``."""
    from .testbed import is_correct

    model = loaded.model
    vc = model.config.vision_config
    grid = vc.image_size // vc.patch_size
    frames = len(samples[0].frames) if samples and hasattr(samples[0], "frames") else 1
    shape = shape_of(model, frames * grid * grid)  # a video: keep counts patches over all its frames
    options = options or {}

    def score(preds: list[str]) -> tuple[float, dict[str, float]]:
        fam: dict[str, list[bool]] = defaultdict(list)
        for s, p in zip(samples, preds):
            fam[s.family].append(is_correct(p, s.answer))
        flat = [x for v in fam.values() for x in v]
        return sum(flat) / len(flat), {k: sum(v) / len(v) for k, v in sorted(fam.items())}

    def tick(label: str) -> Callable:
        def cb(chunk, texts, kept):
            if progress:
                progress(label, len(chunk))
        return cb

    record = record or ReportFile(None, {})
    api.remove(model)
    full = record.done_full()
    if full is None:
        full_acc, full_fam = score(answer(loaded, samples, batch_size, on_batch=tick("full")))
        full = {"accuracy": full_acc, "per_family": full_fam, "tflops": method_tflops(None, None, shape)}
    elif progress:
        progress("full (saved)", len(samples))
    full_acc = full["accuracy"]
    report: dict[str, Any] = {"model": loaded.name, "n": len(samples), "full": full, "results": []}
    record.write(report, complete=False)
    for method in methods:
        for keep in keeps:
            run_keep, matched = keep, {}
            if match_flops and prunes_in_llm(method):
                eff, eff_tflops, target = matched_keep(method, keep, shape, **options.get(method, {}))
                if eff is None:
                    report.setdefault("unmatched", []).append(
                        {"method": method, "keep": keep, "target_tflops": target, "min_tflops": eff_tflops})
                    continue
                run_keep, matched = eff, {"effective_keep": eff, "target_tflops": target}
            saved = record.done_row(method, keep, options.get(method, {}))
            if saved is not None:
                report["results"].append(saved)
                if progress:
                    progress(f"{method}@{keep} (saved)", len(samples))
                continue
            strict: list[float] = []
            merged: list[float] = []
            measured: list[float] = []  # per-sample TFLOPs of methods with data-dependent counts (SparseVLM v1)

            def on_batch(chunk, texts, kept, label=f"{method}@{keep}"):
                measured.extend(measured_tflops(model, shape) or [])
                if kept is not None:
                    a, b = object_recall(chunk, kept, grid, vc.image_size)
                    strict.extend(a)
                    merged.extend(b)
                tick(label)(chunk, texts, kept)

            api.apply(model, method, run_keep, **method_kwargs(method, loaded), **options.get(method, {}))
            try:
                acc, fam = score(answer(loaded, samples, batch_size, on_batch=on_batch))
            finally:
                api.remove(model)
            report["results"].append({
                "method": method, "keep": keep, "accuracy": acc,
                "relative": acc / full_acc if full_acc else float("nan"),
                "object_recall": sum(strict) / len(strict) if strict else None,
                "object_recall_merged": sum(merged) / len(merged) if merged else None,
                "tflops": (sum(measured) / len(measured) if measured
                           else method_tflops(method, run_keep, shape, **options.get(method, {}))),
                **({"tflops_measured": True} if measured else {}),
                "per_family": fam, "options": options.get(method, {}), **matched,
            })
            record.write(report, complete=False)
    return report
