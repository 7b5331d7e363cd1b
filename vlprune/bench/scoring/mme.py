"""MME (perception + cognition) scores.

Reproduces the MME evaluation tool ``eval_tool/calculation.py`` (MME
authors, distributed with the benchmark) fed by LLaVA's
``convert_answer_to_mme.py`` (from LLaVA's ``eval.zip``):

* answer parsing (:func:`parse_mme_answer`): lower-case; exactly ``yes`` /
  ``no`` -> that; else look at the first 4 characters: contains ``yes`` ->
  yes, else contains ``no`` -> no, else **other**.  ``other`` is always wrong
  (``"There is no dog"`` -> other; ``"Not really"`` -> no; ``"None"`` -> no);
* per subtask: ``acc`` = correct / questions, ``acc+`` = images whose two
  questions are both correct / images; subtask score = 100 * acc + 100 * acc+;
* perception = sum of the 10 perception subtask scores (max 2000),
  cognition = sum of the 4 cognition subtask scores (max 800).

Headline: the perception sum (what the LLaVA-1.5 paper reports as "MME",
1510.7 for LLaVA-1.5-7B).  Several token-pruning papers (e.g. VisionZip's
"1862") report perception + cognition instead; ``total`` is returned too.

Matching answers to ground truth (:func:`resolve_gt_key`) follows
``convert_answer_to_mme.py``: category = first path part of ``question_id``,
ground-truth file = image stem + ``.txt``, and the question is the answer's
``prompt`` with ``"Answer the question using a single word or phrase."``
removed and ``" Please answer yes or no."`` appended when missing (with the
double-space variant some MME files use).

Differences from upstream: ``calculation.py`` pairs *consecutive* lines of a
subtask for acc+; we pair the questions of the same image (same
``question_id``), which is identical for LLaVA's question order and does not
depend on the answers-file order.  Images with some questions unanswered are
left out of acc+ (upstream asserts two answers per image).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "COGNITION",
    "PERCEPTION",
    "gt_file_for",
    "parse_mme_answer",
    "resolve_gt_key",
    "score_mme",
]

PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")

_SHORT_ANSWER = "Answer the question using a single word or phrase."
_YES_NO = "Please answer yes or no."


def parse_mme_answer(text: str) -> str:
    """``"yes"``, ``"no"`` or ``"other"`` as ``calculation.py`` parses an answer."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def gt_file_for(question_id: str) -> tuple[str, str]:
    """``(category, ground-truth .txt name)`` of an MME ``question_id``
    (``"artwork/10002.jpg"`` -> ``("artwork", "10002.txt")``)."""
    parts = str(question_id).split("/")
    return parts[0], parts[-1].split(".")[0] + ".txt"


def resolve_gt_key(question_id: str, prompt: str, gt_keys: Any) -> tuple[str, str, str] | None:
    """The ``(category, txt_file, question)`` ground-truth key of an answer, or
    ``None`` when no variant of the prompt is in ``gt_keys``."""
    category, txt_file = gt_file_for(question_id)
    question = prompt
    if _SHORT_ANSWER in question:
        question = question.replace(_SHORT_ANSWER, "").strip()
    candidates = []
    if _YES_NO not in question:
        candidates.append(question + " " + _YES_NO)
        candidates.append(question + "  " + _YES_NO)
    else:
        candidates.append(question)
        candidates.append(question.replace(" " + _YES_NO, "  " + _YES_NO))
    # extension: questions stored without the yes/no suffix
    candidates.append(question.strip())
    for candidate in candidates:
        key = (category, txt_file, candidate)
        if key in gt_keys:
            return key
    return None


def score_mme(records: Iterable[Mapping[str, Any]], *, complete_images: set[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Score MME.

    ``records``: mappings with ``category``, ``image`` (an image key, e.g. the
    ``question_id``), ``answer`` (``"Yes"``/``"No"``) and ``prediction``.
    ``complete_images``: the ``(category, image)`` pairs whose questions were
    all answered; when given, only those count for acc+.
    """
    per_cat: dict[str, dict[str, list]] = defaultdict(lambda: {"correct": [], "images": defaultdict(list)})
    n_other = 0
    for record in records:
        gt = str(record["answer"]).lower()
        if gt not in ("yes", "no"):
            raise ValueError(f"MME ground truth must be yes/no, got {record['answer']!r}")
        pred = parse_mme_answer(record["prediction"])
        n_other += pred == "other"
        correct = pred == gt
        cat = per_cat[record["category"]]
        cat["correct"].append(correct)
        cat["images"][record["image"]].append(correct)

    subtasks: dict[str, dict[str, float]] = {}
    for category, data in per_cat.items():
        acc = sum(data["correct"]) / len(data["correct"])
        images = {
            image: results
            for image, results in data["images"].items()
            if complete_images is None or (category, image) in complete_images
        }
        acc_plus = sum(all(r) for r in images.values()) / len(images) if images else 0.0
        subtasks[category] = {
            "acc": 100.0 * acc,
            "acc_plus": 100.0 * acc_plus,
            "score": 100.0 * acc + 100.0 * acc_plus,
            "n_questions": len(data["correct"]),
            "n_images": len(images),
        }

    perception = sum(subtasks[c]["score"] for c in PERCEPTION if c in subtasks)
    cognition = sum(subtasks[c]["score"] for c in COGNITION if c in subtasks)
    ordered = {c: subtasks[c] for c in (*PERCEPTION, *COGNITION) if c in subtasks}
    ordered.update({c: v for c, v in sorted(subtasks.items()) if c not in ordered})
    return {
        "score": perception,
        "perception": perception,
        "cognition": cognition,
        "total": perception + cognition,
        "n_scored": sum(v["n_questions"] for v in subtasks.values()),
        "n_other": n_other,
        "subtasks": ordered,
    }
