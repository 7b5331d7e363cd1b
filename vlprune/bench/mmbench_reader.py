"""MMBench's reader: one TSV with base64 images, LLaVA's ``model_vqa_mmbench.py`` prompt and rotations."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .readers import LETTER_PROMPT, LETTER_PROMPT_CN, BenchItem, ImageRef, _require, _resolve

# Cells pandas.read_table reads as NaN by default; LLaVA's is_none() then
# treats them as "no option / no hint".
_NA_STRINGS = frozenset(
    "-1.#IND 1.#QNAN 1.#IND -1.#QNAN #N/A N/A n/a NA <NA> #NA NULL null NaN -NaN nan -nan None none".split()
) | {"", "#N/A N/A"}


def _is_none(value: Any) -> bool:
    return value is None or str(value) in _NA_STRINGS or str(value).strip().lower() in ("nan", "none")


def _find_tsv(data_dir: Path, tsv: str | Path | None) -> Path:
    if tsv is not None:
        return _require(_resolve(data_dir, tsv), "MMBench TSV")
    if data_dir.is_file():
        return data_dir
    default = data_dir / "mmbench_dev_20230712.tsv"
    if default.exists():
        return default
    found = sorted(data_dir.glob("*.tsv"))
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(
        f"cannot choose an MMBench TSV in {data_dir} ({len(found)} .tsv files); pass tsv=..."
    )


def _read_tsv(path: Path) -> list[dict[str, str]]:
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def read_mmbench(
    data_dir: str | Path,
    *,
    tsv: str | Path | None = None,
    all_rounds: bool = False,
    lang: str = "en",
) -> Iterator[BenchItem]:
    """MMBench: one TSV with base64 images (default
    ``mmbench_dev_20230712.tsv``; ``data_dir`` may also be the TSV itself).

    One item per TSV row, prompt as ``model_vqa_mmbench.py
    --single-pred-prompt`` builds it (hint, question, ``A. ...`` lines,
    letter instruction).  The dev TSVs already contain the circularly shifted
    copies (``index >= 1e6``).  ``all_rounds=True`` instead yields one item
    per rotation of each row (LLaVA's ``--all-rounds``; the items carry
    ``round_id``, ``options`` and ``option_char`` for the answers file).
    """
    path = _find_tsv(Path(data_dir), tsv)
    rows = _read_tsv(path)
    images_by_index = {row["index"]: row.get("image", "") for row in rows}
    instruction = LETTER_PROMPT_CN if lang == "cn" else LETTER_PROMPT
    for row in rows:
        options: list[str] = []
        for letter in "ABCD":
            if letter not in row or _is_none(row[letter]):
                break
            options.append(row[letter])
        option_char = list("ABCD"[: len(options)])
        image = row.get("image", "")
        # newer TSVs store a duplicated image as the index of the row holding it
        if image and len(image) < 64 and image in images_by_index and image != row["index"]:
            image = images_by_index[image]
        n_rounds = len(options) if all_rounds else 1
        for round_id in range(n_rounds):
            question = row["question"]
            if not _is_none(row.get("hint")):
                question = row["hint"] + "\n" + question
            for letter, option in zip("ABCD", options):
                question = question + "\n" + letter + ". " + option
            extra: dict[str, Any] = {}
            if all_rounds:
                extra = {"round_id": round_id, "options": list(options), "option_char": list(option_char)}
            yield BenchItem(
                bench="mmbench",
                question_id=int(float(row["index"])),
                prompt=question + "\n" + instruction,
                image=ImageRef(b64=image) if image else None,
                target={
                    "index": int(float(row["index"])),
                    "answer": (row.get("answer") or "").strip(),
                    "options": list(options),
                    "option_char": list(option_char) if all_rounds else None,
                    "category": row.get("category"),
                    "l2_category": row.get("l2-category", row.get("L2-category")),
                },
                record_extra=extra,
            )
            options = options[1:] + options[:1]
            option_char = option_char[1:] + option_char[:1]
