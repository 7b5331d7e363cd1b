"""Benchmark readers and official-equivalent scorers (LLaVA evaluation layouts).

>>> from vlprune.bench import read, score
>>> for item in read("pope", "playground/data/eval/pope"):   # doctest: +SKIP
...     text = model_answer(item.load_image(), item.prompt)
...     line = item.answer_record(text)                       # LLaVA answer line
>>> score("pope", "playground/data/eval/pope", "answers.jsonl")["score"]  # doctest: +SKIP
"""

from .answers import BadLine, load_answers, write_answers
from .video_readers import VIDEO_BENCHMARKS, VideoItem  # registers the video QA readers first
from .readers import BENCHMARKS, BenchItem, ImageRef, canonical_bench, read
from .score import HEADLINES, NothingScored, score, score_items
from .store import AnswersFile, AnswersFileError, AnswersFileLocked, RunConfigMismatch

__all__ = [
    "BENCHMARKS",
    "HEADLINES",
    "AnswersFile",
    "AnswersFileError",
    "AnswersFileLocked",
    "BadLine",
    "BenchItem",
    "ImageRef",
    "NothingScored",
    "VIDEO_BENCHMARKS",
    "VideoItem",
    "RunConfigMismatch",
    "canonical_bench",
    "load_answers",
    "read",
    "score",
    "score_items",
    "write_answers",
]
