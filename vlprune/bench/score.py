"""``score(bench, data_dir, answers_file)``: join a LLaVA answers file with the
benchmark's ground truth and run the official-equivalent scorer.

Join rules (the same keys LLaVA's scripts use):

* POPE, GQA, VQAv2, ScienceQA: ``question_id`` (compared as strings);
* TextVQA: ``(question_id, question recovered from prompt)``; every answer
  line is scored (``eval_textvqa.py``), so a question asked twice in the
  question file is answered and scored twice;
* MME: ``(category, image .txt, question recovered from prompt)``;
* MMBench: the TSV ``index`` (= ``question_id``); each answer line is one
  pass (a TSV row, or a ``round_id`` of LLaVA's ``--all-rounds``).

Questions without an answer are skipped and counted in ``n_missing``
(``strict=True`` raises instead), so a subset run scores the answered subset.
Answers that match no question are counted in ``n_unmatched``; when an id is
answered twice the last line wins (TextVQA: every line is scored).  Lines that
cannot be scored (not JSON, ``text`` not a string, ...) are counted in
``n_bad_lines`` and listed in ``bad_lines``; when nothing at all is scored,
:class:`NothingScored` is raised instead of returning a meaningless 0.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .answers import BadLine, check_record, load_answers, normalise_record
from .readers import BenchItem, canonical_bench, read
from .scoring import (
    prompt_to_question,
    score_gqa,
    score_mmbench,
    score_mme,
    score_pope,
    score_sqa,
    score_textvqa,
    score_vqav2,
)
from .scoring.mme import resolve_gt_key

__all__ = ["HEADLINES", "NothingScored", "score", "score_items"]

# how many malformed lines a result lists (all are counted in n_bad_lines)
MAX_BAD_LINES_LISTED = 20


class NothingScored(ValueError):
    """No answer line could be scored against the benchmark's questions."""

# name of the headline metric (what ``score`` holds) per benchmark
HEADLINES: Mapping[str, str] = {
    "pope": "f1_mean",
    "gqa": "accuracy",
    "mme": "perception",
    "textvqa": "accuracy",
    "vqav2": "accuracy",
    "sqa": "img_accuracy",
    "mmbench": "circular_accuracy",
}


def _by_question_id(items: list[BenchItem], answers: list[dict[str, Any]]):
    index = {str(item.question_id): item for item in items}
    latest: dict[str, dict[str, Any]] = {}
    unmatched = 0
    for answer in answers:
        key = str(answer["question_id"])
        if key in index:
            latest[key] = answer
        else:
            unmatched += 1
    pairs = [(item, latest[str(item.question_id)]) for item in items if str(item.question_id) in latest]
    return pairs, len(items) - len(pairs), unmatched


def _score_simple(bench: str, items, answers):
    pairs, missing, unmatched = _by_question_id(items, answers)
    records = [{**item.target, "prediction": answer["text"]} for item, answer in pairs]
    scorer = {"pope": score_pope, "gqa": score_gqa, "vqav2": score_vqav2, "sqa": score_sqa}[bench]
    return scorer(records), missing, unmatched


def _score_textvqa(items, answers):
    """Every answer line is scored, as ``eval_textvqa.py`` does: two lines for
    the same ``(question_id, question)`` (one image asked the same question
    twice) are two scored predictions, never collapsed."""
    index: dict[tuple[str, str], BenchItem] = {}
    expected: dict[tuple[str, str], int] = defaultdict(int)
    for item in items:
        key = (str(item.question_id), item.target["question"])
        index[key] = item  # eval_textvqa.py's annotation dict: the last one wins
        expected[key] += 1
    answered: dict[tuple[str, str], int] = defaultdict(int)
    records = []
    unmatched = 0
    for answer in answers:
        try:
            key = (str(answer["question_id"]), prompt_to_question(answer.get("prompt", "")))
        except ValueError:
            unmatched += 1
            continue
        if key not in index:
            unmatched += 1
            continue
        answered[key] += 1
        records.append({"answers": index[key].target["answers"], "prediction": answer["text"]})
    missing = sum(max(0, n - answered[key]) for key, n in expected.items())
    return score_textvqa(records), missing, unmatched


def _score_mme(items, answers):
    index = {item.target["gt_key"]: item for item in items}
    latest: dict[tuple[str, str, str], dict[str, Any]] = {}
    unmatched = 0
    for answer in answers:
        key = resolve_gt_key(str(answer["question_id"]), answer.get("prompt", ""), index)
        if key is None:
            unmatched += 1
        else:
            latest[key] = answer
    per_image_total: dict[tuple[str, str], int] = defaultdict(int)
    per_image_answered: dict[tuple[str, str], int] = defaultdict(int)
    records = []
    for key, item in index.items():
        image = (item.target["category"], str(item.question_id))
        per_image_total[image] += 1
        if key in latest:
            per_image_answered[image] += 1
            records.append(
                {
                    "category": item.target["category"],
                    "image": str(item.question_id),
                    "answer": item.target["answer"],
                    "prediction": latest[key]["text"],
                }
            )
    complete = {image for image, n in per_image_total.items() if per_image_answered[image] == n}
    return score_mme(records, complete_images=complete), len(index) - len(records), unmatched


