"""ScienceQA (test split, IMG subset) accuracy.

Reproduces LLaVA's ``llava/eval/eval_science_qa.py`` (LLaVA-1.5 version, run
by ``scripts/v1_5/eval/sqa.sh`` on answers produced with
``--single-pred-prompt``):

* letter parsing (:func:`parse_sqa_letter`), on the raw text (no strip):

  1. the whole text is one of ``A``..``E`` -> that letter;
  2. the text is at least 3 characters long, starts with ``A``..``E``
     followed by ``". "`` -> that letter (``"B. Paris"``);
  3. the regex ``The answer is ([A-Z]).`` (the ``.`` matches *any*
     character) has exactly one match -> that letter; ``"The answer is B."``
     works, ``"The answer is B"`` at the very end of the text does not, and
     two matches fail;
  4. otherwise ``"FAILED"``;

* the letter counts only if it is among the first ``len(choices)`` options
  (``get_pred_idx`` returns -1 otherwise) and equals ``options[answer]``;
* accuracy over all answered test problems and IMG accuracy over those with
  an image (upstream decides "has an image" from ``'<image>' in prompt``; we
  use ``problems.json``'s ``image`` field, which is the same set for LLaVA's
  question file).  Headline: IMG accuracy in percent.

Upstream scores a test problem without an answer as ``FAILED`` (wrong) in the
overall accuracy and leaves it out of IMG accuracy (its prompt is
``'Unknown'``); the caller here skips unanswered problems and reports them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["OPTIONS", "parse_sqa_letter", "score_sqa", "sqa_correct"]

OPTIONS = ("A", "B", "C", "D", "E")
_THE_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def parse_sqa_letter(text: str) -> str:
    """The option letter parsed from a prediction, or ``"FAILED"``."""
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = _THE_ANSWER_IS.findall(text)
    if len(found) == 1:
        return found[0]
    return "FAILED"


def sqa_correct(prediction: str, n_choices: int, answer_index: int) -> bool:
    """Whether ``prediction`` selects choice ``answer_index`` of ``n_choices``."""
    letter = parse_sqa_letter(prediction)
    valid = OPTIONS[:n_choices]
    pred_index = valid.index(letter) if letter in valid else -1
    return pred_index == answer_index


def score_sqa(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``records``: mappings with ``prediction``, ``n_choices``, ``answer``
    (gold index) and ``has_image``.  Percentages; headline = IMG accuracy."""
    n = n_correct = n_img = n_img_correct = n_failed = 0
    for record in records:
        ok = sqa_correct(record["prediction"], int(record["n_choices"]), int(record["answer"]))
        n_failed += parse_sqa_letter(record["prediction"]) == "FAILED"
        n += 1
        n_correct += ok
        if record.get("has_image", True):
            n_img += 1
            n_img_correct += ok
    img_acc = 100.0 * n_img_correct / n_img if n_img else 0.0
    return {
        "score": img_acc,
        "img_accuracy": img_acc,
        "accuracy": 100.0 * n_correct / n if n else 0.0,
        "n_scored": n,
        "n_img": n_img,
        "n_failed_parse": n_failed,
    }
