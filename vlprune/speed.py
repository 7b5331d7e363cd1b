"""``vlprune bench``: prefill / TTFT / pruning-step time, memory, KV cache and FLOPs of every method.

The model is the real transformers architecture at a preset's shape (``vlprune/presets.py``) with random
weights, optionally trimmed in depth so it fits a CPU: ``LlavaForConditionalGeneration`` (LLaVA-1.5),
``LlavaNextForConditionalGeneration`` (LLaVA-NeXT: one 672x672 image = base + 2x2 tiles by default) or
``Qwen2_5_VLForConditionalGeneration`` (one 896x896 image by default), each fed one random image per sample laid
out as its processor would (``make_inputs``). What is measured (docs/speed.md has the details):

- ``prefill_ms``: median wall time of ``model(**inputs, use_cache=True, logits_to_keep=1)`` (vision tower +
  pruning + projector + LLM + last-token logits), after warm-up. CUDA: events + synchronize.
- ``ttft_ms``: median of ``model.generate(**inputs, max_new_tokens=1, do_sample=False)``: everything up to and
  including the first generated token.
- ``prune_ms``: the pruning step alone, timed inside the prefill passes. Encoder-side methods: time from the
  call to the LLM's entry minus the vision-tower forward minus the projector, minus the same quantity of the
  unpruned model (input binding, embedding lookup, feature scatter), i.e. what the method adds before the
  LLM: question decoding, CLIP text encoding, [CLS] attention / key / decoupled-attention recomputation,
  alignment, ranking, merge, prompt shrinking. In-LLM methods: total time spent in the pruner's per-layer
  prefill hook (score recomputation, ranking, gathering hidden states / rotary tables / masks).
- ``peak_mem_mb``: CUDA: ``max_memory_allocated`` minus the allocation before the call. CPU: peak resident set
  size during one prefill, sampled every 0.5 ms from ``/proc/self/statm`` after ``malloc_trim``, minus the
  resident size before it (tracemalloc does not see torch's allocator; ``ru_maxrss`` is a lifetime maximum).
- ``kv_cache_mb``: bytes of every key/value tensor in the cache after prefill.
- ``tflops``: ``vlprune.flops.method_tflops`` (LLM FLOPs of the visual tokens, eq. 6-7) at the built depth.
- ``flops_bound_speedup``: F(full) / F(method) with F the whole prefill: vision tower + projector + LLM over
  visual (NeXT: + newline) and text tokens, counted at the depths actually built (see ``prefill_flops``).
- ``llm_tokens``: tokens cached by the first and the last decoder layer (what the LLM really processed).
- ``speedup`` = prefill(none) / prefill(method); ``efficiency`` = speedup / flops_bound_speedup.

This module measures (``run_bench``); the models and inputs are built by ``speed_models``, the whole-prefill
FLOPs counted by ``speed_flops``, the report judged and printed by ``speed_report``, the command is ``speed_cli``.
"""
from __future__ import annotations

import ctypes
import gc
import os
import statistics
import threading
import time
from typing import Any, Callable, Optional

import torch
import typer
from torch import nn

from .compat import output_cache
from .cpu_info import matmul_path, pick_dtype
from .flops import method_tflops, tokens_per_layer
# the models and the FLOPs moved to their own modules; their names stay importable from here
from .speed_flops import clip_tower_flops, get_stage, llm_layer_flops, prefill_flops, qwen_vit_flops  # noqa: F401
from .speed_models import (DTYPES, NEXT_PINPOINTS, QWEN_PATCH_IN, QWEN_WINDOW, TINY, BenchModel,  # noqa: F401
                           ImageLayout, build, build_llava, build_llava_next, build_qwen2_5_vl, build_tiny,
                           build_tiny_next, build_tiny_qwen, llava_layout, make_inputs, method_kwargs, next_layout,
                           qwen_full_blocks, qwen_layout, vision_layers_for)
from .speed_report import check_targets, device_name


