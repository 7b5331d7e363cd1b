"""Readers for the LLaVA evaluation layouts (``playground/data/eval/<bench>``).

Every reader takes the benchmark folder (``data_dir``) with LLaVA's file names
as defaults (each overridable by keyword) and yields :class:`BenchItem`\\ s in
question-file order.  Images are never decoded while reading: ``item.image`` is
an :class:`ImageRef` loader, ``item.load_image()`` returns an RGB PIL image.

``item.prompt`` is the text LLaVA puts after the image token (the question
file's ``text`` field, or the prompt LLaVA's runner builds for ScienceQA and
MMBench); write it back unchanged as the answer's ``prompt`` --
:meth:`BenchItem.answer_record` does that -- because TextVQA and MME match
ground truth through it, as LLaVA's scripts do.  ``item.target`` holds what the
scorer needs.  The expected layouts are documented in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import base64
import io
import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .scoring.mme import resolve_gt_key
from .scoring.textvqa import prompt_to_question

__all__ = [
    "BENCHMARKS",
    "READERS",
    "BenchItem",
    "ImageRef",
    "load_mme_ground_truth",
    "read",
    "register",
    "read_gqa",
    "read_mmbench",
    "read_mme",
    "read_pope",
    "read_sqa",
    "read_textvqa",
    "read_vqav2",
]

SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
LETTER_PROMPT = "Answer with the option's letter from the given choices directly."
LETTER_PROMPT_CN = "请直接回答选项字母。"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG", ".bmp", ".gif", ".webp")


# --------------------------------------------------------------------------- items


@dataclass(frozen=True)
class ImageRef:
    """A lazily loaded image: a file path or a base64 string (MMBench TSV)."""

    path: Path | None = None
    b64: str | None = None

    def __call__(self):
        from PIL import Image

        if self.path is not None:
            with Image.open(self.path) as img:
                return img.convert("RGB")
        if self.b64 is not None:
            with Image.open(io.BytesIO(base64.b64decode(self.b64))) as img:
                return img.convert("RGB")
        raise ValueError("empty ImageRef")

    def __repr__(self) -> str:
        if self.path is not None:
            return f"ImageRef(path={str(self.path)!r})"
        return f"ImageRef(b64=<{len(self.b64 or '')} chars>)"


@dataclass
class BenchItem:
    """One question of a benchmark.

    ``question_id``: LLaVA's id (not always unique: MME uses the image path
    for both questions of an image, TextVQA the image id).  ``prompt``: text
    sent after the image token.  ``image``: loader or ``None``.  ``target``:
    ground truth for the scorer.  ``record_extra``: extra fields the answer
    line must carry (MMBench rounds).
    """

    bench: str
    question_id: Any
    prompt: str
    image: ImageRef | None
    target: dict[str, Any] = field(default_factory=dict)
    record_extra: dict[str, Any] = field(default_factory=dict)

    def load_image(self):
        """RGB ``PIL.Image`` (or ``None`` for a text-only question)."""
        return None if self.image is None else self.image()

    def answer_record(self, text: str, **extra: Any) -> dict[str, Any]:
        """The answers-file line for a model output, in LLaVA's format."""
        record = {"question_id": self.question_id, "prompt": self.prompt, "text": text}
        record.update(self.record_extra)
        record.update(extra)
        return record

    def __getitem__(self, key: str) -> Any:  # dict-style access for convenience
        return getattr(self, key)


# --------------------------------------------------------------------------- helpers


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"line {number} of {path} is not JSON ({exc.msg}); is this the benchmark's file?") from None
    return rows


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not JSON ({exc.msg} at line {exc.lineno}); is this the benchmark's file?") from None


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path} (see docs/benchmarks.md for the layout)")
    return path


def _resolve(data_dir: Path, name: str | Path) -> Path:
    name = Path(name)
    return name if name.is_absolute() else data_dir / name


# --------------------------------------------------------------------------- POPE


