"""The ``vlprune`` command line: methods, flops, eval, show, bench, score, testbed."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Training-free visual-token pruning for vision-language models.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console(width=None if sys.stdout.isatty() else 160)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _options(pairs: Optional[list[str]]) -> dict[str, dict]:
    """``["desap.sign=-1", "asap.threshold=0.8"]`` -> ``{"desap": {"sign": -1}, "asap": {"threshold": 0.8}}``."""
    from .lmms_plugin_args import coerce

    out: dict[str, dict] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot:
            raise typer.BadParameter(f"expected METHOD.OPTION=VALUE, got {pair!r}", param_hint="--set")
        out.setdefault(method, {})[name] = coerce(value)
    return out


def _write_json(path: Optional[Path], data: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))
        console.print(f"[dim]wrote {path}[/dim]")


@app.command("methods")
def methods_command() -> None:
    """List the registered methods with their paper, stage and default options."""
    from .registry import methods

    table = Table(title="vlprune methods")
    for col in ("method", "stage", "paper", "defaults"):
        table.add_column(col)
    for name, spec in methods().items():
        table.add_row(name, spec.stage, spec.paper, ", ".join(f"{k}={v!r}" for k, v in spec.defaults().items()))
    console.print(table)


@app.command("flops")
def flops_command(
    model: str = typer.Option("llava-1.5-7b", help="Preset: llava-1.5-7b, llava-1.5-13b, llava-next-7b, qwen2.5-vl-7b."),
    keep: str = typer.Option("64", help="Visual-token budget(s), comma separated."),
    method: str = typer.Option("desap", help="Method (in-LLM methods are counted layer by layer)."),
    tokens: Optional[int] = typer.Option(None, help="Unpruned visual tokens (default: the preset's)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the table as JSON here."),
) -> None:
    """LLM-side visual-token FLOPs, desap.txt appendix B.2 eqs. 6-7."""
    from .flops import method_tflops, tokens_per_layer
    from .presets import get_preset

    shape = get_preset(model)
    full = method_tflops(None, None, shape, tokens)
    rows = []
    for k in _ints(keep):
        counts = tokens_per_layer(method, k, shape, tokens)
        t = method_tflops(method, k, shape, tokens)
        rows.append({"method": method, "keep": k, "tflops": t, "reduction": 1 - t / full, "tokens_per_layer": counts})
    table = Table(title=f"{shape.name}: {tokens or shape.visual_tokens} visual tokens -> {full:.3f} TFLOPs")
    for col in ("method", "keep", "TFLOPs", "reduction", "tokens per layer"):
        table.add_column(col, justify="right")
    for r in rows:
        layers = r["tokens_per_layer"]
        summary = f"{layers[0]}..{layers[-1]}" if len(set(layers)) > 1 else str(layers[0])
        table.add_row(r["method"], str(r["keep"]), f"{r['tflops']:.3f}", f"{100 * r['reduction']:.1f}%", summary)
    console.print(table)
    _write_json(json_path, {"model": shape.name, "full_tflops": full, "results": rows})


@app.command("eval")
def eval_command(
    model: str = typer.Option("testbed", help="`testbed` or a LLaVA checkpoint (hub id / path)."),
    bench: str = typer.Option("testbed", help="`testbed` (bundled scenes) or NAME:DIR, NAME in pope, gqa, mme, textvqa, vqav2, sqa, mmbench (LLaVA layout)."),
    methods: str = typer.Option("desap,vispruner,visionzip,fastv,random", help="Comma-separated methods."),
    keep: str = typer.Option("16,32,48", help="Budgets, comma separated."),
    seed: Optional[int] = typer.Option(None, help="Draw a new test split with this seed (default: the canonical one)."),
    split: str = typer.Option("test", help="test | val (tune on val, never on test)."),
    limit: Optional[int] = typer.Option(None, help="Evaluate the first N samples only."),
    batch_size: int = typer.Option(50, help="Samples per generate() batch."),
    clip: Optional[str] = typer.Option(None, help="CLIP for DeSAP (default for the testbed: its own)."),
    out_dir: Path = typer.Option(Path("out/answers"), help="Answers files for real benchmarks (resumable)."),
    dtype: str = typer.Option("fp32", help="fp32 | bf16 | fp16."),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: cpu)."),
    max_new_tokens: int = typer.Option(128, help="Generation length for real benchmarks."),
    option: Optional[list[str]] = typer.Option(None, "--set", help="Method option, e.g. --set desap.task_ratio=0.75 (repeatable)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write results as JSON here."),
) -> None:
    """Accuracy (testbed: per question family, object recall) or the benchmark's official score, % of full, FLOPs."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .evaluation import effective_options, evaluate, load_model, method_kwargs

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    loaded = load_model(model, clip, torch_dtype, device)
    options = effective_options(loaded, _options(option))
    names, keeps = _names(methods), _ints(keep)
    if bench != "testbed":
        from .bench.readers import canonical_bench, read
        from .bench.runner import BenchRunError, run_benchmark

        name, _, data = bench.partition(":")
        n_items = len(list(read(canonical_bench(name), data))) if data else 0
        n_items = min(n_items, limit) if limit else n_items
        with Progress(TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as bar:
            task = bar.add_task("full", total=n_items * (1 + len(names) * len(keeps)))
            try:
                report = run_benchmark(loaded, bench, names, keeps, out_dir, limit, batch_size, max_new_tokens,
                                       lambda label, n: bar.update(task, advance=n, description=label),
                                       lambda m: {**method_kwargs(m, loaded), **options.get(m, {})})
            except BenchRunError as exc:  # a resume that would mix runs, a second writer, nothing scored
                console.print(f"error: {exc}", markup=False, highlight=False)
                raise typer.Exit(code=1) from exc
        print_bench_report(report)
        _write_json(json_path, report)
        return
    from .testbed import load_split

    samples = load_split(split, limit, seed)
    total = len(samples) * (1 + len(names) * len(keeps))
    with Progress(TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("full", total=total)

        def progress(label: str, n: int) -> None:
            bar.update(task, advance=n, description=label)

        report = evaluate(loaded, samples, names, keeps, batch_size, progress, options=options)
    report.update({"bench": bench, "split": split, "seed": seed, "options": options})
    print_report(report)
    _write_json(json_path, report)


def print_report(report: dict) -> None:
    fams = list(report["full"]["per_family"])
    table = Table(title=f"{report['model']} on {report.get('bench', 'testbed')} ({report['n']} questions)")
    for col in ("method", "keep", *fams, "avg", "% of full", "obj. recall", "TFLOPs"):
        table.add_column(col, justify="right")
    full = report["full"]
    table.add_row("full", "all", *(f"{100 * full['per_family'][f]:.1f}" for f in fams),
                  f"{100 * full['accuracy']:.1f}", "100.0", "1.00", f"{full['tflops']:.3g}")
    for r in report["results"]:
        rec = "-" if r["object_recall"] is None else f"{r['object_recall']:.2f}"
        table.add_row(r["method"], str(r["keep"]), *(f"{100 * r['per_family'].get(f, 0):.1f}" for f in fams),
                      f"{100 * r['accuracy']:.1f}", f"{100 * r['relative']:.1f}", rec, f"{r['tflops']:.3g}")
    console.print(table)


def print_bench_report(report: dict) -> None:
    full = report["full"]
    table = Table(title=f"{report['model']} on {report['bench']} ({report['n']} questions; score = {full['headline']})")
    for col in ("method", "keep", "score", "% of full", "missing"):
        table.add_column(col, justify="right")
    table.add_row("full", "all", f"{full['score']:.4g}", "100.0", str(full["n_missing"]))
    for r in report["results"]:
        table.add_row(r["method"], str(r["keep"]), f"{r['score']:.4g}", f"{100 * r['relative']:.1f}", str(r["n_missing"]))
    console.print(table)


@app.command("show")
def show_command(
    model: str = typer.Option("testbed", help="`testbed` (bundled)."),
    method: str = typer.Option("desap", help="One method."),
    methods: Optional[str] = typer.Option(None, help="Several methods side by side (overrides --method)."),
    keep: int = typer.Option(16, help="Visual-token budget."),
    index: int = typer.Option(0, help="Test-split sample index."),
    seed: Optional[int] = typer.Option(None, help="Split seed."),
    output: Path = typer.Option(Path("kept.png"), "-o", "--output", help="PNG to write."),
    clip: Optional[str] = typer.Option(None, help="CLIP for DeSAP (default: the checkpoint's clip/ folder)."),
) -> None:
    """Draw the image with dropped patches greyed out and the question/answer on it."""
    from . import api
    from .evaluation import answer, load_model, method_kwargs
    from .testbed import is_correct, load_split
    from .viz import captioned, kept_overlay, side_by_side

    sample = load_split("test", index + 1, seed)[index]
    loaded = load_model(model, clip)
    vc = loaded.model.config.vision_config
    grid = vc.image_size // vc.patch_size
    panels = []
    api.remove(loaded.model)
    full_answer = answer(loaded, [sample])[0].strip()
    for name in _names(methods) if methods else [method]:
        api.apply(loaded.model, name, keep, **method_kwargs(name, loaded), **loaded.options.get(name, {}))
        pred = answer(loaded, [sample])[0].strip()
        kept = api.last_selection(loaded.model)
        api.remove(loaded.model)
        img = kept_overlay(sample.image, kept.indices[0], kept.grids[0], boxes=sample.boxes)
        mark = "ok" if is_correct(pred, sample.answer) else "wrong"
        panels.append(captioned(img, [f"{name} keep={keep}/{grid * grid}", sample.question,
                                      f"answer: {pred} ({mark}; truth {sample.answer}; full: {full_answer})"]))
    output.parent.mkdir(parents=True, exist_ok=True)
    side_by_side(panels).save(output)
    console.print(f"wrote {output}")


def _mount_optional() -> None:
    try:
        from .testbed.cli import app as testbed_app

        app.add_typer(testbed_app, name="testbed")
    except ImportError:  # pragma: no cover
        pass
    try:
        from .bench.cli import score_command

        app.command("score")(score_command)
    except ImportError:  # pragma: no cover
        pass
    try:
        from .speed import bench_command

        app.command("bench")(bench_command)
    except ImportError:  # pragma: no cover
        pass


_mount_optional()


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
