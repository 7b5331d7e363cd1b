"""The ``vlprune`` command line: methods, flops, eval, show, bench, score, testbed."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .cli_errors import EXIT_USAGE, FriendlyGroup, fail
from .cli_errors import report as report_error
from .lmms_plugin_args import parse_dtype, parse_options
from .validate import check_runs, parse_keeps, parse_methods, parse_set

app = typer.Typer(help="Training-free visual-token pruning for vision-language models.", no_args_is_help=True,
                  pretty_exceptions_enable=False, cls=FriendlyGroup)
console = Console(width=None if sys.stdout.isatty() else 160)


@app.callback()
def root(debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error.")) -> None:
    """Training-free visual-token pruning for vision-language models."""


def _check_device(device: Optional[str]) -> None:
    import torch

    if device and device.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device {device}: this machine has no CUDA GPU visible to torch", "use --device cpu (the default)")
    if device and not device.startswith(("cpu", "cuda")):
        fail(f"--device {device}: unknown device", "use cpu or cuda (cuda:N for one GPU)")


def _write_json(path: Optional[Path], data: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))
        console.print(f"[dim]wrote {path}[/dim]")


@app.command("methods")
def methods_command() -> None:
    """List the registered methods: paper, stage, default options and what their kept-token indices hold."""
    from .registry import methods

    table = Table(title="vlprune methods", show_lines=True)
    for col in ("method", "stage", "paper", "defaults", "kept tokens (last_selection(model).indices)"):
        table.add_column(col)
    for name, spec in methods().items():
        table.add_row(name, spec.stage, spec.paper, ", ".join(f"{k}={v!r}" for k, v in spec.defaults().items()),
                      spec.kept)
    console.print(table)


@app.command("flops")
def flops_command(
    model: str = typer.Option("llava-1.5-7b", help="Preset: llava-1.5-7b, llava-1.5-13b, llava-next-7b, qwen2.5-vl-7b, "
                              "video-llava-7b, qwen2.5-vl-7b-video."),
    keep: str = typer.Option("64", help="Visual-token budget(s), comma separated."),
    method: str = typer.Option("desap", help="Method (in-LLM methods are counted layer by layer)."),
    tokens: Optional[int] = typer.Option(None, help="Unpruned visual tokens (default: the preset's)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the table as JSON here."),
) -> None:
    """LLM-side visual-token FLOPs, desap.txt appendix B.2 eqs. 6-7."""
    from .flops import method_tflops, tokens_per_layer
    from .presets import get_preset

    method = parse_methods(method, option="--method")[0]
    keeps = parse_keeps(keep)
    shape = get_preset(model)
    full = method_tflops(None, None, shape, tokens)
    rows = []
    for k in keeps:
        counts = tokens_per_layer(method, k, shape, tokens)
        t = method_tflops(method, k, shape, tokens)
        rows.append({"method": method, "keep": k, "tflops": t, "reduction": 1 - t / full, "tokens_per_layer": counts})
    fixed = f" (+ {shape.fixed_tokens} never pruned)" if shape.fixed_tokens else ""
    table = Table(title=f"{shape.name}: {tokens or shape.visual_tokens} visual tokens{fixed} -> {full:.3f} TFLOPs")
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
    model: str = typer.Option("testbed", help="`testbed`, `testbed-deep` (6-layer LLM), `testbed-video` or a LLaVA "
                              "checkpoint (hub id / path)."),
    bench: str = typer.Option("testbed", help="`testbed` (bundled scenes), `testbed-video` (bundled clips; model "
                              "testbed-video) or NAME:DIR, NAME in pope, gqa, mme, textvqa, vqav2, sqa, mmbench (LLaVA layout), msvd-qa, msrvtt-qa, tgif-qa, activitynet-qa (Video-LLaVA layout)."),
    methods: str = typer.Option("desap,vispruner,visionzip,fastv,random",
                                help="Comma-separated methods; `all`: every registered method the model's family runs."),
    keep: str = typer.Option("16,32,48", help="Budgets, comma separated."),
    seed: Optional[int] = typer.Option(None, help="Draw a new test split with this seed (default: the canonical one)."),
    split: str = typer.Option("test", help="test | val (tune on val, never on test)."),
    limit: Optional[int] = typer.Option(None, help="Evaluate the first N samples only."),
    batch_size: int = typer.Option(50, help="Samples per generate() batch."),
    clip: Optional[str] = typer.Option(None, help="CLIP for DeSAP (default for the testbed: its own)."),
    out_dir: Path = typer.Option(Path("out/answers"), help="Answers files for real benchmarks (resumable)."),
    dtype: str = typer.Option("fp32", help="fp32 | bf16 | fp16."),
    fresh: bool = typer.Option(False, "--fresh", help="Overwrite the --json file instead of resuming from it."),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: cpu)."),
    max_new_tokens: int = typer.Option(128, help="Generation length for real benchmarks."),
    option: Optional[list[str]] = typer.Option(None, "--set", help="Method option, e.g. --set desap.task_ratio=0.75 (repeatable)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Results JSON, rewritten after every row; a rerun "
                                             "with the same configuration resumes from it (testbed)."),
    match_flops: bool = typer.Option(False, "--match-flops", help="Testbed: run each in-LLM method (FastV, ASAP, "
                                     "VisionDrop, ...) at the budget whose LLM FLOPs equal an encoder-side "
                                     "method's at --keep (shown as keep->effective)."),
) -> None:
    """Accuracy (testbed: per question family, object recall) or the benchmark's official score, % of full, FLOPs.

    Every method, option and budget is checked before the first answer is generated."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .evaluation import effective_options, evaluate, load_model, method_kwargs, resolve_model
    from .report_file import ReportFile, fingerprint

    names, keeps = parse_methods(methods), parse_keeps(keep)
    user_options = parse_set(option)
    torch_dtype = parse_dtype(dtype)
    _check_device(device)
    if split not in ("test", "val"):
        fail(f"--split {split}: unknown split", "use test or val")
    if batch_size < 1 or max_new_tokens < 1:
        fail(f"--batch-size {batch_size} / --max-new-tokens {max_new_tokens}: both must be >= 1")
    data = ""
    testbeds = ("testbed", "testbed-video")
    if bench == "testbed-video" and model == "testbed":  # the clips need the video testbed
        model = "testbed-video"
    if bench not in testbeds:
        from .bench.readers import canonical_bench

        bench_name, _, data = bench.partition(":")
        canonical_bench(bench_name)
        if not data or not Path(data).is_dir():
            fail(f"--bench {bench}: no data folder {data!r}",
                 "give NAME:DIR with DIR the benchmark in LLaVA's layout (docs/benchmarks.md)")
    elif limit is not None and limit < 1:
        fail(f"--limit {limit}: must be >= 1")
    if clip is not None:
        from .hub import check_source

        check_source(clip, "--clip")
    loaded = load_model(model, clip, torch_dtype, device)
    if bench == "testbed-video" and getattr(loaded.model.config, "video_token_id", None) is None:
        fail(f"--bench testbed-video: --model {model} takes no videos", "use --model testbed-video")
    if "all" in [m.strip().lower() for m in methods.split(",")]:
        names = _all_for_model(names, loaded.model)
    options = effective_options(loaded, user_options)
    for name in names:
        if name in options:
            parse_options(name, options[name])
    check_runs(loaded.model, names, keeps, lambda m: {**method_kwargs(m, loaded), **options.get(m, {})})
    if bench not in testbeds:
        from .bench.readers import read
        from .bench.runner import BenchRunError, run_benchmark

        n_items = len(list(read(canonical_bench(bench_name), data)))
        n_items = min(n_items, limit) if limit else n_items
        with Progress(TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as bar:
            task = bar.add_task("full", total=n_items * (1 + len(names) * len(keeps)))
            try:
                report = run_benchmark(loaded, bench, names, keeps, out_dir, limit, batch_size, max_new_tokens,
                                       lambda label, n: bar.update(task, advance=n, description=label),
                                       lambda m: {**method_kwargs(m, loaded), **options.get(m, {})})
            except BenchRunError as exc:  # a resume that would mix runs, a second writer, nothing scored
                report_error(exc)
                raise typer.Exit(code=EXIT_USAGE) from exc
        print_bench_report(report)
        _write_json(json_path, report)
        return
    from .testbed import load_split, load_video_split

    samples = (load_video_split if bench == "testbed-video" else load_split)(split, limit, seed)
    record = ReportFile(json_path, {"model": model, "weights": fingerprint(resolve_model(model)), "bench": bench,
                                    "split": split, "seed": seed, "n": len(samples), "dtype": str(torch_dtype),
                                    "batch_size": batch_size, "clip": clip,
                                    **({"match_flops": True} if match_flops else {})}, fresh=fresh)
    if record.previous:
        console.print(f"[dim]resuming from {json_path}: finished rows of the same configuration are reused "
                      "(--fresh starts over)[/dim]")
    total = len(samples) * (1 + len(names) * len(keeps))
    with Progress(TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("full", total=total)

        def progress(label: str, n: int) -> None:
            bar.update(task, advance=n, description=label)

        report = evaluate(loaded, samples, names, keeps, batch_size, progress, options=options, record=record,
                          match_flops=match_flops)
    report.update({"bench": bench, "split": split, "seed": seed, "options": options})
    print_report(report)
    record.write(report, complete=True)
    if json_path is not None:
        console.print(f"[dim]wrote {json_path}[/dim]")


def _all_for_model(names: list[str], model) -> list[str]:
    """``--methods all``: drop the methods the model's family cannot run, saying which and why in one line."""
    from .models import get_adapter
    from .validate import for_family

    kept, skipped = for_family(names, get_adapter(model).family)
    if skipped:
        console.print(f"[dim]--methods all: skipped {'; '.join(skipped)}[/dim]")
    if not kept:
        fail("--methods all: no registered method runs on this model")
    return kept


def print_report(report: dict) -> None:
    fams = list(report["full"]["per_family"])
    table = Table(title=f"{report['model']} on {report.get('bench', 'testbed')} ({report['n']} questions)",
                  caption="accuracy % per question family; % of full = avg / the unpruned model's; obj. recall = "
                          "share of the asked-about object's patches kept; TFLOPs = LLM FLOPs of the visual tokens")
    for col in ("method", "keep", *fams, "avg", "% of full", "obj. recall", "TFLOPs"):
        table.add_column(col, justify="right")
    full = report["full"]
    table.add_row("full", "all", *(f"{100 * full['per_family'][f]:.1f}" for f in fams),
                  f"{100 * full['accuracy']:.1f}", "100.0", "1.00", f"{full['tflops']:.3g}")
    for r in report["results"]:
        rec = "-" if r["object_recall"] is None else f"{r['object_recall']:.2f}"
        keep = f"{r['keep']}->{r['effective_keep']}" if "effective_keep" in r else str(r["keep"])
        table.add_row(r["method"], keep, *(f"{100 * r['per_family'].get(f, 0):.1f}" for f in fams),
                      f"{100 * r['accuracy']:.1f}", f"{100 * r['relative']:.1f}", rec, f"{r['tflops']:.3g}")
    console.print(table)
    for u in report.get("unmatched", []):
        console.print(f"{u['method']}@{u['keep']}: not run, no budget matches {u['target_tflops']:.3g} TFLOPs "
                      f"(its floor, the least any keep costs: {u['min_tflops']:.3g})")


def print_bench_report(report: dict) -> None:
    full = report["full"]
    if full["score"] is None:  # video QA: answers only; the GPT judge scores them (vlprune score --judge-url ...)
        table = Table(title=f"{report['model']} on {report['bench']} ({report['n']} questions): answers")
        for col in ("method", "keep", "answers", "answers file"):
            table.add_column(col, justify="right")
        for r in [{"method": "full", "keep": "all", **full}, *report["results"]]:
            table.add_row(r["method"], str(r["keep"]), str(r["n_answers"]), r["answers_file"])
        console.print(table)
        console.print(f"score each file with: vlprune score --bench {report['bench'].replace('_', '-')} --data DIR "
                      "--answers FILE --judge-url URL --judge-model MODEL (docs/benchmarks.md)")
        return
    table = Table(title=f"{report['model']} on {report['bench']} ({report['n']} questions; score = {full['headline']})")
    for col in ("method", "keep", "score", "% of full", "missing"):
        table.add_column(col, justify="right")
    table.add_row("full", "all", f"{full['score']:.4g}", "100.0", str(full["n_missing"]))
    for r in report["results"]:
        table.add_row(r["method"], str(r["keep"]), f"{r['score']:.4g}", f"{100 * r['relative']:.1f}", str(r["n_missing"]))
    console.print(table)


@app.command("show")
def show_command(
    model: str = typer.Option("testbed", help="`testbed`, `testbed-deep` or `testbed-video` (bundled; the video one "
                              "draws every frame of a clip)."),
    method: str = typer.Option("desap", help="One method."),
    methods: Optional[str] = typer.Option(None, help="Several methods side by side (overrides --method)."),
    keep: int = typer.Option(16, help="Visual-token budget."),
    index: int = typer.Option(0, help="Test-split sample index."),
    seed: Optional[int] = typer.Option(None, help="Split seed."),
    output: Path = typer.Option(Path("kept.png"), "-o", "--output", help="PNG to write."),
    clip: Optional[str] = typer.Option(None, help="CLIP for DeSAP (default: the checkpoint's clip/ folder)."),
) -> None:
    """Draw the image with dropped patches greyed out, the asked-about object boxed in red, question and answers
    underneath. The picture is rewritten after every method, so a failure keeps the panels drawn so far."""
    from PIL import Image

    from . import api
    from .evaluation import answer, load_model, method_kwargs
    from .testbed import is_correct, load_split
    from .viz import captioned, kept_overlay, side_by_side, with_legend

    names = parse_methods(methods or method, option="--methods" if methods else "--method")
    keep = parse_keeps(str(keep))[0]
    if index < 0:
        fail(f"--index {index}: must be >= 0")
    if output.suffix.lower() not in Image.registered_extensions():
        fail(f"-o {output}: unknown picture type {output.suffix!r}", "end the name in .png (or .jpg)")
    loaded = load_model(model, clip)
    video = type(loaded.processor).__name__ == "VideoTestbedProcessor"  # the video testbed: a clip per sample
    if video:
        from .testbed import load_video_split

        sample = load_video_split("test", index + 1, seed)[index]
    else:
        sample = load_split("test", index + 1, seed)[index]
    check_runs(loaded.model, names, [keep], lambda m: method_kwargs(m, loaded))
    vc = loaded.model.config.vision_config
    grid = vc.image_size // vc.patch_size
    panels = []
    api.remove(loaded.model)
    full_answer = answer(loaded, [sample])[0].strip()
    output.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        api.apply(loaded.model, name, keep, **method_kwargs(name, loaded))
        pred = answer(loaded, [sample])[0].strip()
        api.remove(loaded.model)
        kept = api.last_selection(loaded.model)
        if video:
            img = _frames_overlay(sample, kept.indices[0], grid)
        else:
            img = kept_overlay(sample.image, kept.indices[0], kept.grids[0], boxes=sample.boxes)
        mark = "ok" if is_correct(pred, sample.answer) else "wrong"
        shown = int((kept.indices[0] >= 0).sum())
        note = "" if shown == keep else f" ({shown} patches: see vlprune methods)"
        total = grid * grid * (len(sample.frames) if video else 1)
        panels.append(captioned(img, [f"{name} keep={keep}/{total}{note}", sample.question,
                                      f"answer: {pred} ({mark}; truth {sample.answer}; full: {full_answer})"]))
        with_legend(side_by_side(panels)).save(output)
    console.print(f"wrote {output}")


def _frames_overlay(sample, indices, grid: int, size: int = 192):
    """A clip's frames side by side, each with its own kept patches (frame-major indices) and object boxes."""
    from PIL import Image

    from .viz import kept_overlay

    n = grid * grid
    tiles = [kept_overlay(frame, indices[(indices >= t * n) & (indices < (t + 1) * n)] - t * n, (grid, grid),
                          size=size, boxes=sample.boxes[t]) for t, frame in enumerate(sample.frames)]
    out = Image.new("RGB", (size * len(tiles) + 4 * (len(tiles) - 1), size), (255, 255, 255))
    for t, tile in enumerate(tiles):
        out.paste(tile, (t * (size + 4), 0))
    return out


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
        from .speed_cli import bench_command

        app.command("bench")(bench_command)
    except ImportError:  # pragma: no cover
        pass


_mount_optional()


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
