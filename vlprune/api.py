"""The front door: ``apply`` patches ONE model instance, ``remove`` restores it exactly."""
from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import weakref
from dataclasses import dataclass, field, fields
from typing import Any, Iterator

import torch
from torch import nn

from . import compat
from .llm_pruning import LLMPruner
from .methods.base import Selection, check_keep
from .models import Adapter, get_adapter
from .ops import copy_to_device, repeat_per_sample
from .registry import MethodSpec, checkpoint_defaults, get_method
from .splice import PER_TOKEN_INPUTS, apply_columns, shrink_prompt
from .text import ClipText, QuestionBatch, load_clip_text, questions_from_ids

_STATE = "_vlprune_state"
_PATCHING = threading.RLock()  # apply / remove: one at a time, process-wide (re-entrant: apply calls remove)
_LAST_AFTER_REMOVE: "weakref.WeakKeyDictionary[nn.Module, KeptTokens | None]" = weakref.WeakKeyDictionary()


@dataclass
class KeptTokens:
    """What the last call kept, per image (prompt order): patch indices in raster order on that image's grid.

    A kept token that stands for no patch has no index: VisionZip's [CLS] token, so its ``indices`` hold keep-1
    entries; each method's rule is ``vlprune.methods()[name].kept`` (the ``kept`` column of ``vlprune methods``).

    ``assign[i]`` (optional) maps every patch of image i to the kept token it was merged into (-1: dropped).
    """

    method: str
    keep: int
    indices: list[torch.Tensor]
    grids: list[tuple[int, int]]
    assign: list[torch.Tensor | None] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)


@dataclass
class _Run:
    """Per-call context handed to an adapter's ``prune_images``."""

    select: Any
    questions: QuestionBatch | None  # the question of every image (prompt order), encoded on first use
    clip_text: ClipText | None


@dataclass
class _State:
    adapter: Adapter
    spec: MethodSpec
    config: Any
    keep: int
    clip_text: ClipText | None
    tokenizer: Any
    question: str | list[str] | None
    pruner: LLMPruner | None
    last: KeptTokens | None = None
    images_per_sample: list[int] | None = None  # set by the encoder step, read by the in-LLM step
    generate_images: list[int] | None = None  # images per prompt row of a running generate() (in-LLM methods)
    image_tokens: list[int] | None = None  # LLM tokens of every image after the encoder step (prompt order)
    owner: int = field(default_factory=threading.get_ident)  # the thread that applied the patch
    lock: Any = field(default_factory=threading.RLock)  # held by a patched call: one call at a time


def _check_thread(state: _State, what: str) -> None:
    """One model instance carries one patch: only the thread that applied it may replace or remove it, and not
    while another thread is inside a patched call (that thread would silently run with another method)."""
    if state.owner != threading.get_ident():
        raise RuntimeError(
            f"vlprune.{what}: this model was patched with {state.spec.name!r} by another thread; a model instance "
            "carries one patch at a time. Call vlprune.remove(model) in that thread first, or give each thread "
            "its own model"
        )
    if not state.lock.acquire(blocking=False):
        raise RuntimeError(f"vlprune.{what}: another thread is running the patched model; wait for it to finish")
    state.lock.release()


def _state(model: nn.Module) -> _State | None:
    return model.__dict__.get(_STATE)


