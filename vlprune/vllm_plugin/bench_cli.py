"""``vlprune bench --engine vllm``: model directory set-up, the run, the table and the JSON."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import typer

from ..presets import PRESETS


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def prepare_model(model: str, methods: list[str], clip: str | None, layers: int | None, vision_layers: int | None,
                  work: Path) -> tuple[Path, bool, str | None, int]:
    """(model dir, dummy weights?, DeSAP's CLIP dir, image size) for ``--model`` DIR | tiny | a LLaVA-1.5 preset."""
    from .checkpoints import TINY_GRID, TINY_PATCH, save_preset_clip, save_tiny_clip, save_tiny_llava, write_preset_llava

    wants_clip = "desap" in methods and clip is None
    if Path(model).is_dir():
        if wants_clip:
            raise typer.BadParameter("desap on a model directory needs --clip (the CLIP whose tower the model uses)",
                                     param_hint="--clip")
        cfg = json.loads((Path(model) / "config.json").read_text())
        return Path(model), False, clip, int(cfg["vision_config"]["image_size"])
    if model == "tiny":
        path = save_tiny_llava(work / "tiny-llava")
        if wants_clip:
            clip = str(save_tiny_clip(path, work / "tiny-clip"))
        return path, False, clip, TINY_GRID * TINY_PATCH
    if model in PRESETS and model.startswith("llava-1.5"):
        path = write_preset_llava(model, work / model, layers, vision_layers)
        if wants_clip:
            clip = str(save_preset_clip(model, work / f"{model}-clip"))
        return path, True, clip, PRESETS[model].image_size
    raise typer.BadParameter("with --engine vllm: a LLaVA-1.5 checkpoint directory, tiny, llava-1.5-7b or "
                             "llava-1.5-13b (random weights, load_format=dummy)", param_hint="--model")


def print_table(report: dict, console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"vLLM {report['vllm']} serving {report['model_name']} on {report['device']} "
                        f"({report['requests']} requests, {report['output_tokens']} output tokens each)")
    for col in ("method", "keep", "load", "prompt tok", "req/s", "out tok/s", "TTFT p50 ms", "TTFT p99 ms",
                "req/s vs full"):
        table.add_column(col, justify="left" if col in ("method", "load") else "right")
    full = {r["load"]: r for r in report["rows"] if r["method"] in ("none", "full")}
    for r in report["rows"]:
        base = full.get(r["load"])
        gain = f"{r['requests_per_s'] / base['requests_per_s']:.2f}x" if base else "-"
        table.add_row(r["method"], str(r["keep"] or "-"), r["load"], f"{r['prompt_tokens']:.0f}",
                      f"{r['requests_per_s']:.2f}", f"{r['output_tokens_per_s']:.1f}", f"{r['ttft_p50_ms']:.0f}",
                      f"{r['ttft_p99_ms']:.0f}", gain)
    console.print(table)


def vllm_bench(model: str, names: list[str], keeps: list[int], *, clip: str | None, layers: int | None,
               vision_layers: int | None, requests: int, rate: float, output_tokens: int, prompt_words: int,
               dtype: str, max_num_seqs: int, kv_cache_gb: float | None, device: str, json_path: Path | None,
               console: Any) -> dict:
    """Run the vLLM benchmark (in the environment that has vLLM: ``make env-vllm``) and print its table."""
    import importlib.util

    from .bench import run_vllm_bench

    if requests < 1 or rate <= 0 or output_tokens < 1:
        raise typer.BadParameter("--requests and --output-tokens must be >= 1 and --rate > 0")
    methods = ["none"] + [m for m in names if m not in ("none", "full")]
    from .settings import parse_settings

    for m in methods[1:]:  # in-LLM methods and bad budgets stop here, before any engine starts
        for k in keeps:
            try:
                parse_settings({"method": m, "keep": k, "clip": clip or "-"})
            except (ValueError, TypeError) as e:
                raise typer.BadParameter(str(e), param_hint="--methods") from None
    if importlib.util.find_spec("vllm") is None:
        raise typer.BadParameter("vLLM is not installed here: run in .venv-vllm (make env-vllm) or "
                                 "pip install 'vlprune[vllm]'", param_hint="--engine")
    dtype = {"auto": "auto", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype]
    with tempfile.TemporaryDirectory(prefix="vlprune-vllm-") as tmp:
        model_dir, dummy, clip, image_size = prepare_model(model, methods, clip, layers, vision_layers, Path(tmp))
        rows: list[dict] = []
        report: dict = {}
        for i, keep in enumerate(keeps):
            run = methods if i == 0 else methods[1:]  # the full model once
            report = run_vllm_bench(model_dir, run, keep, clip=clip, dummy=dummy, requests=requests, rate=rate,
                                    output_tokens=output_tokens, prompt_words=prompt_words, image_size=image_size,
                                    dtype=dtype, max_num_seqs=max_num_seqs,
                                    kv_cache_bytes=int(kv_cache_gb * 2**30) if kv_cache_gb else None,
                                    progress=lambda s: console.print(f"[dim]{s}[/dim]"))
            rows += report["rows"]
    if device.startswith("cuda"):
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else device
    else:
        device = cpu_name()
    report.update(rows=rows, model_name=model, device=device,
                  command="vlprune " + " ".join(sys.argv[1:]))
    print_table(report, console)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2))
        console.print(f"[dim]wrote {json_path}[/dim]")
    return report
