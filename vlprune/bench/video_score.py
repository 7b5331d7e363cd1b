"""``score_video(bench, data_dir, answers, judge)``: the GPT-judged accuracy and score of a video QA answers file.

The answers file is vlprune's (``vlprune eval``: LLaVA answer lines with Video-LLaVA's fields) or Video-LLaVA's own
``merge.jsonl`` (``{"id", "question", "answer", "pred"}`` per line).  Answers are joined with the benchmark's
``test_q.json`` / ``test_a.json`` by question id (the last line wins when an id is answered twice); the judge is
asked about the benchmark's question and answer and the line's prediction (:mod:`.judge`).  No video is opened.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .answers import BadLine, load_answers
from .judge import Judge, judgements_path, run_judge
from .readers import canonical_bench, read
from .score import MAX_BAD_LINES_LISTED, NothingScored, _by_question_id
from .video_readers import VIDEO_BENCHMARKS

__all__ = ["from_video_llava", "is_video_bench", "load_video_answers", "score_video"]


def is_video_bench(name: str) -> bool:
    """Whether ``name`` (any alias) is one of the GPT-judged video QA benchmarks."""
    return canonical_bench(name) in VIDEO_BENCHMARKS


def from_video_llava(record: Any) -> Any:
    """A line of Video-LLaVA's ``run_inference_video_qa.py`` (``id``, ``pred``) as an answer line."""
    if isinstance(record, dict) and "question_id" not in record and "text" not in record \
            and "id" in record and "pred" in record:
        return {**record, "question_id": record["id"], "text": record["pred"]}
    return record


def load_video_answers(path: str | Path) -> tuple[list[dict[str, Any]], list[BadLine]]:
    """Answer lines (``question_id`` + ``text``), reading Video-LLaVA's ``id`` / ``pred`` where those are absent;
    unusable lines are returned as :class:`BadLine`\\ s (never scored)."""
    return load_answers(path, adapt=from_video_llava)


def score_video(bench: str, data_dir: str | Path, answers: str | Path, judge: Judge, *,
                judgements: str | Path | None = None, strict: bool = False, **reader_kwargs: Any) -> dict[str, Any]:
    """Judge every answered question (reusing the judgements file) and summarise as Video-LLaVA does.

    ``score`` = accuracy in % (yes / judged), ``avg_score`` = mean of the 0-5 scores; ``n_unjudged`` questions
    (every reply malformed) are in neither.  Raises :class:`NothingScored` when no answer matches a question or
    no reply could be read; ``strict`` refuses unanswered questions before the judge is asked anything."""
    bench = canonical_bench(bench)
    if bench not in VIDEO_BENCHMARKS:
        raise ValueError(f"{bench} is not a video QA benchmark; use vlprune score without a judge")
    items = list(read(bench, data_dir, missing_videos="ignore", **reader_kwargs))
    records, bad = load_video_answers(answers)
    pairs, _, unmatched = _by_question_id(items, records)  # the last line of an id wins
    if not pairs:
        raise NothingScored(
            f"no line of {answers} answers a question of {bench} in {data_dir} ({len(records)} answer lines, "
            f"{unmatched} with unknown ids, {len(bad)} malformed); check --bench, --data and --answers")
    if strict and len(pairs) < len(items):
        raise ValueError(f"{len(items) - len(pairs)} question(s) of {bench} have no answer in {answers} (strict)")
    path = Path(judgements) if judgements is not None else judgements_path(answers, judge.model)
    judged = run_judge([(item.question_id, item.target["question"], item.target["answer"], record["text"])
                        for item, record in pairs], judge, path, recorded=_recorded())
    verdicts = [v for v in judged["verdicts"] if v is not None]
    if not verdicts:
        raise NothingScored(f"no reply of the judge could be read ({judged['n_malformed_replies']} malformed "
                            f"replies, kept in {path}); check --judge-model, or move that file away to ask again")
    yes = sum(1 for pred, _ in verdicts if pred == "yes")
    return {
        "bench": bench,
        "headline": "accuracy",
        "score": 100.0 * yes / len(verdicts),
        "accuracy": 100.0 * yes / len(verdicts),
        "avg_score": sum(score for _, score in verdicts) / len(verdicts),
        "yes": yes,
        "no": len(verdicts) - yes,
        "n_questions": len(items),
        "n_answers": len(records),
        "n_missing": len(items) - len(pairs),
        "n_unmatched": unmatched,
        "n_judged": len(verdicts),
        "n_unjudged": len(judged["unjudged"]),
        "unjudged": [str(q) for q in judged["unjudged"][:MAX_BAD_LINES_LISTED]],
        "n_malformed_replies": judged["n_malformed_replies"],
        "n_judge_calls": judged["asked"],
        "judge_model": judge.model,
        "judgements_file": str(path),
        "n_bad_lines": len(bad),
        "bad_lines": [{"line": b.line, "reason": b.reason} for b in bad[:MAX_BAD_LINES_LISTED]],
    }


def _recorded() -> dict[str, Any]:
    import datetime

    try:
        import openai

        version = openai.__version__
    except ImportError:  # pragma: no cover
        version = None
    return {"openai": version, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