def read_pope(
    data_dir: str | Path,
    *,
    question_file: str | Path = "llava_pope_test.jsonl",
    image_folder: str | Path = "val2014",
    annotation_dir: str | Path = "coco",
) -> Iterator[BenchItem]:
    """POPE: ``llava_pope_test.jsonl`` + ``val2014/`` + ``coco/coco_pope_<split>.json``.

    Labels come from ``coco/coco_pope_<split>.json`` (JSON lines with
    ``label``); the k-th question of a split in the question file is paired
    with the k-th line of that split's annotation file, which is what
    ``eval_pope.py`` assumes.  Image names are cross-checked.
    """
    data_dir = Path(data_dir)
    questions = _read_jsonl(_require(_resolve(data_dir, question_file), "POPE question file"))
    images = _resolve(data_dir, image_folder)
    ann_dir = _resolve(data_dir, annotation_dir)
    annotations: dict[str, list[dict[str, Any]]] = {}
    if ann_dir.is_dir():
        for path in sorted(ann_dir.glob("coco_pope_*.json")):
            annotations[path.stem[len("coco_pope_") :]] = _read_jsonl(path)
    seen: dict[str, int] = defaultdict(int)
    for q in questions:
        category = q.get("category", "")
        label = q.get("label", q.get("answer"))
        if label is None:
            if category not in annotations:
                raise FileNotFoundError(
                    f"no label for POPE question {q.get('question_id')!r}: missing {ann_dir}/coco_pope_{category}.json"
                )
            k = seen[category]
            seen[category] += 1
            if k >= len(annotations[category]):
                raise ValueError(f"coco_pope_{category}.json has fewer lines than the '{category}' questions")
            ann = annotations[category][k]
            if "image" in ann and "image" in q and ann["image"] != q["image"]:
                raise ValueError(
                    f"POPE question {q.get('question_id')!r} ({q['image']}) does not line up with line {k + 1} of "
                    f"coco_pope_{category}.json ({ann['image']}); the question file must keep the annotation order"
                )
            label = ann["label"]
        yield BenchItem(
            bench="pope",
            question_id=q["question_id"],
            prompt=q["text"],
            image=ImageRef(path=images / q["image"]),
            target={"label": str(label).strip().lower(), "category": category},
        )


# --------------------------------------------------------------------------- GQA


def read_gqa(
    data_dir: str | Path,
    *,
    question_file: str | Path = "llava_gqa_testdev_balanced.jsonl",
    image_folder: str | Path = "data/images",
    questions_json: str | Path = "data/testdev_balanced_questions.json",
) -> Iterator[BenchItem]:
    """GQA testdev-balanced: ``llava_gqa_testdev_balanced.jsonl`` +
    ``data/images/`` + ``data/testdev_balanced_questions.json`` (official
    questions file with the gold ``answer``).  Without the LLaVA question file
    the prompts are built from the official file (``question`` + LLaVA's
    short-answer instruction)."""
    data_dir = Path(data_dir)
    gold = _read_json(_require(_resolve(data_dir, questions_json), "GQA questions file"))
    images = _resolve(data_dir, image_folder)
    qfile = _resolve(data_dir, question_file)
    if qfile.exists():
        rows = [(q["question_id"], q["text"], q["image"]) for q in _read_jsonl(qfile)]
    else:
        rows = [
            (qid, f"{g['question']}\n{SHORT_ANSWER_PROMPT}", f"{g['imageId']}.jpg") for qid, g in gold.items()
        ]
    for qid, prompt, image in rows:
        g = gold.get(str(qid))
        if g is None:
            raise KeyError(f"GQA question {qid!r} not in {questions_json}")
        types = g.get("types") or {}
        yield BenchItem(
            bench="gqa",
            question_id=qid,
            prompt=prompt,
            image=ImageRef(path=images / image),
            target={
                "answer": g["answer"],
                "is_balanced": g.get("isBalanced", True),
                "structural": types.get("structural"),
                "semantic": types.get("semantic"),
            },
        )


# --------------------------------------------------------------------------- MME


