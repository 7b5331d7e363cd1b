"""LLaVA answers files: one JSON object per line, at least
``{"question_id", "prompt", "text"}`` (``model_vqa_loader.py`` also writes
``answer_id``, ``model_id``, ``metadata``; ``model_vqa_mmbench.py --all-rounds``
adds ``round_id``, ``options``, ``option_char``).

A line that cannot be scored is never scored and never crashes anything: it is
returned as a :class:`BadLine` (line number + reason) and counted."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["BadLine", "check_record", "load_answers", "normalise_record", "write_answers"]


class BadLine(NamedTuple):
    """A line of an answers file that was not scored, and why."""

    line: int
    reason: str


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def check_record(record: Any) -> str | None:
    """Why ``record`` cannot be scored as an answer line, or ``None`` if it can.

    ``question_id`` must be a string or a number, ``text`` a string (``null``
    is read as ``""``), ``prompt`` a string if present, ``round_id`` a whole
    number if present, ``options`` a list and ``option_char`` a list or a
    string if present."""
    if not isinstance(record, dict):
        return f"not a JSON object but {_kind(record)}"
    if "question_id" not in record:
        return "no question_id"
    qid = record["question_id"]
    if isinstance(qid, bool) or not isinstance(qid, (str, int, float)):
        return f"question_id is {_kind(qid)}, not a string or a number"
    if "text" not in record:
        return "no text"
    if record["text"] is not None and not isinstance(record["text"], str):
        return f"text is {_kind(record['text'])} ({json.dumps(record['text'])[:40]}), not a string"
    if record.get("prompt") is not None and not isinstance(record["prompt"], str):
        return f"prompt is {_kind(record['prompt'])}, not a string"
    round_id = record.get("round_id")
    if round_id is not None and (isinstance(round_id, bool) or not isinstance(round_id, int)):
        return f"round_id is {_kind(round_id)}, not a whole number"
    if record.get("options") is not None and not isinstance(record["options"], list):
        return f"options is {_kind(record['options'])}, not a list"
    option_char = record.get("option_char")
    if option_char is not None and not isinstance(option_char, (list, str)):
        return f"option_char is {_kind(option_char)}, not a list or a string"
    return None


def normalise_record(record: dict[str, Any]) -> dict[str, Any]:
    """``text: null`` -> ``""``, missing ``prompt`` -> ``""`` (in place)."""
    if record["text"] is None:
        record["text"] = ""
    if record.get("prompt") is None:
        record["prompt"] = ""
    return record


def load_answers(
    path: str | Path, adapt: Callable[[Any], Any] | None = None
) -> tuple[list[dict[str, Any]], list[BadLine]]:
    """``(records, bad_lines)``.  Blank lines are ignored; a line that is not
    JSON, or fails :func:`check_record`, is a :class:`BadLine` (like
    ``convert_vqav2_for_submission.py``'s ``error_line``, but with its reason).
    ``adapt`` maps each parsed line before the check (another tool's field names)."""
    records: list[dict[str, Any]] = []
    bad: list[BadLine] = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                bad.append(BadLine(number, "not UTF-8 text"))
                continue
            except json.JSONDecodeError as exc:
                bad.append(BadLine(number, f"not JSON ({exc.msg} at column {exc.colno})"))
                continue
            if adapt is not None:
                record = adapt(record)
            reason = check_record(record)
            if reason is not None:
                bad.append(BadLine(number, reason))
                continue
            records.append(normalise_record(record))
    return records, bad


def write_answers(path: str | Path, records: Iterable[Mapping[str, Any]]) -> int:
    """Write answer records as JSON lines; returns the number written."""
    n = 0
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(dict(record), ensure_ascii=False) + "\n")
            n += 1
    return n