def _make_config(spec: MethodSpec, options: dict[str, Any]) -> Any:
    names = {f.name for f in fields(spec.config_cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"{spec.name} has no option(s) {unknown}; its options are {sorted(names)}")
    return spec.config_cls(**options)


def apply(
    model: nn.Module,
    method: str,
    keep: int,
    *,
    processor: Any = None,
    clip: Any = None,
    clip_tokenizer: Any = None,
    question: str | list[str] | None = None,
    budget: str | None = None,
    adapter_options: dict[str, Any] | None = None,
    **options: Any,
) -> nn.Module:
    """Prune the visual tokens of ``model`` (patched in place, reversibly) with ``method`` to ``keep`` per image.

    processor: the model's processor or tokenizer; DeSAP decodes the question from ``input_ids`` with it.
    clip: DeSAP's CLIP text tower + visual projection (hub id, local path, loaded ``CLIPModel`` with
        ``clip_tokenizer``); llava-hf checkpoints lack ``visual_projection``, so load the matching CLIP.
    question: overrides the question found in ``input_ids`` (one string, or one per sample).
    budget: how ``keep`` is counted on tiled families (LLaVA-NeXT: "global" per image, or "tile") and on videos
        (Video-LLaVA: "video" across all its frames, or "frame"); see docs/models.md.
    adapter_options: further options of the model-family adapter (``budget=`` is a shorthand for one of them).
    options: the method's config fields (see ``vlprune.methods()``).
    Applying again replaces the previous patch. Returns the same model.
    Threads: calls of the patched model from several threads run one at a time (a lock per patch); only the
    thread that applied the patch may replace or remove it (another thread gets a RuntimeError, never a model
    silently running someone else's method).
    """
    with _PATCHING:  # check-and-patch is atomic: two threads cannot both find the model unpatched
        return _apply(model, method, keep, processor=processor, clip=clip, clip_tokenizer=clip_tokenizer,
                      question=question, budget=budget, adapter_options=adapter_options, **options)


def _apply(model: nn.Module, method: str, keep: int, *, processor: Any, clip: Any, clip_tokenizer: Any,
           question: Any, budget: str | None, adapter_options: dict[str, Any] | None, **options: Any) -> nn.Module:
    if _state(model) is not None:
        _check_thread(_state(model), "apply")
        remove(model)
    compat.check_version()
    adapter_options = dict(adapter_options or {})
    if budget is not None:
        adapter_options["budget"] = budget
    spec = get_method(method)
    adapter = get_adapter(model, adapter_options)
    fixed = spec.adapter_options.get(adapter.family, {})
    clash = {k: v for k, v in adapter_options.items() if k in fixed and v != fixed[k]}
    if clash:
        raise ValueError(f"{spec.name} on {adapter.family} runs with {fixed} (its authors' layout), not {clash}: "
                         "leave those options out (docs/methods)")
    if fixed:
        adapter = get_adapter(model, {**adapter_options, **fixed})
    compat.check_forward(model)
    config = _make_config(spec, {**checkpoint_defaults(model, spec.name), **options})
    check_keep(keep, adapter.tokens_per_image())
    clip_text = tokenizer = None
    if spec.name == "desap":
        tokenizer = getattr(processor, "tokenizer", processor)
        clip_text = load_clip_text(clip, clip_tokenizer) if clip is not None else adapter.question_encoder(tokenizer)
        if clip_text is None:
            raise ValueError(
                "DeSAP needs a CLIP text tower and visual projection: pass clip='openai/clip-vit-large-patch14-336' "
                "(the CLIP the LVLM's vision tower came from), a local path, or a loaded CLIPModel"
            )
        if tokenizer is None and question is None:
            raise ValueError("DeSAP reads the question from input_ids: pass processor=... (or question=...)")
    if spec.families is not None and (adapter.family not in spec.families or not adapter.per_item_budget):
        raise ValueError(f"{spec.name} runs on {', '.join(spec.families)} with budget='global' only: "
                         f"{spec.families_why} (docs/models.md)")
    pruner = None
    plan = spec.family_plans.get(adapter.family, spec.plan)
    if plan is not None and not adapter.per_item_budget:
        raise ValueError(f"{spec.name} prunes inside the LLM, where keep counts per image (per video): use "
                         f"budget={'video' if adapter.family == 'video_llava' else 'global'!r}")
    if plan is not None:
        layers = adapter.llm_layers()
        plan_kw = {}
        if "tokens_per_image" in inspect.signature(plan).parameters:  # schedules capped by the image size
            plan_kw["tokens_per_image"] = adapter.tokens_per_image()
        pruner = LLMPruner(layers, plan(keep, len(layers), config, **plan_kw), adapter.rope())
    state = _State(adapter, spec, config, keep, clip_text, tokenizer, question, pruner)
    model.__dict__[_STATE] = state
    _patch(model, state)
    return model


def remove(model: nn.Module) -> nn.Module:
    """Undo ``apply``: hooks removed, instance attributes deleted; the model is exactly the original again."""
    with _PATCHING:
        state = _state(model)
        if state is None:
            return model
        _check_thread(state, "remove")
        model.__dict__.pop(_STATE)
        _LAST_AFTER_REMOVE[model] = state.last  # still readable through last_selection
        if state.pruner is not None:
            state.pruner.remove()
        for name in ("forward", "generate"):
            model.__dict__.pop(name, None)
    return model


def last_selection(model: nn.Module) -> KeptTokens | None:
    """What the most recent forward/generate kept (per image), or None before the first call; after
    ``remove`` (or a ``with vlprune.pruned(...)`` block) what the patched model kept last."""
    state = _state(model)
    if state is None and model in _LAST_AFTER_REMOVE:
        return _LAST_AFTER_REMOVE[model]
    if state is None:
        raise ValueError("this model is not patched: call vlprune.apply(model, ...) first")
    return state.last


@contextlib.contextmanager
def pruned(model: nn.Module, method: str, keep: int, **kwargs: Any) -> Iterator[nn.Module]:
    """``with vlprune.pruned(model, "desap", 64, ...):`` — patched inside the block, original after it."""
    apply(model, method, keep, **kwargs)
    try:
        yield model
    finally:
        remove(model)


# -- the patch -------------------------------------------------------------------------------------------
def _bind(fn: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    bound = inspect.signature(fn).bind_partial(*args, **kwargs)
    out = dict(bound.arguments)
    out.update(out.pop("kwargs", {}))
    return out


def _patch(model: nn.Module, state: _State) -> None:
    orig_forward = model.forward
    orig_generate = model.generate

    @functools.wraps(orig_forward)
    def forward(*args: Any, **kwargs: Any) -> Any:
        with state.lock:  # threads share the instance's patch state: one patched call at a time
            return _forward(*args, **kwargs)

    def _forward(*args: Any, **kwargs: Any) -> Any:
        call = _bind(orig_forward, args, kwargs)
        state.adapter.observe(call)
        if state.spec.encoder is not None and state.adapter.has_visual_inputs(call) and not compat.injecting(model):
            call = _prune_encoder(state, call)
        if state.pruner is not None:
            _begin_llm_pass(state, call)
        with compat.image_features_override(model, call) as call:
            out = orig_forward(**call)
        if state.pruner is not None and not state.pruner.decoding and state.pruner.last_kept is not None:
            _record_llm_selection(state)
        return out

    @functools.wraps(orig_generate)
    def generate(*args: Any, **kwargs: Any) -> Any:
        with state.lock:
            return _generate(*args, **kwargs)

    def _generate(*args: Any, **kwargs: Any) -> Any:
        call = _bind(orig_generate, args, kwargs)
        state.adapter.observe(call)
        if state.spec.encoder is None or not state.adapter.has_visual_inputs(call):
            if state.pruner is not None and call.get("input_ids") is not None:
                # generate() may repeat the rows (beams / returned sequences): remember the prompt's samples
                state.generate_images = state.adapter.images_per_sample(call["input_ids"])
            try:
                return orig_generate(**call)
            finally:
                state.generate_images = None
        prompt = call["input_ids"]
        call = _prune_encoder(state, call)
        with compat.image_features_override(model, call) as call:
            out = orig_generate(**call)
        short = call["input_ids"].shape[1]
        # give the user back their own prompt in front of the new tokens (each prompt row repeated for
        # num_return_sequences, as generate() repeats its input rows)
        seqs = out if isinstance(out, torch.Tensor) else out.sequences
        rows = prompt.repeat_interleave(seqs.shape[0] // prompt.shape[0], dim=0)
        seqs = torch.cat([rows, seqs[:, short:]], dim=1)
        if isinstance(out, torch.Tensor):
            return seqs
        out.sequences = seqs
        return out

    model.__dict__["forward"] = forward
    model.__dict__["generate"] = generate


def _questions(state: _State, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[str]:
    b = input_ids.shape[0]
    if state.question is not None:
        qs = [state.question] * b if isinstance(state.question, str) else list(state.question)
        if len(qs) != b:
            raise ValueError(f"question= has {len(qs)} entries for a batch of {b}")
        return qs
    return questions_from_ids(input_ids, attention_mask, state.adapter.visual_token_ids, state.tokenizer)


def _prune_encoder(state: _State, call: dict[str, Any]) -> dict[str, Any]:
    adapter = state.adapter
    input_ids = call.get("input_ids")
    if input_ids is None:
        raise ValueError("encoder-side pruning needs input_ids (to shrink the image placeholders)")
    mask = call.get("attention_mask")
    # The prompt is planned on a host copy of the ids, made before the vision tower is queued: on a GPU, every
    # value read from a device tensor after that point would make the host wait for the tower to finish.
    ids_host = input_ids.cpu()
    mask_host = mask.cpu() if mask is not None else None
    per_sample = adapter.images_per_sample(ids_host)
    state.images_per_sample = per_sample
    image_questions = None
    if state.clip_text is not None:
        qs = _questions(state, ids_host, mask_host)
        image_questions = [q for q, n in zip(qs, per_sample) for _ in range(n)]

    def select(source: Any) -> Selection:
        keep = min(state.keep, source.features().shape[1])
        return state.spec.encoder(source, keep, state.config)

    with torch.no_grad():
        questions = QuestionBatch(state.clip_text, image_questions) if image_questions is not None else None
        result = adapter.prune_images(call, _Run(select, questions, state.clip_text))
    placeholders = [f.shape[0] for f in result.features]
    state.image_tokens = result.llm_tokens if result.llm_tokens is not None else placeholders
    cols, valid = shrink_prompt(ids_host, mask_host, adapter.visual_token_ids, result.tokens_per_image, placeholders)
    add_mask = mask is None and not bool(valid.all())  # rows of different lengths now: their padding needs a mask
    cols, valid = copy_to_device(cols, input_ids.device), copy_to_device(valid, input_ids.device)
    pad = _pad_id(ids_host, mask_host, adapter)
    original = call
    call = dict(call)
    call["input_ids"] = apply_columns(input_ids, cols, valid, pad)
    for name, fill in PER_TOKEN_INPUTS.items():
        x = call.get(name)
        if isinstance(x, torch.Tensor) and x.shape == input_ids.shape:
            call[name] = apply_columns(x, cols, valid, fill)
    if add_mask:
        call["attention_mask"] = valid.long()
    call = adapter.give_features(call, result, per_sample)
    call = adapter.finish_call(original, call, cols, valid)
    state.last = KeptTokens(
        method=state.spec.name, keep=state.keep, indices=result.indices, grids=result.grids,
        assign=result.assign, questions=image_questions or [],
    )
    return call


def _pad_id(input_ids: torch.Tensor, mask: torch.Tensor | None, adapter: Adapter) -> int:
    if mask is not None and bool((mask == 0).any()):
        return int(input_ids[mask == 0][0])
    pad = getattr(adapter.model.config, "pad_token_id", None)
    if pad is None:
        pad = getattr(getattr(adapter.model.config, "text_config", None), "pad_token_id", None)
    return int(pad) if pad is not None else 0


def _begin_llm_pass(state: _State, call: dict[str, Any]) -> None:
    if not compat.is_prefill(call):
        state.pruner.begin_decode()
        return
    input_ids = call.get("input_ids")
    if input_ids is None:
        raise ValueError("in-LLM pruning needs input_ids to find the visual tokens")
    after_encoder = state.spec.encoder is not None and state.images_per_sample is not None
    if after_encoder:
        per_sample = state.images_per_sample  # the encoder step already shrank the image spans
        if len(per_sample) != input_ids.shape[0]:  # generate() repeated every row (num_beams, num_return_sequences)
            _repeat_rows(state, input_ids.shape[0])
            per_sample = state.images_per_sample
    else:
        prompt = state.generate_images
        if prompt and input_ids.shape[0] != len(prompt) and input_ids.shape[0] % len(prompt) == 0:
            state.adapter.repeat_samples(prompt, input_ids.shape[0] // len(prompt))  # generate repeated the rows
            state.generate_images = None
        per_sample = state.adapter.images_per_sample(input_ids)
    image_mask = state.adapter.llm_visual_mask(input_ids, after_encoder=after_encoder)
    state.pruner.begin_prefill(image_mask, per_sample, call.get("attention_mask"))
    state.pruner.last_kept = None


def _repeat_rows(state: _State, rows: int) -> None:
    """The encoder step saw B samples, the LLM sees ``rows`` = B x r (generate's ``repeat_interleave`` of its
    inputs for beams / returned sequences): repeat each sample's images and selection r times to match."""
    per_sample = state.images_per_sample
    if rows % len(per_sample):
        raise ValueError(f"the LLM batch has {rows} rows for {len(per_sample)} prompts")
    r = rows // len(per_sample)
    state.adapter.repeat_samples(per_sample, r)
    state.images_per_sample = [n for n in per_sample for _ in range(r)]

    def pick(xs: list) -> list:
        return repeat_per_sample(xs, per_sample, r) if len(xs) == sum(per_sample) else xs

    if state.image_tokens is not None:
        state.image_tokens = pick(state.image_tokens)
    last = state.last
    if last is not None:

        state.last = KeptTokens(method=last.method, keep=last.keep, indices=pick(last.indices), grids=pick(last.grids),
                                assign=pick(last.assign), questions=pick(last.questions))


def _compose_with_encoder(state: _State) -> None:
    """Hybrid methods (encoder step, then LLM stages): ``state.last`` holds the encoder's selection; keep the
    patches whose LLM token survived the last stage. A token stands for the patch of ``indices`` whose
    ``assign`` is that token's slot (for VisionZip-style selections: dominant patches and contextual targets;
    [CLS] stands for no patch). ``assign`` is restricted to the surviving tokens (renumbered); merges made
    inside the LLM are not tracked (their patches read as dropped)."""
    pruner, enc = state.pruner, state.last
    p = pruner.current
    spans = state.image_tokens  # LLM tokens per image after the encoder step
    indices, assign = [], []
    i = 0
    for row in range(pruner.last_kept.shape[0]):
        rank = _kept_ranks(p, pruner.last_kept, row)
        lo = 0
        for _ in range(p.n_images[row]):
            span = spans[i]
            slots = rank[(rank >= lo) & (rank < lo + span)] - lo
            lo += span
            idx, a = enc.indices[i], enc.assign[i] if i < len(enc.assign) else None
            if a is None:  # no slot map: tokens stand for ``indices`` in order
                slot_patch = torch.full((span,), -1, dtype=torch.long, device=idx.device)
                slot_patch[: len(idx)] = idx[:span]
                new_assign = None
            else:
                slot_patch = torch.full((span,), -1, dtype=torch.long, device=idx.device)
                ok = a[idx] >= 0
                slot_patch[a[idx][ok]] = idx[ok]
                remap = torch.full((span + 1,), -1, dtype=torch.long, device=a.device)
                remap[slots.to(a.device)] = torch.arange(len(slots), device=a.device)
                new_assign = remap[torch.where(a >= 0, a, span)]
            kept = slot_patch[slots.to(slot_patch.device)]
            indices.append(kept[kept >= 0])
            assign.append(new_assign)
            i += 1
    state.last = KeptTokens(
        method=state.spec.name, keep=state.keep, indices=indices, grids=enc.grids, assign=assign,
        questions=enc.questions,
    )
    pruner.last_kept = None


def _kept_ranks(p: Any, kept: torch.Tensor, row: int) -> torch.Tensor:
    """Where the visual tokens of ``row`` kept by the last stage sit among all its visual tokens (prompt order)."""
    kept = kept[row]
    return torch.searchsorted(p.orig_image_pos[row, : p.orig_counts[row]], kept[kept >= 0])


def _record_llm_selection(state: _State) -> None:
    """Turn the prompt positions kept by the last stage into per-image patch indices."""
    pruner = state.pruner
    p = pruner.current
    if state.spec.encoder is not None and state.last is not None:  # hybrid: map through the encoder's choice
        _compose_with_encoder(state)
        return
    n = state.adapter.tokens_per_image()
    side = int(round(n**0.5))
    layout = state.adapter.llm_layout()  # per image: (LLM tokens, grid, LLM position -> patch index)
    indices, grids = [], []
    i = 0
    for row in range(pruner.last_kept.shape[0]):
        rank = _kept_ranks(p, pruner.last_kept, row)
        lo = 0
        for _ in range(p.n_images[row]):
            size, grid, to_patch = layout[i] if layout else (n, (side, side), None)
            i += 1
            idx = rank[(rank >= lo) & (rank < lo + size)] - lo
            if to_patch is not None:
                idx = to_patch.to(idx.device)[idx]
                idx = idx[idx >= 0]
            indices.append(idx)
            grids.append(grid)
            lo += size
    state.last = KeptTokens(
        method=state.spec.name, keep=state.keep, indices=indices, grids=grids, assign=[None] * len(indices),
    )
    pruner.last_kept = None
