"""LLaVA answers files: one JSON object per line, at least
``{"question_id", "prompt", "text"}`` (``model_vqa_loader.py`` also writes
``answer_id``, ``model_id``, ``metadata``; ``model_vqa_mmbench.py --all-rounds``
adds ``round_id``, ``options``, ``option_char``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["load_answers", "write_answers"]


def load_answers(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """``(records, n_bad_lines)``; blank lines are ignored and lines that are
    not a JSON object with ``question_id`` and ``text`` are counted as bad
    (like ``convert_vqav2_for_submission.py``'s ``error_line``)."""
    records: list[dict[str, Any]] = []
    bad = 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if not isinstance(record, dict) or "question_id" not in record or "text" not in record:
                bad += 1
                continue
            if record["text"] is None:
                record["text"] = ""
            record.setdefault("prompt", "")
            records.append(record)
    return records, bad


def write_answers(path: str | Path, records: Iterable[Mapping[str, Any]]) -> int:
    """Write answer records as JSON lines; returns the number written."""
    n = 0
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(dict(record), ensure_ascii=False) + "\n")
            n += 1
    return n
