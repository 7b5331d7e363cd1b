"""POPE (COCO, adversarial / popular / random) metrics.

Reproduces LLaVA's ``llava/eval/eval_pope.py``:

* answer parsing (:func:`parse_yes_no`): keep the text before the first ``.``,
  delete commas, split on single spaces; if one of the words is exactly
  ``"No"``, ``"not"`` or ``"no"`` the answer is *no*, otherwise *yes*.  Note
  that ``"Not"``, ``"NO"``, ``"Nope"`` and ``"no."`` inside a later sentence
  do **not** count as no (``"Not at all."`` is parsed as *yes*);
* labels: ``"no"`` is negative, anything else positive;
* per split: TP/FP/TN/FN, accuracy, precision, recall, F1, yes-ratio (share of
  *predicted* yes).

Headline: the mean F1 over the splits, in percent.  This is what the LLaVA-1.5
paper's POPE column reports (F1 averaged over the three COCO splits, e.g. 85.9
for LLaVA-1.5-7B) and what the token-pruning papers that reuse LLaVA's table
(FastV, SparseVLM, VisionZip, ...) compare against.  Mean accuracy is
returned as well.

Differences from upstream: upstream divides by zero (crashes) when a split
has no predicted yes or no positive label; we return 0.0 for such ratios.
Upstream pairs the i-th answer of a split with the i-th annotation line; the
caller here pairs them by ``question_id`` (identical when the answers file is
in question-file order, which upstream requires).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["SPLITS", "parse_yes_no", "pope_metrics", "score_pope"]

SPLITS = ("adversarial", "popular", "random")


def parse_yes_no(text: str) -> str:
    """``"yes"`` or ``"no"``, exactly as ``eval_pope.py`` parses an answer."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    if "No" in words or "not" in words or "no" in words:
        return "no"
    return "yes"


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def pope_metrics(predictions: Iterable[str], labels: Iterable[str]) -> dict[str, float]:
    """Binary metrics of parsed predictions (``yes``/``no``) against labels.

    Ratios are fractions in [0, 1]; counts are ints.
    """
    tp = fp = tn = fn = 0
    n = n_yes = 0
    for pred, label in zip(predictions, labels, strict=True):
        pred_pos = pred != "no"
        label_pos = label != "no"
        n += 1
        n_yes += pred_pos
        if pred_pos and label_pos:
            tp += 1
        elif pred_pos:
            fp += 1
        elif not label_pos:
            tn += 1
        else:
            fn += 1
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    return {
        "TP": tp,
        "FP": fp,
        "TN": tn,
        "FN": fn,
        "n": n,
        "accuracy": _ratio(tp + tn, n),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "yes_ratio": _ratio(n_yes, n),
    }


def score_pope(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Score POPE.

    ``records``: mappings with ``prediction`` (raw model text), ``label``
    (``"yes"``/``"no"``) and ``category`` (the split).  Returns per-split
    metrics (ratios in percent) and the headline mean F1 (percent).
    """
    preds: dict[str, list[str]] = defaultdict(list)
    labels: dict[str, list[str]] = defaultdict(list)
    for record in records:
        preds[record["category"]].append(parse_yes_no(record["prediction"]))
        labels[record["category"]].append(record["label"])

    per_split: dict[str, dict[str, float]] = {}
    for split in sorted(preds, key=lambda s: (SPLITS.index(s) if s in SPLITS else len(SPLITS), s)):
        metrics = pope_metrics(preds[split], labels[split])
        for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
            metrics[key] *= 100.0
        per_split[split] = metrics

    def mean_of(key: str) -> float:
        values = [m[key] for m in per_split.values()]
        return sum(values) / len(values) if values else 0.0

    f1_mean = mean_of("f1")
    return {
        "score": f1_mean,
        "f1_mean": f1_mean,
        "accuracy_mean": mean_of("accuracy"),
        "precision_mean": mean_of("precision"),
        "recall_mean": mean_of("recall"),
        "yes_ratio_mean": mean_of("yes_ratio"),
        "n_scored": sum(m["n"] for m in per_split.values()),
        "per_split": per_split,
    }
