"""GQA (testdev-balanced) accuracy.

Reproduces LLaVA's ``scripts/convert_gqa_for_eval.py`` followed by the
official GQA ``eval.py --tier testdev_balanced``:

* prediction normalisation (:func:`normalize_gqa_answer`):
  ``text.rstrip('.').lower()`` -- trailing periods only, no whitespace strip,
  no other punctuation handling;
* correct iff the normalised prediction equals the gold ``answer`` string
  exactly;
* accuracy over the balanced questions (``isBalanced``; every testdev-balanced
  question is), plus the ``binary`` / ``open`` split (open = structural type
  ``query``) and accuracy per structural / semantic type, all x 100.

Not reproduced: validity / plausibility / consistency / grounding /
distribution, which need GQA's choices and scene-graph files (LLaVA's
modified ``eval.py`` does not report them either).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["normalize_gqa_answer", "score_gqa"]


def normalize_gqa_answer(text: str) -> str:
    """``convert_gqa_for_eval.py``: strip trailing ``.`` then lower-case."""
    return text.rstrip(".").lower()


def _pct(values: list[int]) -> float:
    return 100.0 * sum(values) / len(values) if values else 0.0


def score_gqa(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``records``: mappings with ``prediction``, ``answer`` and optionally
    ``is_balanced`` (default True), ``structural`` and ``semantic`` types."""
    accuracy: list[int] = []
    by_answer_type: dict[str, list[int]] = defaultdict(list)
    by_structural: dict[str, list[int]] = defaultdict(list)
    by_semantic: dict[str, list[int]] = defaultdict(list)
    for record in records:
        if not record.get("is_balanced", True):
            continue
        hit = int(normalize_gqa_answer(record["prediction"]) == record["answer"])
        accuracy.append(hit)
        structural = record.get("structural")
        if structural is not None:
            by_structural[structural].append(hit)
            by_answer_type["open" if structural == "query" else "binary"].append(hit)
        if record.get("semantic") is not None:
            by_semantic[record["semantic"]].append(hit)
    acc = _pct(accuracy)
    result: dict[str, Any] = {"score": acc, "accuracy": acc, "n_scored": len(accuracy)}
    for answer_type in ("binary", "open"):
        if by_answer_type.get(answer_type):
            result[answer_type] = _pct(by_answer_type[answer_type])
    result["per_structural_type"] = {k: _pct(v) for k, v in sorted(by_structural.items())}
    result["per_semantic_type"] = {k: _pct(v) for k, v in sorted(by_semantic.items())}
    return result
