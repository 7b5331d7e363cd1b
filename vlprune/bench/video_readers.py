"""Readers for the video QA benchmarks in the Video-ChatGPT / Video-LLaVA layout (``eval/GPT_Zero_Shot_QA``).

Video-LLaVA's ``scripts/v1_5/eval/run_qa_{msvd,msrvtt,tgif,activitynet}.sh`` run
``videollava/eval/video/run_inference_video_qa.py`` (``..._act.py`` for ActivityNet) on

* ``test_q.json``: ``[{"video_name", "question", "question_id"}, ...]``
* ``test_a.json``: ``[{"answer", ...}, ...]``, the k-th answer belonging to the k-th question
  (``answer = gt_answers[index]['answer']``)
* the videos, ``<video_dir>/<video_name><ext>`` (ActivityNet: ``v_<video_name><ext>``), the first of
  ``.mp4 .avi .mov .mkv`` that exists.

The folders, relative to each benchmark's folder, are Video-LLaVA's: MSVD ``videos/``, MSRVTT ``videos/all/``,
TGIF ``mp4/``, ActivityNet ``all_test/``.  Video-LLaVA skips a question whose video it cannot find, silently;
here a missing video is an error naming it (``missing_videos="skip"`` skips and counts, like upstream).  Two
extensions upstream does not try (``.webm``, ``.gif``) are tried after its four.  Answers are written in
LLaVA's answer-line form plus Video-LLaVA's own fields (``id, question, answer, pred``), so the file is read by
both vlprune and ``eval_video_qa.py``.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .readers import BenchItem, register
from .video_frames import NUM_FRAMES, VideoRef

__all__ = ["VIDEO_BENCHMARKS", "VIDEO_LAYOUTS", "VIDEO_READERS", "VideoItem", "VideoLayout", "read_video_qa"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")  # upstream's four first, in its order


@dataclass(frozen=True)
class VideoLayout:
    """Where one benchmark keeps its videos (relative to its folder) and how a ``video_name`` becomes a file."""

    video_folder: str
    prefix: str = ""
    title: str = ""


VIDEO_LAYOUTS: dict[str, VideoLayout] = {
    "msvd_qa": VideoLayout("videos", title="MSVD-QA"),
    "msrvtt_qa": VideoLayout("videos/all", title="MSRVTT-QA"),
    "tgif_qa": VideoLayout("mp4", title="TGIF-QA"),
    "activitynet_qa": VideoLayout("all_test", prefix="v_", title="ActivityNet-QA"),
}
VIDEO_BENCHMARKS: tuple[str, ...] = tuple(VIDEO_LAYOUTS)


@dataclass
class VideoItem(BenchItem):
    """One video question: ``prompt`` is the question as in ``test_q.json`` (what Video-LLaVA asks after its
    video tokens), ``video`` a :class:`VideoRef`, ``target = {"answer", "question"}``."""

    video: VideoRef | None = None

    def load_video(self):
        """The sampled frames, ``(T, H, W, 3)`` RGB ``uint8``."""
        if self.video is None:
            raise ValueError(f"question {self.question_id!r} has no video")
        return self.video()

    def answer_record(self, text: str, **extra: Any) -> dict[str, Any]:
        """LLaVA's answer line plus Video-LLaVA's ``{"id", "question", "answer", "pred"}``."""
        record = super().answer_record(text, **extra)
        record["pred"] = text
        return record


def _load_list(path: Path, what: str, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path} (Video-LLaVA's GPT_Zero_Shot_QA layout; "
                                "see docs/benchmarks.md)")
    with open(path, encoding="utf-8") as handle:
        try:
            rows = json.load(handle)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not JSON ({exc.msg} at line {exc.lineno}); is this the benchmark's "
                             f"{what}?") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path} must hold a JSON list of objects (the {what}), got {type(rows).__name__}")
    for number, row in enumerate(rows):
        missing = [f for f in fields if not isinstance(row, dict) or f not in row]
        if missing:
            raise ValueError(f"entry {number} of {path} has no {', '.join(missing)}; the {what} holds objects "
                             f"with {', '.join(fields)}")
    return rows


def _find_video(folder: Path, stem: str, extensions: tuple[str, ...]) -> Path | None:
    for ext in extensions:
        path = folder / f"{stem}{ext}"
        if path.exists():
            return path
    return None


def read_video_qa(
    data_dir: str | Path,
    *,
    bench: str,
    question_file: str | Path = "test_q.json",
    answer_file: str | Path = "test_a.json",
    video_folder: str | Path | None = None,
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS,
    num_frames: int = NUM_FRAMES,
    missing_videos: str = "error",
) -> Iterator[VideoItem]:
    """The questions of one video QA benchmark, in question-file order (see the module docstring).

    ``missing_videos``: ``"error"`` (default) refuses questions without a video, ``"skip"`` leaves them out,
    ``"ignore"`` does not look for videos at all (``item.video`` is ``None``: scoring needs none)."""
    if bench not in VIDEO_LAYOUTS:
        raise ValueError(f"unknown video benchmark {bench!r}; expected one of {', '.join(VIDEO_BENCHMARKS)}")
    if missing_videos not in ("error", "skip", "ignore"):
        raise ValueError(f"missing_videos must be 'error', 'skip' or 'ignore', got {missing_videos!r}")
    layout = VIDEO_LAYOUTS[bench]
    data_dir = Path(data_dir)
    qpath, apath = (Path(p) if Path(p).is_absolute() else data_dir / p for p in (question_file, answer_file))
    questions = _load_list(qpath, "question file", ("video_name", "question", "question_id"))
    answers = _load_list(apath, "answer file", ("answer",))
    if len(answers) < len(questions):
        raise ValueError(f"{apath} has {len(answers)} answers for the {len(questions)} questions of {qpath}; the "
                         "k-th answer belongs to the k-th question, so both files must come from the same release")
    folder = Path(video_folder) if video_folder is not None else data_dir / layout.video_folder
    if video_folder is not None and not folder.is_absolute():
        folder = data_dir / folder
    items, missing = [], []
    for index, (q, a) in enumerate(zip(questions, answers)):
        if "question_id" in a and str(a["question_id"]) != str(q["question_id"]):
            raise ValueError(f"entry {index} of {apath} answers question {a['question_id']!r}, but entry {index} "
                             f"of {qpath} is {q['question_id']!r}; the two files must list the questions in one order")
        path = None if missing_videos == "ignore" else \
            _find_video(folder, f"{layout.prefix}{q['video_name']}", extensions)
        if path is None and missing_videos != "ignore":
            missing.append(f"{layout.prefix}{q['video_name']}")
            continue
        items.append(VideoItem(
            bench=bench, question_id=q["question_id"], prompt=str(q["question"]), image=None,
            target={"answer": str(a["answer"]), "question": str(q["question"])},
            record_extra={"id": q["question_id"], "question": str(q["question"]), "answer": str(a["answer"])},
            video=None if path is None else VideoRef(path, num_frames),
        ))
    if missing and missing_videos == "error":
        shown = ", ".join(sorted(set(missing))[:3])
        raise FileNotFoundError(
            f"{len(missing)} question(s) of {qpath} have no video in {folder} (tried {' '.join(extensions)}): "
            f"{shown}{' ...' if len(set(missing)) > 3 else ''}; put the videos there (Video-LLaVA's "
            f"{layout.title} folder), or read with missing_videos='skip' to leave those questions out as "
            "Video-LLaVA's script does")
    yield from items


def _reader(bench: str):
    def read(data_dir: str | Path, **kwargs: Any) -> Iterator[VideoItem]:
        return read_video_qa(data_dir, bench=bench, **kwargs)

    read.__name__ = f"read_{bench}"
    read.__doc__ = (f"{VIDEO_LAYOUTS[bench].title}: ``test_q.json`` + ``test_a.json`` + "
                    f"``{VIDEO_LAYOUTS[bench].video_folder}/{VIDEO_LAYOUTS[bench].prefix}<video_name>.<ext>``.")
    return read


VIDEO_READERS = {bench: _reader(bench) for bench in VIDEO_BENCHMARKS}
for _bench, _read in VIDEO_READERS.items():
    _short = _bench.removesuffix("_qa")
    register(_bench, _read, aliases=(_short, f"{_short}qa"))
