"""``vlprune score``: score a LLaVA answers file (registered by the main app as
``app.command("score")(score_command)``)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from .score import score

__all__ = ["BenchChoice", "render_table", "score_command", "warn_bad_lines"]


class BenchChoice(str, Enum):
    pope = "pope"
    gqa = "gqa"
    mme = "mme"
    textvqa = "textvqa"
    vqav2 = "vqav2"
    sqa = "sqa"
    mmbench = "mmbench"
    msvd_qa = "msvd-qa"
    msrvtt_qa = "msrvtt-qa"
    tgif_qa = "tgif-qa"
    activitynet_qa = "activitynet-qa"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def render_table(result: dict[str, Any]) -> Table:
    """A rich table: headline first, then scalar metrics, then one row per
    entry of the nested breakdowns (splits, subtasks, types, categories)."""
    table = Table(title=f"{result['bench']} — {result['headline']} = {result['score']:.2f}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row(f"[bold]score ({result['headline']})[/bold]", f"[bold]{result['score']:.2f}[/bold]")
    skip = {"bench", "score", "headline", "answers_file", "data_dir", "bad_lines", "unjudged"}
    nested = []
    for key, value in result.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            nested.append((key, value))
        else:
            table.add_row(key, _fmt(value))
    for key, value in nested:
        for sub, sub_value in value.items():
            if isinstance(sub_value, dict):
                shown = ", ".join(f"{k}={_fmt(v)}" for k, v in sub_value.items())
                table.add_row(f"{key}/{sub}", shown)
            else:
                table.add_row(f"{key}/{sub}", _fmt(sub_value))
    return table


def warn_bad_lines(result: dict[str, Any], console: Console | None = None) -> None:
    """Tell on stderr how many lines of the answers file were not scored, and why."""
    n = result.get("n_bad_lines", 0)
    if not n:
        return
    console = console or Console(stderr=True)
    console.print(f"[yellow]warning:[/yellow] {n} malformed answer line(s) were not scored:", highlight=False)
    for bad in result.get("bad_lines", []):
        console.print(f"  line {bad['line']}: {bad['reason']}", markup=False, highlight=False)
    if n > len(result.get("bad_lines", [])):
        console.print(f"  ... and {n - len(result['bad_lines'])} more", highlight=False)


VIDEO_CHOICES = ("msvd-qa", "msrvtt-qa", "tgif-qa", "activitynet-qa")


def _score_video(bench: str, data: Path, answers: Path, strict: bool, url: str | None, model: str | None,
                 key_env: str, attempts: int, workers: int, temperature: float | None,
                 judgements: Path | None) -> dict[str, Any]:
    import os

    from .judge import Judge
    from .video_score import score_video

    if not url or not model:
        raise ValueError(f"--bench {bench} is scored by a GPT judge: give --judge-url URL and --judge-model NAME "
                         f"(and the API key in ${key_env})")
    judge = Judge(url=url, model=model, api_key=os.environ.get(key_env, ""), temperature=temperature,
                  max_attempts=attempts, workers=workers)
    return score_video(bench, data, answers, judge, judgements=judgements, strict=strict)


def score_command(
    bench: Annotated[BenchChoice, typer.Option("--bench", help="Benchmark to score.", case_sensitive=False)],
    data: Annotated[
        Path,
        typer.Option("--data", help="Benchmark folder in LLaVA's layout (see docs/benchmarks.md).", exists=True),
    ],
    answers: Annotated[
        Path,
        typer.Option("--answers", help="Answers file: JSON lines with question_id, prompt, text.", exists=True, dir_okay=False),
    ],
    json_path: Annotated[
        Optional[Path],  # noqa: UP045 - typer needs Optional here
        typer.Option("--json", help="Also write the full result as JSON to this path."),
    ] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail if some question has no answer.")] = False,
    judge_url: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--judge-url", help="Video QA: OpenAI-compatible endpoint of the GPT judge, e.g. https://api.openai.com/v1.")] = None,
    judge_model: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--judge-model", help="Video QA: the judge model (Video-LLaVA used gpt-3.5-turbo).")] = None,
    judge_key_env: Annotated[str, typer.Option(
        "--judge-key-env", help="Video QA: environment variable holding the judge's API key.")] = "OPENAI_API_KEY",
    judge_attempts: Annotated[int, typer.Option(
        "--judge-attempts", help="Video QA: replies (and endpoint errors) allowed per question.")] = 3,
    judge_workers: Annotated[int, typer.Option("--judge-workers", help="Video QA: requests in flight.")] = 8,
    judge_temperature: Annotated[Optional[float], typer.Option(  # noqa: UP045
        "--judge-temperature", help="Video QA: sampling temperature sent to the judge (default: none sent, as "
        "Video-LLaVA).")] = None,
    judgements: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--judgements", help="Video QA: the judgements file (default <answers>.judge-<model>.jsonl).")] = None,
) -> None:
    """Score a LLaVA-format answers file with the official benchmark rules (video QA: the GPT judge)."""
    try:
        if bench.value in VIDEO_CHOICES:
            result = _score_video(bench.value, data, answers, strict, judge_url, judge_model, judge_key_env,
                                  judge_attempts, judge_workers, judge_temperature, judgements)
        else:
            if judge_url or judge_model:
                raise ValueError(f"--bench {bench.value} is scored by its official rules, without a judge: drop "
                                 "--judge-url / --judge-model")
            result = score(bench.value, data, answers, strict=strict)
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        err = Console(stderr=True)
        err.print("[red]error:[/red] ", end="")
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(code=2) from exc  # vlprune's exit code for every CLI error
    Console().print(render_table(result))
    warn_bad_lines(result)
    if result.get("n_unjudged"):
        Console(stderr=True).print(
            f"[yellow]warning:[/yellow] {result['n_unjudged']} question(s) got only malformed judge replies and are "
            f"not scored (replies in {result['judgements_file']}): {', '.join(result['unjudged'])}", highlight=False)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n", encoding="utf-8")
