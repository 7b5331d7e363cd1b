"""VQAv2 (val) accuracy.

Reproduces the pipeline behind LLaVA's VQAv2 numbers, applied to the val split
(LLaVA itself only submits test-dev to the EvalAI server):

1. ``scripts/convert_vqav2_for_submission.py`` (LLaVA): every prediction goes
   through ``EvalAIAnswerProcessor`` (:func:`evalai_normalize`).
2. ``VQAEval.evaluate`` as it stands on ``GT-Vision-Lab/VQA`` master (commit
   a013f00, 2021 "Fixed processing answers bug"):

   * the ten human answers and the result answer: ``\\n``/``\\t`` -> space,
     strip;
   * only when the (stripped) human answers are not all identical
     (``len(set(gtAnswers)) > 1``): ``processPunctuation`` then
     ``processDigitArticle`` on every human answer **and** on the result;
     otherwise both are compared as they are;
   * accuracy = mean over the 10 leave-one-out subsets of
     ``min(1, #matches / 3)``;
   * overall / per answer type / per question type = mean x 100 (upstream
     rounds to 2 decimals; we keep full precision).

The remaining differences from the official code are listed in
``docs/benchmarks.md``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from .vqa_normalize import (
    evalai_normalize,
    leave_one_out_accuracy,
    process_digit_article,
    process_punctuation,
    strip_vqa_whitespace,
)

__all__ = ["vqav2_accuracy", "score_vqav2"]


def vqav2_accuracy(prediction: str, gt_answers: list[str], *, llava_submission_step: bool = True) -> float:
    """Accuracy in [0, 1] of one raw model prediction against the raw human answers."""
    res = strip_vqa_whitespace(evalai_normalize(prediction) if llava_submission_step else prediction)
    gts = [strip_vqa_whitespace(answer) for answer in gt_answers]
    if len(set(gts)) > 1:
        gts = [process_digit_article(process_punctuation(answer)) for answer in gts]
        res = process_digit_article(process_punctuation(res))
    return leave_one_out_accuracy(res, gts)


def score_vqav2(records: Iterable[Mapping[str, Any]], *, llava_submission_step: bool = True) -> dict[str, Any]:
    """Score VQAv2 predictions.

    ``records``: mappings with ``prediction`` (raw model text), ``answers``
    (the 10 raw human answers) and optionally ``answer_type`` /
    ``question_type``.  Returns percentages.
    """
    accs: list[float] = []
    by_answer_type: dict[str, list[float]] = defaultdict(list)
    by_question_type: dict[str, list[float]] = defaultdict(list)
    for record in records:
        acc = vqav2_accuracy(record["prediction"], list(record["answers"]), llava_submission_step=llava_submission_step)
        accs.append(acc)
        if record.get("answer_type") is not None:
            by_answer_type[record["answer_type"]].append(acc)
        if record.get("question_type") is not None:
            by_question_type[record["question_type"]].append(acc)
    overall = 100.0 * sum(accs) / len(accs) if accs else 0.0
    return {
        "score": overall,
        "accuracy": overall,
        "n_scored": len(accs),
        "per_answer_type": {k: 100.0 * sum(v) / len(v) for k, v in sorted(by_answer_type.items())},
        "per_question_type": {k: 100.0 * sum(v) / len(v) for k, v in sorted(by_question_type.items())},
    }
