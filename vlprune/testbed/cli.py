"""``vlprune testbed ...`` commands (mounted by the main CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="The trained tiny testbed (scenes + a small CLIP/LLaVA).", no_args_is_help=True)


@app.command()
def build(
    out: Path = typer.Option(None, "--out", help="Output folder of the new checkpoint (required unless "
                             "--replace-bundled)."),
    replace_bundled: bool = typer.Option(False, "--replace-bundled", help="Overwrite the checkpoint bundled with "
                                         "vlprune (what `--model testbed` loads)."),
    grid: int = typer.Option(12, "--grid", help="Patches per side (12 -> 144 visual tokens, 24 -> 576)."),
    seed: int = typer.Option(0, "--seed", help="Initialisation seed."),
    steps_scale: float = typer.Option(1.0, "--steps-scale", help="Multiply both stages' step counts."),
    val_n: int = typer.Option(None, "--val-n", help="Val samples scored at the end (default 500)."),
    threads: int = typer.Option(2, "--threads", help="torch.set_num_threads (0: leave as is)."),
    log_file: Path = typer.Option(None, "--log-file", help="Append a plain-text training log here."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    llm_layers: int = typer.Option(None, "--llm-layers", help="Decoder layers of the LLM (default 2; the "
                                   "deep recipe in docs/testbed.md: 6)."),
    clip_from: Path = typer.Option(None, "--clip-from", help="Reuse this trained CLIP (a checkpoint's clip/ "
                                   "folder) instead of stage 1; the scenes are the same."),
    llm_init: Path = typer.Option(None, "--llm-init", help="Start stage 2 from this built testbed, its LLM "
                                  "deepened to --llm-layers (a multiple of its depth)."),
    llm_init_mode: str = typer.Option("identity", "--llm-init-mode", help="identity: source layers with "
                                      "pass-through layers between them (exact at step 0); split: every layer a "
                                      "copy doing 1/ratio of its source's update."),
    llava_steps: int = typer.Option(None, "--llava-steps", help="Stage-2 steps (default 6000 x --steps-scale)."),
    llava_lr: float = typer.Option(None, "--llava-lr", help="Stage-2 peak learning rate (default 2e-3)."),
    device: str = typer.Option("cpu", "--device", help="cpu, or cuda on a GPU (the same recipe, faster)."),
) -> None:
    """Train the testbed CLIP + LLaVA from scratch and save them with save_pretrained (about an hour on a CPU)."""
    from dataclasses import replace

    from .train import TestbedSpec, check_out_dir
    from .train import build as _build

    check_out_dir(out, replace_bundled)  # before an hour of training
    if steps_scale <= 0 or grid < 1:
        raise ValueError("--steps-scale must be > 0 and --grid >= 1")
    if llm_layers is not None and llm_layers < 1 or llava_steps is not None and llava_steps < 1:
        raise ValueError("--llm-layers and --llava-steps must be >= 1")
    for flag, path in (("--clip-from", clip_from), ("--llm-init", llm_init)):
        if path is not None and not (path / "config.json").exists():
            raise ValueError(f"{flag} {path}: no config.json there; pass a built checkpoint folder "
                             "(for the bundled one: vlprune/testbed/checkpoint, its CLIP: .../checkpoint/clip)")
    if llm_init_mode not in ("identity", "split"):
        raise ValueError(f"--llm-init-mode must be identity or split, got {llm_init_mode!r}")
    if llm_init is not None:  # before any training: the depths must stack
        src_layers = json.loads((llm_init / "config.json").read_text())["text_config"]["num_hidden_layers"]
        want = llm_layers or TestbedSpec().llm_layers
        if want % src_layers:
            raise ValueError(f"--llm-init {llm_init} has {src_layers} LLM layers; --llm-layers must be a multiple "
                             f"of it, got {want}")
    spec = TestbedSpec()
    spec = replace(spec, llm_layers=llm_layers or spec.llm_layers, llava_lr=llava_lr or spec.llava_lr)
    result = _build(out, grid=grid, seed=seed, clip_steps=max(1, round(spec.clip_steps * steps_scale)),
                    llava_steps=llava_steps or max(1, round(spec.llava_steps * steps_scale)), progress=progress,
                    spec=spec, val_n=val_n, threads=threads or None, log_file=log_file,
                    replace_bundled=replace_bundled, clip_dir=clip_from, llm_init=llm_init,
                    llm_init_mode=llm_init_mode, device=device)
    summary = {k: v for k, v in result.items() if k != "spec"}
    typer.echo(json.dumps(summary, indent=2))


@app.command("build-video")
def build_video(
    out: Path = typer.Option(..., "--out", help="Output folder of the new video testbed checkpoint."),
    source: Path = typer.Option(None, "--from", help="Image testbed to start from (default: the bundled one)."),
    steps: int = typer.Option(None, "--steps", help="Training steps (default: the shipped recipe's)."),
    pool: int = typer.Option(None, "--pool", help="Training clips whose frozen features are cached."),
    background_jitter: float = typer.Option(None, "--background-jitter", help="After the background ramp, show "
                                            "each batch a random share in [1 - J, 1] of the background patches "
                                            "(0: all of them; docs/testbed.md, video testbed)."),
    seed: int = typer.Option(0, "--seed", help="Initialisation seed."),
    threads: int = typer.Option(2, "--threads", help="torch.set_num_threads (0: leave as is)."),
    log_file: Path = typer.Option(None, "--log-file", help="Append a plain-text training log here."),
) -> None:
    """Fine-tune the video testbed (a Video-LLaVA on 4-frame clips) from the image testbed and save it; writes
    testbed_video_build.json (settings, wall-clock and CPU seconds, val accuracy) beside the weights."""
    from dataclasses import replace

    from . import video_checkpoint_dir
    from .video_train import VideoSpec
    from .video_train import build_video as _build

    if out.resolve() == video_checkpoint_dir().resolve():
        raise ValueError(f"--out {out} is the bundled video checkpoint; build elsewhere and copy it over")
    if source is not None and not (source / "config.json").exists():
        raise ValueError(f"--from {source}: no config.json there; pass a built image testbed folder")
    if steps is not None and steps < 1 or pool is not None and pool < 1:
        raise ValueError("--steps and --pool must be >= 1")
    spec = VideoSpec()
    if background_jitter is not None and not 0 <= background_jitter < 1:
        raise ValueError("--background-jitter must be in [0, 1)")
    spec = replace(spec, steps=steps or spec.steps, pool=pool or spec.pool,
                   background_jitter=spec.background_jitter if background_jitter is None else background_jitter)
    result = _build(out, source, spec, seed, threads or None, log_file)
    typer.echo(json.dumps({k: v for k, v in result.items() if k != "spec"}, indent=2))


@app.command()
def signals(
    model: str = typer.Option("testbed", "--model", help="`testbed`, `testbed-deep` or a built checkpoint folder (`vlprune testbed build --out DIR`)."),
    split: str = typer.Option("val", "--split", help="Scenes to measure on (val: where choices are made)."),
    n: int = typer.Option(500, "-n", help="Questions of the split (those with an asked-about object count)."),
    batch_size: int = typer.Option(25, "--batch-size"),
    json_path: Path = typer.Option(None, "--json", help="Write the table as JSON here."),
) -> None:
    """Patch AUC and top-K recall of the asked-about object for every signal the methods read (CLIP [CLS]
    attention per block, DeSAP's task cue per decoupled pair with and without FCMA, each LLM layer's last-token
    attention)."""
    from rich.console import Console
    from rich.table import Table

    from ..evaluation import load_model
    from .scenes import load_split
    from .signals import KS, compute_signals, signal_report

    if split not in ("val", "test", "train"):
        raise ValueError(f"--split must be val, test or train, got {split!r}")
    loaded = load_model(model)
    scores, target = compute_signals(loaded, load_split(split, n), batch_size)
    blocks = loaded.model.config.vision_config.num_hidden_layers
    feature_block = loaded.model.config.vision_feature_layer % (blocks + 1) - 1
    layers = [loaded.options.get("fastv", {}).get("layer", 2)]  # FastV's own default: layer 2
    report = {"model": model, "split": split, **signal_report(scores, target, KS, feature_block, layers)}
    table = Table(title=f"{model}: signals as detectors of the asked-about object ({split}, {report['n']} "
                  f"questions, {report['object_patches_mean']:.1f} of {report['patches']} patches on it)")
    for col in ("signal", "AUC", *(f"R@{k}" for k in KS), "read by"):
        table.add_column(col, justify="left" if col in ("signal", "read by") else "right")
    for r in [*report["rows"], report["chance"]]:
        table.add_row(r["signal"], f"{r['auc']:.3f}", *(f"{r[f'recall@{k}']:.3f}" for k in KS), r["used_by"])
    Console().print(table)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")


@app.command()
def show(
    split: str = typer.Option("test", "--split"),
    n: int = typer.Option(10, "-n"),
    seed: int = typer.Option(None, "--seed"),
) -> None:
    """Print a few samples of a split (question, answer, family, boxes)."""
    from .scenes import load_split

    for s in load_split(split, n, seed):
        typer.echo(f"{s.scene_id}\t{s.family}\t{s.question}\t{s.answer}\t{s.boxes}")


if __name__ == "__main__":  # pragma: no cover
    app()