# -- measuring ---------------------------------------------------------------------------------------------
class Clock:
    """Wall time; on CUDA, events: for whole calls, and as marks inside the pass (hooks record an event and never
    synchronise, so timing the parts does not serialise the host and the device and slow the pass it measures)."""

    def __init__(self, device: torch.device, kind: str = "wall") -> None:
        if kind not in ("wall", "cpu"):
            raise typer.BadParameter("--clock must be wall or cpu", param_hint="--clock")
        self.cuda = device.type == "cuda"
        # "cpu": process CPU time (all threads), robust to other processes on a shared CPU; with --threads 1 it is
        # the compute time of the pass. Meaningless on CUDA (the GPU works asynchronously): wall time there.
        self._t = time.process_time if (kind == "cpu" and not self.cuda) else time.perf_counter
        self.kind = "wall" if self.cuda else kind

    def mark(self) -> Any:
        """A point of the pass: a recorded CUDA event, or a host clock reading."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return self._t()

    def ms(self, start: Any, end: Any) -> float:
        """Milliseconds between two marks (on CUDA, waits until the device has passed ``end``)."""
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end)
        return 1e3 * (end - start)

    def time(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        """(milliseconds, result) of ``fn()``."""
        if self.cuda:
            torch.cuda.synchronize()
        start = self.mark()
        out = fn()
        return self.ms(start, self.mark()), out


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - no procfs: lifetime maximum only
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Peak memory (MB) that ``fn()`` needs above what was allocated before it, and its result."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20, out
    _malloc_trim()
    before = _rss_bytes()
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.0005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        out = fn()
        peak[0] = max(peak[0], _rss_bytes())
    finally:
        stop.set()
        thread.join()
    return (peak[0] - before) / 2**20, out


def kv_cache_mb(cache: Any) -> float:
    """Bytes of every key/value tensor held by a transformers cache (DynamicCache layers or legacy tuples)."""
    if cache is None:
        return 0.0
    total = 0
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
    else:
        for pair in cache:
            for t in pair:
                total += t.numel() * t.element_size()
    return total / 2**20


def timed_parts(model: nn.Module) -> tuple[nn.Module, nn.Module, list[nn.Module], nn.Module]:
    """(projector, patch embedding, vision blocks, LLM) of a LLaVA / LLaVA-NeXT / Video-LLaVA / Qwen2.5-VL model."""
    inner = model.model
    visual = getattr(inner, "visual", None)
    if visual is not None:  # Qwen2.5-VL: the ViT's merger projects into the LLM
        return visual.merger, visual.patch_embed, list(visual.blocks), inner.language_model
    tower = getattr(inner, "video_tower", None) or inner.vision_tower  # Video-LLaVA: the bench runs videos
    return inner.multi_modal_projector, tower.embeddings, list(tower.encoder.layers), inner.language_model


class StepTimer:
    """Times the parts of one prefill with hooks that set clock marks: vision tower, projector, entry into the LLM,
    in-LLM pruning. Read the parts after the pass."""

    def __init__(self, model: nn.Module, clock: Clock) -> None:
        self.clock = clock
        self.t0: Any = None
        self.vision_start: Any = None
        self.vision_end: Any = None
        self.llm_entry: Any = None
        self.end: Any = None
        self.projector_spans: list[tuple[Any, Any]] = []
        self.prune_spans: list[tuple[Any, Any]] = []
        self._projector_start: Any = None
        self._handles = []
        proj, embed, blocks, llm = timed_parts(model)
        self._handles.append(proj.register_forward_pre_hook(self._projector_in))
        self._handles.append(proj.register_forward_hook(self._projector_out))
        # The vision forward is timed from the patch embedding to the last block that runs: the unpatched model
        # calls the tower's forward, encoder-side pruning on LLaVA runs the blocks up to the feature layer itself.
        self._handles.append(embed.register_forward_pre_hook(self._vision_in))
        for block in blocks:
            self._handles.append(block.register_forward_hook(self._vision_block_done))
        self._handles.append(llm.register_forward_pre_hook(self._enter_llm))
        self._wrapped = None

    def _projector_in(self, module, args):
        if not self.projector_spans:
            self._projector_start = self.clock.mark()

    def _projector_out(self, module, args, out):
        """Only the first call per pass counts: DeSAP on Qwen2.5-VL runs the merger again on its decoupled
        attention, which is selection work, not the projection of the image."""
        if self._projector_start is not None:
            self.projector_spans.append((self._projector_start, self.clock.mark()))
            self._projector_start = None

    def _vision_in(self, module, args):
        if self.vision_start is None:
            self.vision_start = self.clock.mark()

    def _vision_block_done(self, module, args, out):
        self.vision_end = self.clock.mark()

    def _enter_llm(self, module, args):
        if self.llm_entry is None:
            self.llm_entry = self.clock.mark()

    def wrap_pruner(self, pruner: Any) -> None:
        """Mark the in-LLM pruner's per-layer prefill step (an instance attribute, removed later)."""
        orig = pruner._prefill

        def timed(*args, **kwargs):
            start = self.clock.mark()
            try:
                return orig(*args, **kwargs)
            finally:
                self.prune_spans.append((start, self.clock.mark()))

        pruner.__dict__["_prefill"] = timed
        self._wrapped = pruner

    def start(self) -> None:
        self.vision_start = self.vision_end = self.llm_entry = self.end = self._projector_start = None
        self.projector_spans, self.prune_spans = [], []
        self.t0 = self.clock.mark()

    def finish(self) -> None:
        """Mark the end of the pass (right after the call returns)."""
        self.end = self.clock.mark()

    def vision_ms(self) -> float:
        """The vision tower's forward: patch embedding to the last block that ran."""
        return self.clock.ms(self.vision_start, self.vision_end) if self.vision_start is not None else 0.0

    def llm_ms(self) -> float:
        """From the LLM's entry to the end of the pass: decoder layers (in-LLM pruning included), final norm, logits."""
        return self.clock.ms(self.llm_entry, self.end) if self.llm_entry is not None and self.end is not None else 0.0

    def pre_llm_overhead_ms(self) -> float:
        """Time from the call to the LLM's entry that is neither vision tower nor projector."""
        if self.llm_entry is None:
            return 0.0
        projector = sum(self.clock.ms(a, b) for a, b in self.projector_spans)
        return self.clock.ms(self.t0, self.llm_entry) - self.vision_ms() - projector

    def llm_prune_ms(self) -> float:
        return sum(self.clock.ms(a, b) for a, b in self.prune_spans)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        if self._wrapped is not None:
            self._wrapped.__dict__.pop("_prefill", None)


