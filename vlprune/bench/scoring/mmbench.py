"""MMBench (dev) circular evaluation with rule-based answer extraction.

Reproduces the MMBench evaluator's circular protocol (OpenCompass MMBench
``eval_sub_data`` / ``eval_result``, as vendored by lmms-eval in
``lmms_eval/tasks/mmbench/mmbench_evals.py``), **without the GPT judge**:

* the TSV rows with ``index >= 1_000_000`` are circularly shifted copies of
  question ``index % 1_000_000`` (options rotated, ``answer`` letter moved
  accordingly); LLaVA's ``model_vqa_mmbench.py --all-rounds`` produces the
  same passes itself (``round_id`` + ``options`` + ``option_char`` in the
  answers file).  A question counts correct only if **every** pass is
  answered with the right option;
* answer extraction is the evaluator's rule stage, ``can_infer``:
  :func:`can_infer_option` (a lone option letter among the whitespace tokens,
  bare or as ``X.`` ``X,`` ``X:`` ``X)`` ``X).`` ``(X)`` ``(X).`` ``:X``
  ``:X,`` ``:X.`` ``:X)`` ``:X).``, with the "``A`` might be an article" guard
  for answers longer than 3 tokens) then :func:`can_infer_text` (exactly one
  option text contained in the lower-cased answer).

Choice: no GPT judge.  Upstream sends the passes where ``can_infer`` fails to
ChatGPT (and, after 3 failed calls, picks a random letter).  Here such a pass
counts as wrong, so the circular accuracy is a lower bound of the official
number; for models that answer with a letter (LLaVA-style "Answer with the
option's letter from the given choices directly.") the rule stage resolves
nearly everything and the two agree.  ``n_unparsed`` reports how many passes
would have gone to the judge.

Also returned: the single-pass ("vanilla") accuracy of the ``index <
1_000_000`` / ``round_id == 0`` passes, and circular accuracy per category.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "CIRCULAR_STRIDE",
    "LETTERS",
    "can_infer",
    "can_infer_option",
    "can_infer_text",
    "score_mmbench",
]

CIRCULAR_STRIDE = 1_000_000
LETTERS = "ABCD"

_AFFIXES = (
    ("", "."),
    ("", ","),
    ("", ":"),
    ("", ")"),
    ("", ")."),
    ("(", ")"),
    ("(", ")."),
    (":", ""),
    (":", ","),
    (":", "."),
    (":", ")"),
    (":", ")."),
)


def can_infer_option(answer: str, num_choice: int = 5) -> str | bool:
    """Rule 1 of the MMBench evaluator: an option letter written on its own.

    Returns the letter or ``False``.  ``num_choice`` defaults to 5 (``A``-``E``)
    as upstream, whatever the number of options.
    """
    choices = "ABCDE"[:num_choice]
    if "Failed to obtain answer via API" in answer:
        return False
    tokens = [token.strip() for token in answer.split()]

    def count(prefix: str = "", suffix: str = "") -> int:
        return sum(1 for ch in choices if prefix + ch + suffix in tokens)

    if count() == 1:
        # Upstream loops over the letters but its first statement breaks out
        # when "A" is a token of an answer of more than 3 tokens ("A" might be
        # the article).
        if not ("A" in tokens and len(tokens) > 3):
            for ch in choices:
                if ch in tokens:
                    return ch
    for prefix, suffix in _AFFIXES:
        if count(prefix, suffix) == 1:
            for ch in choices:
                if prefix + ch + suffix in tokens:
                    return ch
    return False


def can_infer_text(answer: str, choices: Mapping[str, Any]) -> str | bool:
    """Rule 2: exactly one option text occurs in the (lower-cased) answer."""
    answer = answer.lower()
    hits = [letter for letter, text in choices.items() if str(text).lower() in answer]
    return hits[0] if len(hits) == 1 else False


def can_infer(answer: str, choices: Mapping[str, Any]) -> str | bool:
    """``can_infer_option`` then ``can_infer_text`` (the evaluator's prefetch)."""
    letter = can_infer_option(answer)
    return letter if letter else can_infer_text(answer, choices)


def _pass_letter(prediction: str, options: Sequence[str], option_char: Sequence[str] | None) -> str | None:
    """Letter (in the original option order) chosen by one pass, or None."""
    shown = {LETTERS[i]: text for i, text in enumerate(options)}
    letter = can_infer(str(prediction), shown)
    if not letter:
        return None
    if option_char is None:
        return letter
    # LLaVA --all-rounds: map the letter shown to the model back to the
    # letter of the same option in the TSV (eval_mmbench.py's option_map).
    position = LETTERS.find(letter)
    if position < 0 or position >= len(option_char):
        return letter  # e.g. "E": cannot be right
    return option_char[position]


def score_mmbench(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Score MMBench passes.

    ``records``: one mapping per answered pass with ``index`` (TSV index),
    ``round_id`` (0 unless LLaVA ``--all-rounds``), ``prediction``,
    ``options`` (option texts in the order shown to the model), optional
    ``option_char`` (original letters of the shown options, for rotated
    rounds), ``answer`` (the gold letter of that TSV row) and ``category``.
    """
    groups: dict[int, list[bool]] = defaultdict(list)
    group_category: dict[int, str] = {}
    vanilla: list[bool] = []
    n_unparsed = 0
    for record in records:
        index = int(record["index"])
        main = index % CIRCULAR_STRIDE
        letter = _pass_letter(record["prediction"], list(record["options"]), record.get("option_char"))
        n_unparsed += letter is None
        hit = letter is not None and letter == str(record["answer"]).strip()
        groups[main].append(hit)
        if record.get("category") is not None and (index < CIRCULAR_STRIDE or main not in group_category):
            group_category[main] = record["category"]
        if index < CIRCULAR_STRIDE and int(record.get("round_id", 0) or 0) == 0:
            vanilla.append(hit)

    circular = {main: all(hits) for main, hits in groups.items()}
    per_category: dict[str, list[bool]] = defaultdict(list)
    for main, ok in circular.items():
        per_category[group_category.get(main, "uncategorized")].append(ok)
    acc = 100.0 * sum(circular.values()) / len(circular) if circular else 0.0
    return {
        "score": acc,
        "circular_accuracy": acc,
        "vanilla_accuracy": 100.0 * sum(vanilla) / len(vanilla) if vanilla else 0.0,
        "n_questions": len(circular),
        "n_scored": sum(len(h) for h in groups.values()),
        "n_unparsed": n_unparsed,
        "passes_per_question": {
            str(k): v for k, v in sorted(_count_passes(groups).items())
        },
        "per_category": {k: 100.0 * sum(v) / len(v) for k, v in sorted(per_category.items())},
    }


def _count_passes(groups: Mapping[int, list[bool]]) -> dict[int, int]:
    counts: dict[int, int] = defaultdict(int)
    for hits in groups.values():
        counts[len(hits)] += 1
    return counts
