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
) -> None:
    """Train the testbed CLIP + LLaVA from scratch and save them with save_pretrained (about an hour on a CPU)."""
    from .train import TestbedSpec, check_out_dir
    from .train import build as _build

    check_out_dir(out, replace_bundled)  # before an hour of training
    if steps_scale <= 0 or grid < 1:
        raise ValueError("--steps-scale must be > 0 and --grid >= 1")
    spec = TestbedSpec()
    result = _build(out, grid=grid, seed=seed, clip_steps=max(1, round(spec.clip_steps * steps_scale)),
                    llava_steps=max(1, round(spec.llava_steps * steps_scale)), progress=progress,
                    val_n=val_n, threads=threads or None, log_file=log_file, replace_bundled=replace_bundled)
    summary = {k: v for k, v in result.items() if k != "spec"}
    typer.echo(json.dumps(summary, indent=2))


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
