"""Readers of the LLaVA evaluation layouts, on tiny fixture folders, plus the
``score`` CLI command."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from vlprune.bench import BenchItem, ImageRef, canonical_bench, read
from vlprune.bench.readers import LETTER_PROMPT, SHORT_ANSWER_PROMPT
from helpers import write_json, write_jsonl




def save_png(path: Path, size=(5, 3), color=(10, 200, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="PNG")
    return path


# ----------------------------------------------------------------------------- POPE


def make_pope(root: Path, swap: bool = False) -> Path:
    d = root / "pope"
    qs = [(1, "adversarial", "COCO_val2014_a.jpg"), (2, "adversarial", "COCO_val2014_b.jpg"), (3, "random", "COCO_val2014_c.jpg")]
    write_jsonl(d / "llava_pope_test.jsonl", [{"question_id": q, "image": im, "text": f"Is there a dog {q}?", "category": c} for q, c, im in qs])
    adv = [{"image": "COCO_val2014_a.jpg", "label": "yes"}, {"image": "COCO_val2014_b.jpg", "label": "no"}]
    if swap:
        adv.reverse()
    write_jsonl(d / "coco" / "coco_pope_adversarial.json", adv)
    write_jsonl(d / "coco" / "coco_pope_random.json", [{"image": "COCO_val2014_c.jpg", "label": "no"}])
    for _, _, im in qs:
        save_png(d / "val2014" / im)
    return d


def test_pope_reader(tmp_path):
    items = list(read("pope", make_pope(tmp_path)))
    assert [i.question_id for i in items] == [1, 2, 3]
    assert [i.target for i in items] == [
        {"label": "yes", "category": "adversarial"},
        {"label": "no", "category": "adversarial"},
        {"label": "no", "category": "random"},
    ]
    assert items[0].prompt == "Is there a dog 1?"
    img = items[0].load_image()
    assert img.size == (5, 3) and img.mode == "RGB"
    assert items[2].answer_record("No") == {"question_id": 3, "prompt": "Is there a dog 3?", "text": "No"}
    assert items[0]["question_id"] == 1  # dict-style access


def test_pope_reader_detects_misaligned_annotations(tmp_path):
    with pytest.raises(ValueError, match="does not line up"):
        list(read("pope", make_pope(tmp_path, swap=True)))


# ----------------------------------------------------------------------------- GQA


def test_gqa_reader_with_and_without_llava_file(tmp_path):
    d = tmp_path / "gqa"
    write_json(
        d / "data" / "testdev_balanced_questions.json",
        {"7": {"imageId": "n7", "question": "Is it red?", "answer": "no", "isBalanced": True, "types": {"structural": "verify", "semantic": "attr"}}},
    )
    items = list(read("gqa", d))  # no llava_gqa_testdev_balanced.jsonl: built from the official file
    assert items[0].prompt == f"Is it red?\n{SHORT_ANSWER_PROMPT}"
    assert items[0].image.path == d / "data" / "images" / "n7.jpg"
    assert items[0].target == {"answer": "no", "is_balanced": True, "structural": "verify", "semantic": "attr"}
    write_jsonl(d / "llava_gqa_testdev_balanced.jsonl", [{"question_id": "7", "image": "n7.jpg", "text": "custom prompt"}])
    assert [i.prompt for i in read("gqa", d)] == ["custom prompt"]


# ----------------------------------------------------------------------------- MME


def make_mme(root: Path, with_llava_file: bool) -> Path:
    d = root / "MME"
    bench = d / "MME_Benchmark_release_version"
    save_png(bench / "count" / "0001.png")
    (bench / "count" / "0001.txt").write_text(
        "Are there two dogs? Please answer yes or no.\tYes\nAre there three dogs? Please answer yes or no.\tNo\n", encoding="utf-8"
    )
    save_png(bench / "landmark" / "images" / "42.png")
    (bench / "landmark" / "questions_answers_YN").mkdir(parents=True)
    (bench / "landmark" / "questions_answers_YN" / "42.txt").write_text(
        "Is this the Louvre? Please answer yes or no.\tNo\nIs this the Eiffel Tower? Please answer yes or no.\tYes\n", encoding="utf-8"
    )
    if with_llava_file:
        write_jsonl(
            d / "llava_mme.jsonl",
            [
                {"question_id": "landmark/42.png", "image": "landmark/images/42.png", "text": "Is this the Louvre?\nAnswer the question using a single word or phrase.", "category": "landmark"},
                {"question_id": "count/0001.png", "image": "count/0001.png", "text": "Are there two dogs? Please answer yes or no.", "category": "count"},
            ],
        )
    return d


def test_mme_reader_llava_file(tmp_path):
    items = list(read("mme", make_mme(tmp_path, with_llava_file=True)))
    assert [(i.question_id, i.target["answer"], i.target["category"]) for i in items] == [
        ("landmark/42.png", "No", "landmark"),
        ("count/0001.png", "Yes", "count"),
    ]
    assert items[0].load_image().size == (5, 3)


def test_mme_reader_from_benchmark_folder(tmp_path):
    items = list(read("mme", make_mme(tmp_path, with_llava_file=False)))
    assert [i.question_id for i in items] == ["count/0001.png"] * 2 + ["landmark/42.png"] * 2
    assert items[2].prompt == "Is this the Louvre? Please answer yes or no."
    assert items[2].image.path.parts[-3:] == ("landmark", "images", "42.png")
    assert [i.target["answer"] for i in items] == ["Yes", "No", "No", "Yes"]


# ----------------------------------------------------------------------------- TextVQA


def test_textvqa_reader(tmp_path):
    d = tmp_path / "textvqa"
    write_json(d / "TextVQA_0.5.1_val.json", {"data": [{"question_id": 34602, "image_id": "abc", "question": "What Brand?", "answers": ["nokia"] * 10}]})
    prompt = "what brand?\nReference OCR token: NOKIA\nAnswer the question using a single word or phrase."
    write_jsonl(d / "llava_textvqa_val_v051_ocr.jsonl", [{"question_id": "abc", "image": "abc.jpg", "text": prompt}])
    (item,) = read("textvqa", d)
    assert item.question_id == "abc" and item.prompt == prompt
    assert item.target["answers"] == ["nokia"] * 10 and item.target["question"] == "what brand?"
    assert item.image.path == d / "train_images" / "abc.jpg"
    write_jsonl(d / "llava_textvqa_val_v051_ocr.jsonl", [{"question_id": "abc", "image": "abc.jpg", "text": "other question?\nx"}])
    with pytest.raises(KeyError):
        list(read("textvqa", d))


# ----------------------------------------------------------------------------- VQAv2


def test_vqav2_reader(tmp_path):
    d = tmp_path / "vqav2"
    write_json(
        d / "v2_mscoco_val2014_annotations.json",
        {"annotations": [{"question_id": 5, "image_id": 42, "answer_type": "number", "question_type": "how many", "answers": [{"answer": "2", "answer_id": i} for i in range(10)]}]},
    )
    write_json(d / "v2_OpenEnded_mscoco_val2014_questions.json", {"questions": [{"question_id": 5, "image_id": 42, "question": "How many?"}]})
    (item,) = read("vqav2", d)
    assert item.prompt == f"How many?\n{SHORT_ANSWER_PROMPT}"
    assert item.image.path == d / "val2014" / "COCO_val2014_000000000042.jpg"
    assert item.target == {"answers": ["2"] * 10, "answer_type": "number", "question_type": "how many"}


# ----------------------------------------------------------------------------- ScienceQA


def test_sqa_reader(tmp_path):
    d = tmp_path / "scienceqa"
    problems = {
        "10": {"question": "Which?", "choices": ["x", "y"], "answer": 1, "hint": "", "image": "image.png", "split": "test"},
        "11": {"question": "Text?", "choices": ["x", "y", "z"], "answer": 0, "hint": "", "image": None, "split": "test"},
        "12": {"question": "Train?", "choices": ["x", "y"], "answer": 0, "hint": "", "image": "image.png", "split": "train"},
    }
    write_json(d / "problems.json", problems)
    write_json(d / "pid_splits.json", {"test": ["10", "11"], "train": ["12"]})
    write_json(
        d / "llava_test_CQM-A.json",
        [
            {"id": "10", "image": "10/image.png", "conversations": [{"from": "human", "value": "<image>\nContext: N/A\nQuestion: Which?\nOptions: (A) x (B) y"}]},
            {"id": "11", "conversations": [{"from": "human", "value": "Context: N/A\nQuestion: Text?\nOptions: (A) x (B) y (C) z"}]},
        ],
    )
    save_png(d / "images" / "test" / "10" / "image.png")
    (item,) = read("sqa", d)
    assert item.question_id == "10"
    assert item.prompt == f"Context: N/A\nQuestion: Which?\nOptions: (A) x (B) y\n{LETTER_PROMPT}"
    assert item.target == {"answer": 1, "n_choices": 2, "has_image": True}
    assert item.load_image().size == (5, 3)
    everything = list(read("sqa", d, images_only=False))
    assert [i.question_id for i in everything] == ["10", "11"] and everything[1].image is None


# ----------------------------------------------------------------------------- MMBench


def png_b64(size=(3, 2)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (255, 0, 0)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def make_mmbench(root: Path) -> Path:
    path = root / "mmbench" / "mmbench_dev_20230712.tsv"
    path.parent.mkdir(parents=True)
    cols = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image", "source", "split", "comment"]
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(cols)
        writer.writerow([0, "Which color?", "nan", "red", "green", "blue", "", "C", "color", "attr", png_b64(), "s", "dev", ""])
        writer.writerow([1, "Is it day?", "The sky is bright.", "yes", "no", "nan", "nan", "A", "time", "logic", png_b64((4, 4)), "s", "dev", ""])
        # newer TSVs store a repeated image as the index of the row that has it
        writer.writerow([1000001, "Is it day?", "The sky is bright.", "no", "yes", "", "", "B", "time", "logic", "1", "s", "dev", ""])
    return path


def test_mmbench_reader(tmp_path):
    path = make_mmbench(tmp_path)
    items = list(read("mmbench", path.parent))
    assert [i.question_id for i in items] == [0, 1, 1000001]
    assert items[0].prompt == "Which color?\nA. red\nB. green\nC. blue\n" + LETTER_PROMPT  # 'nan' hint dropped, empty D dropped
    assert items[1].prompt == "The sky is bright.\nIs it day?\nA. yes\nB. no\n" + LETTER_PROMPT  # 'nan' options dropped
    assert items[0].target["options"] == ["red", "green", "blue"] and items[0].target["answer"] == "C"
    assert items[0].load_image().size == (3, 2)
    assert items[2].load_image().size == (4, 4)  # image resolved through index 1
    # data_dir may be the TSV itself, or tsv= may name it
    assert len(list(read("mmbench", path))) == 3
    assert len(list(read("mmbench", tmp_path, tsv=path))) == 3


def test_mmbench_reader_all_rounds(tmp_path):
    path = make_mmbench(tmp_path)
    items = [i for i in read("mmbench", path, all_rounds=True) if i.question_id == 0]
    assert [i.record_extra["option_char"] for i in items] == [["A", "B", "C"], ["B", "C", "A"], ["C", "A", "B"]]
    assert items[1].prompt.startswith("Which color?\nA. green\nB. blue\nC. red\n")
    rec = items[2].answer_record("A")
    assert rec["round_id"] == 2 and rec["options"] == ["blue", "red", "green"] and rec["text"] == "A"


# ----------------------------------------------------------------------------- misc


def test_names_and_errors(tmp_path):
    assert canonical_bench("ScienceQA") == "sqa" and canonical_bench("VQAv2") == "vqav2"
    with pytest.raises(ValueError, match="unknown benchmark"):
        canonical_bench("mmmu")
    with pytest.raises(FileNotFoundError, match="docs/benchmarks.md"):
        list(read("pope", tmp_path))
    assert isinstance(BenchItem("x", 1, "p", None).load_image(), type(None))
    assert "b64=<3 chars>" in repr(ImageRef(b64="abc"))


def test_score_cli_writes_json(tmp_path):
    typer = pytest.importorskip("typer")
    from typer.testing import CliRunner

    from vlprune.bench.cli import score_command

    d = make_pope(tmp_path)
    answers = write_jsonl(
        tmp_path / "answers.jsonl",
        [{"question_id": 1, "prompt": "p", "text": "Yes"}, {"question_id": 2, "prompt": "p", "text": "No"}, {"question_id": 3, "prompt": "p", "text": "No"}],
    )
    app = typer.Typer()
    app.command("score")(score_command)
    app.command("other")(lambda: None)  # two commands: invoke by name, as in the main app
    out = tmp_path / "res" / "pope.json"
    result = CliRunner().invoke(app, ["score", "--bench", "pope", "--data", str(d), "--answers", str(answers), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "f1_mean" in result.output
    saved = json.loads(out.read_text())
    # adversarial: TP=1, TN=1 -> F1 100; random: a single TN -> P, R undefined -> 0 (upstream would
    # divide by zero) -> mean F1 (100 + 0) / 2 = 50
    assert saved["bench"] == "pope" and saved["score"] == pytest.approx(50.0)
    assert saved["per_split"]["random"]["accuracy"] == pytest.approx(100.0)
    bad = CliRunner().invoke(app, ["score", "--bench", "gqa", "--data", str(d), "--answers", str(answers)])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