def cached_tokens(cache: Any) -> Optional[list[int]]:
    """Tokens the first and the last layer cached in the prefill: the LLM's input length, and what is left after
    in-LLM pruning (checks the token counts the FLOPs assume, e.g. LLaVA-NeXT's kept newlines)."""
    layers = getattr(cache, "layers", None)
    if not layers or getattr(layers[0], "keys", None) is None:
        return None
    return [int(layers[0].keys.shape[-2]), int(layers[-1].keys.shape[-2])]


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


class Cell:
    """One (method, keep) of the benchmark; ``session()`` patches the model for one pass and unpatches it."""

    def __init__(self, bm: BenchModel, inputs: dict[str, torch.Tensor], method: str, keep: Optional[int],
                 clock: Clock) -> None:
        self.bm, self.inputs, self.method, self.keep, self.clock = bm, inputs, method, keep, clock
        self.prefills: list[float] = []
        self.ttfts: list[float] = []
        self.pre_llm: list[float] = []
        self.llm_prune: list[float] = []
        self.vision: list[float] = []
        self.llm: list[float] = []
        self.peak = self.kv = float("nan")
        self.llm_tokens: Optional[list[int]] = None

    @property
    def label(self) -> str:
        return f"{self.method} {self.keep if self.keep is not None else 'full'}"

    def _enter(self) -> StepTimer:
        from . import api

        model = self.bm.model
        if self.method != "none":
            api.apply(model, self.method, self.keep, **method_kwargs(self.method, self.bm))
        timer = StepTimer(model, self.clock)
        state = model.__dict__.get("_vlprune_state")
        if state is not None and state.pruner is not None:
            timer.wrap_pruner(state.pruner)
        return timer

    def _exit(self, timer: StepTimer) -> None:
        from . import api

        timer.remove()
        api.remove(self.bm.model)

    def _prefill(self):
        with torch.inference_mode():
            return self.bm.model(**self.inputs, use_cache=True, logits_to_keep=1)

    def warm(self, warmup: int, device: torch.device) -> None:
        """Warm-up passes; the first measures peak memory and the KV cache."""
        timer = self._enter()
        try:
            for i in range(max(1, warmup)):
                timer.start()
                if i == 0:
                    self.peak, out = peak_memory_mb(self._prefill, device)
                    self.kv = kv_cache_mb(output_cache(out))
                    self.llm_tokens = cached_tokens(output_cache(out))
                    del out
                else:
                    self._prefill()
        finally:
            self._exit(timer)

    def time_prefill(self) -> None:
        timer = self._enter()
        try:
            timer.start()
            ms, out = self.clock.time(self._prefill)
            timer.finish()
            del out
            self.pre_llm.append(timer.pre_llm_overhead_ms())
            self.llm_prune.append(timer.llm_prune_ms())
            self.vision.append(timer.vision_ms())
            self.llm.append(timer.llm_ms())
        finally:
            self._exit(timer)
        self.prefills.append(ms)

    def time_first_token(self) -> None:
        timer = self._enter()
        try:
            with torch.inference_mode():
                ms, _ = self.clock.time(
                    lambda: self.bm.model.generate(**self.inputs, max_new_tokens=1, do_sample=False))
        finally:
            self._exit(timer)
        self.ttfts.append(ms)

    def summary(self) -> dict:
        return {
            "method": self.method, "keep": self.keep, "prefill_ms": _median(self.prefills),
            "prefill_min_ms": min(self.prefills) if self.prefills else float("nan"),
            "ttft_ms": _median(self.ttfts), "pre_llm_ms": _median(self.pre_llm),
            "llm_prune_ms": _median(self.llm_prune), "vision_ms": _median(self.vision), "llm_ms": _median(self.llm),
            "peak_mem_mb": self.peak, "kv_cache_mb": self.kv,
            "llm_tokens": self.llm_tokens,
        }


