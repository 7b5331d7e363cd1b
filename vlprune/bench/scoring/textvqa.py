"""TextVQA (val, v0.5.1) accuracy.

Reproduces LLaVA's ``llava/eval/eval_textvqa.py`` + ``TextVQAAccuracyEvaluator``
(``llava/eval/m4c_evaluator.py``, from MMF/M4C):

* results are matched to annotations by ``(image_id, question.lower())``: the
  LLaVA question file uses the TextVQA *image id* as ``question_id`` and the
  question is recovered from the answer's ``prompt`` by ``prompt_processor``;
* prediction and every human answer go through ``EvalAIAnswerProcessor``
  (:func:`~.vqa_normalize.evalai_normalize`);
* per question, accuracy = mean over the leave-one-out subsets of
  ``min(1, #matches / 3)`` (upstream computes it per unique human answer and
  looks the prediction up, which gives the same number); the headline is the
  mean x 100.

Upstream asserts exactly 10 human answers; we accept any number (the
leave-one-out mean over n annotators).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from .vqa_normalize import evalai_normalize, leave_one_out_accuracy

__all__ = ["prompt_to_question", "textvqa_accuracy", "score_textvqa"]

_OCR_TOKENS_PROMPT = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def prompt_to_question(prompt: str) -> str:
    """``prompt_processor`` of ``eval_textvqa.py``: the lower-cased question.

    * ``"OCR tokens: ... Question: Q Short answer:"`` -> ``Q``
    * three lines with a ``Reference OCR token: ...`` line -> the other
      question line (LLaVA-1.5 format:
      ``"Q\\nReference OCR token: ...\\nAnswer the question using a single word or phrase."``)
    * two lines -> the first line
    * a single line -> the line itself (upstream raises here; extension)
    """
    if prompt.startswith("OCR tokens: "):
        match = _OCR_TOKENS_PROMPT.search(prompt)
        if match is None:
            raise ValueError(f"cannot find the question in TextVQA prompt {prompt!r}")
        question = match.group(1)
    else:
        lines = prompt.split("\n")
        if "Reference OCR token: " in prompt and len(lines) == 3:
            question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
        elif len(lines) == 2:
            question = lines[0]
        elif len(lines) == 1:
            question = lines[0]
        else:
            raise ValueError(f"unrecognised TextVQA prompt layout: {prompt!r}")
    return question.lower()


def textvqa_accuracy(prediction: str, gt_answers: list[str]) -> float:
    """Accuracy in [0, 1] of one raw prediction against the raw human answers."""
    pred = evalai_normalize(prediction)
    gts = [evalai_normalize(answer) for answer in gt_answers]
    return leave_one_out_accuracy(pred, gts)


def score_textvqa(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``records``: mappings with ``prediction`` and ``answers``.  Percentages."""
    accs = [textvqa_accuracy(r["prediction"], list(r["answers"])) for r in records]
    overall = 100.0 * sum(accs) / len(accs) if accs else 0.0
    return {"score": overall, "accuracy": overall, "n_scored": len(accs)}
