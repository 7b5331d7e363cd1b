"""``vlprune bench`` on the command line (the measuring is ``vlprune.speed.run_bench``)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import torch
import typer

from .speed_report import print_report
from .validate import parse_keeps, parse_methods

DTYPES = ("bf16", "fp16", "fp32")


def parse_size(text: Optional[str]) -> Optional[tuple[int, int]]:
    """``"672x672"`` -> (672, 672) (height, width); None stays None."""
    if text is None:
        return None
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"expected HxW, got {text!r}", param_hint="--image-size") from None
    return h, w


def bench_command(
    model: str = typer.Option("llava-1.5-7b", help="Preset (llava-1.5-7b, llava-1.5-13b, llava-next-7b, "
                              "qwen2.5-vl-7b; video-llava-7b: one 8-frame video per sample; qwen2.5-vl-7b-video: one 16-frame video) "
                              "or a tiny test model "
                              "(tiny, tiny-next, tiny-qwen, tiny-qwen-video, tiny-video: vlprune.testing)."),
    layers: Optional[int] = typer.Option(None, help="LLM decoder layers to build (default: the preset's)."),
    vision_layers: Optional[int] = typer.Option(None, help="Vision blocks to build (default: the preset's scaled "
                                                "like --layers, at least 2)."),
    image_size: Optional[str] = typer.Option(None, help="HxW pixels of the image (llava-next: default 672x672; "
                                             "qwen2.5-vl: default the preset's 896x896, multiples of 28)."),
    batch: int = typer.Option(1, help="Samples per call (one image each)."),
    dtype: str = typer.Option("auto", help="auto | bf16 | fp16 | fp32. auto: bf16 on a GPU or a CPU with bf16 "
                              "hardware (AMX / AVX-512 BF16), else fp32 (bf16 is emulated and slower there)."),
    device: str = typer.Option("cuda" if torch.cuda.is_available() else "cpu", help="cpu | cuda."),
    methods: str = typer.Option("none,desap,vispruner,visionzip,fastv,random", help="Comma-separated; `none` = full."),
    keep: str = typer.Option("64,128,192", help="Visual-token budgets, comma separated."),
    repeats: int = typer.Option(3, help="Timed repeats per cell (median reported)."),
    warmup: int = typer.Option(1, help="Warm-up passes per cell (the first also measures memory and KV cache)."),
    prompt_tokens: int = typer.Option(32, help="Text tokens in the prompt besides the image tokens."),
    seed: int = typer.Option(0, help="Seed of the random weights and images."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's). On a CPU shared with "
                                          "other processes, 1 avoids OpenMP stalls that make timings meaningless."),
    clock: str = typer.Option("wall", help="wall (default) | cpu: process CPU time, for a CPU shared with other "
                              "jobs (use with --threads 1)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON here."),
    engine: str = typer.Option("transformers", help="transformers (prefill/TTFT per call) | vllm (serving: req/s, "
                               "output tok/s, TTFT p50/p99 at --rate and at saturation; needs vLLM, docs/vllm.md)."),
    requests: int = typer.Option(32, help="vllm: requests per load (one random image each)."),
    rate: float = typer.Option(2.0, help="vllm: the fixed request rate (requests/s) of the first load."),
    output_tokens: int = typer.Option(32, help="vllm: tokens generated per request (ignore_eos)."),
    clip: Optional[str] = typer.Option(None, help="vllm: DeSAP's CLIP (hub id / dir) for a checkpoint directory."),
    max_num_seqs: int = typer.Option(16, help="vllm: the engine's max_num_seqs (concurrent sequences)."),
    kv_cache_gb: Optional[float] = typer.Option(None, help="vllm: KV cache size in GiB (default: vLLM's)."),
) -> None:
    """Prefill / TTFT / pruning-step time, peak memory, KV cache and FLOPs-bound speedup per method and budget."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    console = Console(width=None if sys.stdout.isatty() else 200)
    names = parse_methods(methods, allow_full=True)  # everything checked before minutes of model building
    keeps = parse_keeps(keep)
    if dtype != "auto" and dtype not in DTYPES:
        raise typer.BadParameter(f"must be auto or one of {sorted(DTYPES)}", param_hint="--dtype")
    if clock not in ("wall", "cpu"):
        raise typer.BadParameter("must be wall or cpu", param_hint="--clock")
    if engine == "vllm":
        from .vllm_plugin.bench_cli import vllm_bench

        vllm_bench(model, names, keeps, clip=clip, layers=layers, vision_layers=vision_layers, requests=requests,
                   rate=rate, output_tokens=output_tokens, prompt_words=prompt_tokens, dtype=dtype,
                   max_num_seqs=max_num_seqs, kv_cache_gb=kv_cache_gb, device=device, json_path=json_path,
                   console=console)
        return
    if engine != "transformers":
        raise typer.BadParameter("must be transformers or vllm", param_hint="--engine")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise typer.BadParameter("no CUDA GPU is visible to torch here; use --device cpu", param_hint="--device")
    size = parse_size(image_size)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with Progress(TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as bar:
            task = bar.add_task("building", total=None)

            def progress(label: str, done: int, total: int) -> None:
                bar.update(task, description=label, completed=done, total=total)

            from .speed import run_bench

            report = run_bench(model, layers, vision_layers, batch, dtype, device, names, keeps, repeats, warmup,
                               prompt_tokens, seed, progress, clock, size)
    except NotImplementedError as e:
        console.print(f"[yellow]skipped:[/yellow] {e}")
        raise typer.Exit(code=0)
    print_report(report, console)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2))
        console.print(f"[dim]wrote {json_path}[/dim]")
