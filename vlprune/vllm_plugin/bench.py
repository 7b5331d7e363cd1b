"""``vlprune bench --engine vllm``: serving throughput of full vs pruned LLaVA-1.5 through vLLM, one run.

For every method (``none`` = vLLM's own LLaVA), one engine (``AsyncLLM``, the engine ``vllm serve`` runs) serves
the same requests twice: at a fixed request rate (one request every 1/rate s) and at saturation (all requests at
once). Each request has its own random image (no encoder or prefix cache hits) and generates exactly
``output_tokens`` tokens (``ignore_eos``). Reported per (method, load): requests/s and output tokens/s over the
span from the first arrival to the last completion, and TTFT p50/p99 (arrival to the first output token).
"""
from __future__ import annotations

import asyncio
import gc
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..testing import WORDS
from . import hf_overrides

PROMPT_WORDS = [w for w in WORDS if w not in ("user", "assistant", ":")]


@dataclass
class Row:
    method: str
    keep: int | None
    load: str  # "rate=R/s" or "saturation"
    requests: int
    prompt_tokens: float  # mean per request (the pruned image tokens included)
    duration_s: float
    requests_per_s: float
    output_tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float


def prompts(n: int, image_size: int, prompt_words: int, seed: int) -> list[dict]:
    """``n`` requests: ``user : <image> {words} assistant :`` with one random image each."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        pixels = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
        words = " ".join(rng.choice(PROMPT_WORDS, prompt_words))
        out.append({"prompt": f"user : <image> {words} assistant :", "multi_modal_data": {"image": Image.fromarray(pixels)}})
    return out


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


async def _one(engine: Any, request: dict, params: Any, rid: str, delay: float) -> tuple[float, float, float, int, int]:
    await asyncio.sleep(delay)
    start = time.perf_counter()
    first = None
    tokens = prompt = 0
    async for out in engine.generate(request, params, request_id=rid):
        if first is None and out.outputs and out.outputs[0].token_ids:
            first = time.perf_counter()
        tokens = len(out.outputs[0].token_ids)
        prompt = len(out.prompt_token_ids or [])
    end = time.perf_counter()
    return start, first if first is not None else end, end, tokens, prompt


async def _run_load(engine: Any, requests: list[dict], params: Any, rate: float | None, tag: str) -> dict:
    delays = [i / rate if rate else 0.0 for i in range(len(requests))]
    results = await asyncio.gather(*(_one(engine, r, params, f"{tag}-{i}", d)
                                     for i, (r, d) in enumerate(zip(requests, delays))))
    begin = min(r[0] for r in results)
    end = max(r[2] for r in results)
    span = end - begin
    ttft = [(r[1] - r[0]) * 1e3 for r in results]
    return dict(requests=len(results), prompt_tokens=float(np.mean([r[4] for r in results])), duration_s=span,
                requests_per_s=len(results) / span, output_tokens_per_s=sum(r[3] for r in results) / span,
                ttft_p50_ms=_percentile(ttft, 50), ttft_p99_ms=_percentile(ttft, 99))


def _engine_args(model_dir: Path, overrides: dict, dummy: bool, dtype: str, max_num_seqs: int,
                 kv_cache_bytes: int | None, enforce_eager: bool) -> Any:
    from vllm import AsyncEngineArgs

    kw: dict[str, Any] = dict(model=str(model_dir), hf_overrides=overrides, dtype=dtype,
                              max_num_seqs=max_num_seqs, limit_mm_per_prompt={"image": 1}, seed=0,
                              enforce_eager=enforce_eager)
    if dummy:
        kw["load_format"] = "dummy"
    if kv_cache_bytes:
        kw["kv_cache_memory_bytes"] = kv_cache_bytes
    return AsyncEngineArgs(**kw)


def run_vllm_bench(model_dir: Path, methods: list[str], keep: int, *, clip: str | None, dummy: bool, requests: int,
                   rate: float, output_tokens: int, prompt_words: int, image_size: int, dtype: str = "auto",
                   max_num_seqs: int = 16, kv_cache_bytes: int | None = None, enforce_eager: bool = False,
                   warmup: int = 2, seed: int = 0, progress: Any = None) -> dict:
    """Full vs pruned serving throughput; returns ``{"rows": [...], ...}`` (see ``Row``)."""
    import vllm
    from vllm import SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

    params = SamplingParams(temperature=0, max_tokens=output_tokens, ignore_eos=True, detokenize=False)
    load = prompts(requests, image_size, prompt_words, seed)
    warm = prompts(warmup, image_size, prompt_words, seed + 1)
    rows: list[Row] = []
    for method in methods:
        overrides = hf_overrides(method, None if method in ("none", "full") else keep,
                                 clip=clip if method == "desap" else None)
        if progress:
            progress(f"starting {method}")
        engine = AsyncLLM.from_engine_args(_engine_args(model_dir, overrides, dummy, dtype, max_num_seqs,
                                                        kv_cache_bytes, enforce_eager))
        try:
            async def session() -> list[dict]:
                await _run_load(engine, warm, params, None, f"{method}-warm")
                fixed = await _run_load(engine, load, params, rate, f"{method}-rate")
                saturated = await _run_load(engine, load, params, None, f"{method}-sat")
                return [fixed, saturated]

            fixed, saturated = asyncio.run(session())
        finally:
            engine.shutdown()
            del engine
            gc.collect()
        k = None if method in ("none", "full") else keep
        rows.append(Row(method, k, f"rate={rate:g}/s", **fixed))
        rows.append(Row(method, k, "saturation", **saturated))
        if progress:
            progress(f"done {method}")
    return {"engine": "vllm", "vllm": getattr(vllm, "__version__", "?"), "model": str(model_dir),
            "load_format": "dummy" if dummy else "auto", "machine": platform.processor() or platform.machine(),
            "requests": requests, "rate": rate, "output_tokens": output_tokens, "prompt_words": prompt_words,
            "max_num_seqs": max_num_seqs, "rows": [asdict(r) for r in rows]}