def run_bench(model: str = "llava-1.5-7b", layers: Optional[int] = None, vision_layers: Optional[int] = None,
              batch: int = 1, dtype: str = "auto", device: str = "cpu", methods: list[str] | None = None,
              keeps: list[int] | None = None, repeats: int = 3, warmup: int = 1, prompt_tokens: int = 32,
              seed: int = 0, progress: Optional[Callable[[str, int, int], None]] = None, clock: str = "wall",
              image_size: Optional[tuple[int, int]] = None) -> dict:
    """Build, measure every (method, keep), and return the JSON report (``results``: the ``none`` row first)."""
    from .registry import get_method

    methods = methods or ["none", "desap", "vispruner", "visionzip", "fastv", "random"]
    keeps = keeps or [64, 128, 192]
    dev = torch.device(device)
    dtype, dtype_reason = pick_dtype(dtype, dev)
    if dtype not in DTYPES:
        raise typer.BadParameter(f"--dtype must be auto or one of {sorted(DTYPES)}", param_hint="--dtype")
    torch_dtype = DTYPES[dtype]
    torch.manual_seed(seed)
    t_build = time.perf_counter()
    bm = build(model, layers, vision_layers, torch_dtype, dev, seed, image_size)
    build_s = time.perf_counter() - t_build
    inputs = make_inputs(bm, batch, prompt_tokens, dev, torch_dtype, seed)
    text_tokens = int(inputs["input_ids"].shape[1]) - bm.image_tokens
    clock = Clock(dev, clock)
    cells: list[tuple[str, Optional[int]]] = [("none", None)] if "none" in methods else []
    skipped: list[dict] = []
    for name in methods:
        if name == "none":
            continue
        try:
            get_method(name)
        except ValueError as e:
            skipped.append({"method": name, "reason": str(e)})
            continue
        cells += [(name, k) for k in keeps]
    # Warm every cell, then time the cells round-robin (repeat r of every cell, then r+1, ...) so a change of
    # load on a shared machine hits all cells alike instead of whichever cell happened to be running.
    total = len(cells) * (max(1, warmup) + 2 * repeats)
    done = [0]

    def step(label: str, n: int = 1) -> None:
        done[0] += n
        if progress:
            progress(label, done[0], total)

    live: list[Cell] = []
    for name, k in cells:
        cell = Cell(bm, inputs, name, k, clock)
        try:
            cell.warm(warmup, dev)
            live.append(cell)
        except (ValueError, NotImplementedError) as e:
            skipped.append({"method": name, "keep": k, "reason": str(e)})
            total -= 2 * repeats
        step(cell.label, max(1, warmup))
    for _ in range(repeats):
        for cell in live:
            cell.time_prefill()
            step(cell.label)
    for _ in range(repeats):
        for cell in live:
            cell.time_first_token()
            step(cell.label)
    raw = [c.summary() for c in live]

    full = next((r for r in raw if r["method"] == "none"), None)
    base_overhead = full["pre_llm_ms"] if full else 0.0
    full_flops = prefill_flops(bm.shape, None, None, text_tokens, batch, bm.layout)
    results = []
    for r in raw:
        m, k = r["method"], r["keep"]
        if m == "none":
            prune = 0.0
        else:
            stage = get_method(m).stage
            prune = 0.0
            if "encoder" in stage:
                prune += r["pre_llm_ms"] - base_overhead
            if "llm" in stage:
                prune += r["llm_prune_ms"]
        flops = prefill_flops(bm.shape, None if m == "none" else m, k, text_tokens, batch, bm.layout,
                              kept_newlines(bm, m, k, r["llm_tokens"], text_tokens))
        bound = full_flops / flops
        speedup = full["prefill_ms"] / r["prefill_ms"] if full else None
        results.append({
            "method": m, "keep": k if k is not None else bm.patches,
            "prefill_ms": r["prefill_ms"], "prefill_min_ms": r["prefill_min_ms"], "prune_ms": prune, "ttft_ms": r["ttft_ms"],
            "vision_ms": r["vision_ms"], "llm_ms": r["llm_ms"],
            "peak_mem_mb": r["peak_mem_mb"], "kv_cache_mb": r["kv_cache_mb"], "llm_tokens": r["llm_tokens"],
            "tflops": method_tflops(None if m == "none" else m, k, bm.shape, bm.patches),
            "prefill_tflops": flops / 1e12,
            "speedup": speedup, "flops_bound_speedup": bound,
            "efficiency": (speedup / bound) if speedup is not None else None,
        })
    report = {
        "device": device_name(dev), "model": bm.name, "family": bm.family, "layers": bm.shape.layers,
        "vision_layers": bm.shape.vision_layers, "batch": batch, "dtype": dtype,
        "dtype_reason": dtype_reason, "cpu_matmul": matmul_path() if dev.type == "cpu" else None,
        "image_size": list(bm.layout.size), "frames": bm.shape.frames, "tiles": bm.layout.tiles,
        "newlines": bm.layout.newlines,
        "visual_tokens": bm.patches, "text_tokens": text_tokens, "repeats": repeats, "warmup": warmup,
        "threads": torch.get_num_threads(), "clock": clock.kind, "build_s": build_s, "torch": torch.__version__,
        "results": results, "skipped": skipped,
    }
    report["targets"] = check_targets(report)
    return report


def kept_newlines(bm: BenchModel, method: str, keep: Optional[int], llm_tokens: Optional[list[int]],
                  text_tokens: int) -> Optional[int]:
    """LLaVA-NeXT newline tokens per sample an encoder-side method handed the LLM, from the first layer's cache
    (LLM input = kept tokens + newlines + text; a batch is padded to its longest sample, which is what the LLM
    computes on); None where there is nothing to measure."""
    if bm.family != "llava_next" or method == "none" or llm_tokens is None or keep is None:
        return None
    if get_stage(method) == "llm":
        return None
    visual = tokens_per_layer(method, keep, bm.shape, bm.patches)[0]
    return max(0, llm_tokens[0] - visual - text_tokens)