def _score_mmbench(items, answers):
    rows = {int(item.target["index"]): item for item in items}
    latest: dict[tuple[int, int], dict[str, Any]] = {}
    unmatched = 0
    for answer in answers:
        try:
            idx = int(float(answer["question_id"]))
        except (TypeError, ValueError, OverflowError):  # "abc", Infinity
            unmatched += 1
            continue
        if idx not in rows:
            unmatched += 1
            continue
        latest[(idx, int(answer.get("round_id", 0) or 0))] = answer
    records = []
    answered_rows = set()
    for (idx, round_id), answer in latest.items():
        row = rows[idx].target
        answered_rows.add(idx)
        if answer.get("options") is not None:
            options = list(answer["options"])
            option_char = list(answer.get("option_char") or "ABCD"[: len(options)])
        else:
            options, option_char = list(row["options"]), None
        records.append(
            {
                "index": idx,
                "round_id": round_id,
                "prediction": answer["text"],
                "options": options,
                "option_char": option_char,
                "answer": row["answer"],
                "category": row["category"],
            }
        )
    return score_mmbench(records), len(rows) - len(answered_rows), unmatched


def score_items(
    bench: str, items: list[BenchItem], answers: list[dict[str, Any]], *, bad_lines: list[BadLine] | None = None
) -> dict[str, Any]:
    """Score already loaded items and answer records (see :func:`score`).

    Records failing :func:`~.answers.check_record` are not scored and are
    counted in ``n_bad_lines`` with the ``bad_lines`` given (those of the
    file); raises :class:`NothingScored` when no record is scored."""
    bench = canonical_bench(bench)
    bad = list(bad_lines or [])
    valid = []
    for number, answer in enumerate(answers, start=1):
        reason = check_record(answer)
        if reason is None:
            valid.append(normalise_record(dict(answer)))
        else:
            bad.append(BadLine(number, reason))
    if bench == "textvqa":
        result, missing, unmatched = _score_textvqa(items, valid)
    elif bench == "mme":
        result, missing, unmatched = _score_mme(items, valid)
    elif bench == "mmbench":
        result, missing, unmatched = _score_mmbench(items, valid)
    else:
        result, missing, unmatched = _score_simple(bench, items, valid)
    if not result.get("n_scored"):
        raise NothingScored(
            f"nothing scored: none of the {len(valid) + len(bad)} answer lines scores against the {len(items)} "
            f"{bench} questions read ({unmatched} match no question, {len(bad)} malformed"
            + (f", e.g. line {bad[0].line}: {bad[0].reason}" if bad else "")
            + "); check that --bench, --data and --answers belong together"
        )
    out: dict[str, Any] = {
        "bench": bench,
        "score": result.pop("score"),
        "headline": HEADLINES[bench],
        "n_questions": len(items),
        "n_answers": len(valid),
        "n_missing": missing,
        "n_unmatched": unmatched,
        "n_bad_lines": len(bad),
        "bad_lines": [{"line": b.line, "reason": b.reason} for b in bad[:MAX_BAD_LINES_LISTED]],
    }
    out.update(result)
    return out


def score(
    bench: str,
    data_dir: str | Path,
    answers_file: str | Path,
    *,
    strict: bool = False,
    **reader_kwargs: Any,
) -> dict[str, Any]:
    """Score a LLaVA-format answers file on ``bench`` (pope, gqa, mme,
    textvqa, vqav2, sqa, mmbench) whose data lives in ``data_dir``.

    Returns ``{"score": <headline metric>, "headline": <its name>, counts...,
    benchmark metrics...}``.  ``strict=True`` raises ``ValueError`` when some
    question has no answer.  Extra keyword arguments go to the reader (e.g.
    ``tsv=`` for MMBench, ``question_file=``).  Raises
    :class:`NothingScored` when no line of the file scores.
    """
    bench = canonical_bench(bench)
    if bench == "mmbench":
        reader_kwargs.setdefault("all_rounds", False)
    items = list(read(bench, data_dir, **reader_kwargs))
    answers, bad_lines = load_answers(answers_file)
    runs = sorted({str(a["_run"]) for a in answers if "_run" in a})
    if len(runs) > 1:
        raise ValueError(
            f"{answers_file} mixes the answers of {len(runs)} run configurations (_run = {', '.join(runs)}); "
            "its score would belong to no run: score each run's own answers file"
        )
    result = score_items(bench, items, answers, bad_lines=bad_lines)
    result["answers_file"] = str(answers_file)
    result["data_dir"] = str(data_dir)
    if strict and result["n_missing"]:
        raise ValueError(f"{result['n_missing']} of {result['n_questions']} {bench} questions have no answer")
    return result