def load_mme_ground_truth(benchmark_folder: str | Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    """MME ground truth as ``convert_answer_to_mme.py``'s ``get_gt`` reads it.

    Keys ``(category, txt_file, question)``; values ``{"answer", "image"}``
    (the image path, found next to the ``.txt`` or under ``<category>/images``).
    Categories with an ``images/`` folder keep their answers in
    ``questions_answers_YN/``; the others keep ``.txt`` next to the images.
    """
    root = Path(benchmark_folder)
    gt: dict[tuple[str, str, str], dict[str, Any]] = {}
    for category_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if (category_dir / "images").exists():
            image_dir, qa_dir = category_dir / "images", category_dir / "questions_answers_YN"
        else:
            image_dir = qa_dir = category_dir
        if not qa_dir.is_dir():
            continue
        stems: dict[str, Path] = {}
        for path in image_dir.iterdir():
            if path.suffix in IMAGE_EXTENSIONS:
                stems.setdefault(path.stem, path)
        for txt in sorted(qa_dir.glob("*.txt")):
            with open(txt, encoding="utf-8") as handle:
                for line in handle:
                    if not line.strip():
                        continue
                    question, answer = line.strip().split("\t")
                    gt[(category_dir.name, txt.name, question)] = {"answer": answer, "image": stems.get(txt.stem)}
    return gt


def read_mme(
    data_dir: str | Path,
    *,
    question_file: str | Path = "llava_mme.jsonl",
    benchmark_folder: str | Path = "MME_Benchmark_release_version",
) -> Iterator[BenchItem]:
    """MME: ``llava_mme.jsonl`` + ``MME_Benchmark_release_version/`` (images
    and the ``question<TAB>answer`` .txt ground truth).  Without the LLaVA
    question file the questions are taken from the .txt files
    (``question_id = "<category>/<image file>"``, as LLaVA's)."""
    data_dir = Path(data_dir)
    folder = _require(_resolve(data_dir, benchmark_folder), "MME benchmark folder")
    gt = load_mme_ground_truth(folder)
    qfile = _resolve(data_dir, question_file)
    if qfile.exists():
        for q in _read_jsonl(qfile):
            key = resolve_gt_key(q["question_id"], q["text"], gt)
            if key is None:
                raise KeyError(f"MME question {q['question_id']!r} / {q['text']!r} has no ground truth in {folder}")
            yield BenchItem(
                bench="mme",
                question_id=q["question_id"],
                prompt=q["text"],
                image=ImageRef(path=folder / q["image"]),
                target={"answer": gt[key]["answer"], "category": key[0], "gt_key": key},
            )
        return
    for key, value in gt.items():
        category, _, question = key
        image = value["image"]
        if image is None:
            raise FileNotFoundError(f"no image for MME ground truth {key}")
        yield BenchItem(
            bench="mme",
            question_id=f"{category}/{image.name}",
            prompt=question,
            image=ImageRef(path=image),
            target={"answer": value["answer"], "category": category, "gt_key": key},
        )


# --------------------------------------------------------------------------- TextVQA


def read_textvqa(
    data_dir: str | Path,
    *,
    question_file: str | Path = "llava_textvqa_val_v051_ocr.jsonl",
    image_folder: str | Path = "train_images",
    annotation_file: str | Path = "TextVQA_0.5.1_val.json",
) -> Iterator[BenchItem]:
    """TextVQA val: ``llava_textvqa_val_v051_ocr.jsonl`` (prompts with the
    reference OCR tokens, ``question_id`` = image id) + ``train_images/`` (the
    val images ship in the train folder) + ``TextVQA_0.5.1_val.json``.
    Without the LLaVA question file the prompts are the plain question + the
    short-answer instruction (no OCR tokens)."""
    data_dir = Path(data_dir)
    data = _read_json(_require(_resolve(data_dir, annotation_file), "TextVQA annotation file"))["data"]
    by_key = {(str(a["image_id"]), a["question"].lower()): a for a in data}
    images = _resolve(data_dir, image_folder)
    qfile = _resolve(data_dir, question_file)
    if qfile.exists():
        rows = [(q["question_id"], q["text"], q["image"]) for q in _read_jsonl(qfile)]
    else:
        rows = [(a["image_id"], f"{a['question']}\n{SHORT_ANSWER_PROMPT}", f"{a['image_id']}.jpg") for a in data]
    for qid, prompt, image in rows:
        question = prompt_to_question(prompt)
        ann = by_key.get((str(qid), question))
        if ann is None:
            raise KeyError(f"TextVQA question ({qid!r}, {question!r}) not in {annotation_file}")
        yield BenchItem(
            bench="textvqa",
            question_id=qid,
            prompt=prompt,
            image=ImageRef(path=images / image),
            target={"answers": list(ann["answers"]), "question": question, "textvqa_question_id": ann.get("question_id")},
        )


# --------------------------------------------------------------------------- VQAv2


def read_vqav2(
    data_dir: str | Path,
    *,
    question_file: str | Path = "llava_vqav2_mscoco_val2014.jsonl",
    image_folder: str | Path = "val2014",
    questions_json: str | Path = "v2_OpenEnded_mscoco_val2014_questions.json",
    annotations_json: str | Path = "v2_mscoco_val2014_annotations.json",
) -> Iterator[BenchItem]:
    """VQAv2 val: official ``v2_mscoco_val2014_annotations.json`` (+ the
    official questions file, or a LLaVA-format ``llava_vqav2_mscoco_val2014.jsonl``
    with the prompts) + COCO ``val2014/`` images."""
    data_dir = Path(data_dir)
    anns = _read_json(_require(_resolve(data_dir, annotations_json), "VQAv2 annotation file"))["annotations"]
    by_qid = {str(a["question_id"]): a for a in anns}
    images = _resolve(data_dir, image_folder)
    qfile = _resolve(data_dir, question_file)
    if qfile.exists():
        rows = [(q["question_id"], q["text"], q["image"]) for q in _read_jsonl(qfile)]
    else:
        questions = _read_json(_require(_resolve(data_dir, questions_json), "VQAv2 questions file"))["questions"]
        rows = [
            (q["question_id"], f"{q['question']}\n{SHORT_ANSWER_PROMPT}", f"COCO_val2014_{int(q['image_id']):012d}.jpg")
            for q in questions
        ]
    for qid, prompt, image in rows:
        ann = by_qid.get(str(qid))
        if ann is None:
            raise KeyError(f"VQAv2 question {qid!r} not in {annotations_json}")
        yield BenchItem(
            bench="vqav2",
            question_id=qid,
            prompt=prompt,
            image=ImageRef(path=images / image),
            target={
                "answers": [a["answer"] for a in ann["answers"]],
                "answer_type": ann.get("answer_type"),
                "question_type": ann.get("question_type"),
            },
        )


# --------------------------------------------------------------------------- ScienceQA


def read_sqa(
    data_dir: str | Path,
    *,
    question_file: str | Path = "llava_test_CQM-A.json",
    image_folder: str | Path = "images/test",
    problems_file: str | Path = "problems.json",
    pid_splits_file: str | Path = "pid_splits.json",
    split: str = "test",
    images_only: bool = True,
) -> Iterator[BenchItem]:
    """ScienceQA: ``llava_test_CQM-A.json`` + ``images/test/<id>/image.png`` +
    ``problems.json`` + ``pid_splits.json``.  ``images_only`` (default) keeps
    the ScienceQA-IMG subset.  Prompts are LLaVA's ``--single-pred-prompt``
    ones (question text without ``<image>``, + the letter instruction).
    Without the LLaVA question file the prompt is built from ``problems.json``
    in lmms-eval's format."""
    data_dir = Path(data_dir)
    problems = _read_json(_require(_resolve(data_dir, problems_file), "ScienceQA problems.json"))
    images = _resolve(data_dir, image_folder)
    splits_path = _resolve(data_dir, pid_splits_file)
    split_ids = set(map(str, _read_json(splits_path)[split])) if splits_path.exists() else None
    qfile = _resolve(data_dir, question_file)
    rows: list[tuple[str, str]] = []
    if qfile.exists():
        for line in _read_json(qfile):
            text = line["conversations"][0]["value"].replace("<image>", "").strip()
            rows.append((str(line["id"]), f"{text}\n{LETTER_PROMPT}"))
    else:
        for pid, prob in problems.items():
            if prob.get("split", split) != split:
                continue
            letters = "ABCDE"
            choices = "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(prob["choices"]))
            context = f"Context: {prob['hint']}\n" if prob.get("hint") else ""
            rows.append((str(pid), f"{context}{prob['question']}\n{choices}\n{LETTER_PROMPT}"))
    for pid, prompt in rows:
        if split_ids is not None and pid not in split_ids:
            continue
        prob = problems.get(pid)
        if prob is None:
            raise KeyError(f"ScienceQA problem {pid!r} not in {problems_file}")
        has_image = bool(prob.get("image"))
        if images_only and not has_image:
            continue
        yield BenchItem(
            bench="sqa",
            question_id=pid,
            prompt=prompt,
            image=ImageRef(path=images / pid / prob["image"]) if has_image else None,
            target={"answer": int(prob["answer"]), "n_choices": len(prob["choices"]), "has_image": has_image},
        )


# --------------------------------------------------------------------------- MMBench

from .mmbench_reader import read_mmbench  # noqa: E402  (it reads BenchItem/ImageRef from here)


# --------------------------------------------------------------------------- registry

READERS: dict[str, Callable[..., Iterator[BenchItem]]] = {
    "pope": read_pope,
    "gqa": read_gqa,
    "mme": read_mme,
    "textvqa": read_textvqa,
    "vqav2": read_vqav2,
    "sqa": read_sqa,
    "mmbench": read_mmbench,
}
BENCHMARKS: tuple[str, ...] = tuple(READERS)

_ALIASES: dict[str, str] = {
    "scienceqa": "sqa",
    "scienceqa_img": "sqa",
    "sqa_img": "sqa",
    "vqa": "vqav2",
    "vqav2_val": "vqav2",
    "mmbench_en": "mmbench",
    "mme_perception": "mme",
}


def register(name: str, reader: Callable[..., Iterator[BenchItem]], aliases: tuple[str, ...] = ()) -> None:
    """Add a benchmark reader (the video QA readers register themselves: ``video_readers.py``)."""
    global BENCHMARKS
    READERS[name] = reader
    BENCHMARKS = tuple(READERS)
    _ALIASES.update({alias: name for alias in aliases})


def canonical_bench(name: str) -> str:
    """Canonical benchmark name (case-insensitive, a few aliases)."""
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in READERS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
    return key


def read(bench: str, data_dir: str | Path, **kwargs: Any) -> Iterator[BenchItem]:
    """Items of benchmark ``bench`` from ``data_dir`` (kwargs go to the reader)."""
    return READERS[canonical_bench(bench)](data_dir, **kwargs)
