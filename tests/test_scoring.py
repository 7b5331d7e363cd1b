"""Scorers checked against hand-computed scores on tiny fixture layouts.

Every expected number has its arithmetic in a comment.  The fixtures follow
the LLaVA ``playground/data/eval/<bench>`` layouts read by
``vlprune.bench.readers``.
"""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path

import pytest

from vlprune.bench import score
from vlprune.bench.scoring import (
    can_infer,
    can_infer_option,
    evalai_normalize,
    leave_one_out_accuracy,
    normalize_gqa_answer,
    parse_mme_answer,
    parse_sqa_letter,
    parse_yes_no,
    prompt_to_question,
    textvqa_accuracy,
    vqav2_accuracy,
)
from vlprune.bench.scoring.vqa_normalize import process_digit_article, process_punctuation
from helpers import write_json, write_jsonl

APPROX = pytest.approx


# ----------------------------------------------------------------------------- helpers




def answers(path: Path, rows) -> Path:
    """rows: (question_id, prompt, text[, extra dict])"""
    out = []
    for row in rows:
        record = {"question_id": row[0], "prompt": row[1], "text": row[2]}
        if len(row) > 3:
            record.update(row[3])
        out.append(record)
    return write_jsonl(path, out)


# ----------------------------------------------------------------------------- normalisation units


class TestVqaNormalisation:
    def test_number_words_articles_contractions(self):
        assert evalai_normalize("Two") == "2"
        assert evalai_normalize("None") == "0"
        assert evalai_normalize("the ten") == "10"
        assert evalai_normalize("an apple") == "apple"
        assert evalai_normalize("dont") == "don't"
        # 'whats' would be a contraction, but "what's" is split by word_tokenize first
        assert evalai_normalize("whats") == "what's"
        assert evalai_normalize("what's") == "what 's"
        # capitalised keys of the upstream table never match after lower-casing
        assert process_digit_article("Im") == "im"

    def test_punctuation_rules(self):
        # mark not touching a space -> replaced by a space
        assert evalai_normalize("The Coca-Cola.") == "coca cola"
        # mark touching a space -> deleted
        assert evalai_normalize("hello - world") == "hello world"
        # periods before digits survive, others go
        assert evalai_normalize("3.5") == "3.5"
        assert evalai_normalize("Dr. Who") == "dr who"
        assert evalai_normalize("STOP!") == "stop"
        # VQAEval variant: a comma between digits makes every mark be deleted
        assert process_punctuation("1,000 (approx)") == "1000 approx"
        assert process_punctuation("a/b") == "a b"
        # apostrophes and colons are not in the punctuation list
        assert process_punctuation("it's 3:30") == "it's 3:30"

    def test_period_removal_is_capped_at_32(self):
        # upstream passes re.UNICODE (32) as Pattern.sub's count
        assert process_punctuation("." * 40) == "." * 8

    def test_leave_one_out(self):
        gts = ["a"] * 3 + ["b"] * 7
        # 3 matches: dropping a match leaves 2 -> 2/3 (x3); dropping another leaves 3 -> 1 (x7)
        # (3 * 2/3 + 7 * 1) / 10 = 9/10
        assert leave_one_out_accuracy("a", gts) == APPROX(0.9)
        # 7 matches: always >= 6 left -> 1
        assert leave_one_out_accuracy("b", gts) == 1.0
        # 1 match: (1 * 0 + 9 * 1/3) / 10 = 0.3
        assert leave_one_out_accuracy("x", ["x"] + ["y"] * 9) == APPROX(0.3)
        assert leave_one_out_accuracy("z", gts) == 0.0


def test_textvqa_accuracy_normalises_both_sides():
    # gts "coca-cola" -> "coca cola": 5 of 10 match -> 1.0
    assert textvqa_accuracy("The Coca-Cola.", ["coca cola"] * 3 + ["coca-cola"] * 2 + ["coke"] * 5) == 1.0
    # "Two" -> "2"; gts: two "2" + one "two"->"2" = 3 matches -> 0.9
    assert textvqa_accuracy("Two", ["2", "2", "two"] + ["3"] * 7) == APPROX(0.9)


def test_vqav2_accuracy_processes_gts_only_when_they_disagree():
    # gts disagree -> processPunctuation("t-shirt") = "t shirt"; pred "T-shirt" -> "t shirt"
    # 4 matches -> 1.0
    assert vqav2_accuracy("T-shirt", ["t-shirt"] * 4 + ["shirt"] * 6) == 1.0
    # all gts identical -> left raw; the normalised prediction "t shirt" never equals "t-shirt"
    assert vqav2_accuracy("T-shirt", ["t-shirt"] * 10) == 0.0


# ----------------------------------------------------------------------------- parsing units


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes", "yes"),
        ("No", "no"),
        ("No, there is not.", "no"),
        ("Yes, there is no dog.", "no"),  # 'no' is a word of the first sentence
        ("Not at all.", "yes"),  # 'Not' is not in the list
        ("NO", "yes"),
        ("Nope", "yes"),
        ("Yes. No dog here though, no.", "yes"),  # only the first sentence counts
        ("no.", "no"),
        ("There is not a dog", "no"),
        ("No\nthere is none", "yes"),  # split on ' ' only: the word is 'No\nthere'
        ("", "yes"),
    ],
)
def test_pope_parsing(text, expected):
    assert parse_yes_no(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes", "yes"),
        ("NO", "no"),
        ("No, there is no cat.", "no"),
        ("yes, it is", "yes"),
        ("Not really", "no"),  # prefix 'not ' contains 'no'
        ("None", "no"),
        ("There is a car.", "other"),
        ("I think yes", "other"),  # prefix 'i th'
        ("Y", "other"),
        (" yes", "yes"),
        ("  yes", "other"),  # prefix '  ye'
    ],
)
def test_mme_parsing(text, expected):
    assert parse_mme_answer(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"),
        ("B. Paris", "B"),
        ("The answer is B.", "B"),
        ("Because of X. The answer is C.", "C"),
        ("The answer is B", "FAILED"),  # the regex needs one more character after the letter
        ("The answer is Bob", "B"),  # ... which can be anything
        ("The answer is A. The answer is B.", "FAILED"),  # two matches
        ("b", "FAILED"),
        ("B.", "FAILED"),  # "X. " needs the space
        (" B", "FAILED"),  # no strip
        ("(B)", "FAILED"),
    ],
)
def test_sqa_letter_parsing(text, expected):
    assert parse_sqa_letter(text) == expected


def test_mmbench_rule_extraction():
    choices = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}
    assert can_infer_option("B") == "B"
    assert can_infer_option("A. dog") == "A"
    assert can_infer_option("(C)") == "C"
    assert can_infer_option("The answer is D") == "D"
    assert can_infer_option("A or B") is False  # two bare letters
    # 'A' among > 3 tokens might be the article: the bare-letter rule is skipped
    assert can_infer_option("A dog is here") is False
    assert can_infer("A dog is here", choices) == "B"  # text rule: only 'dog' occurs
    assert can_infer("a cat and a dog", choices) is False  # two option texts
    assert can_infer("E", choices) == "E"  # letters A-E are always recognised
    assert can_infer("Failed to obtain answer via API", choices) is False


def test_gqa_normalisation():
    assert normalize_gqa_answer("Yes.") == "yes"
    assert normalize_gqa_answer("No...") == "no"
    assert normalize_gqa_answer("White. ") == "white. "  # no whitespace strip
    assert normalize_gqa_answer("T-Shirt") == "t-shirt"


def test_textvqa_prompt_processor():
    llava = "what brand is this?\nReference OCR token: Coca, Cola\nAnswer the question using a single word or phrase."
    assert prompt_to_question(llava) == "what brand is this?"
    ocr_first = "Reference OCR token: Coca\nWhat Brand?\nAnswer briefly."
    assert prompt_to_question(ocr_first) == "what brand?"
    assert prompt_to_question("What Brand?\nAnswer the question using a single word or phrase.") == "what brand?"
    assert prompt_to_question("OCR tokens: a b Question: Which one? Short answer:") == "which one?"


# ----------------------------------------------------------------------------- POPE end to end


def make_pope(root: Path) -> Path:
    d = root / "pope"
    # (question_id, split, image, label)
    questions = [
        (1, "adversarial", "COCO_val2014_1.jpg", "yes"),
        (2, "adversarial", "COCO_val2014_2.jpg", "no"),
        (3, "adversarial", "COCO_val2014_3.jpg", "yes"),
        (4, "adversarial", "COCO_val2014_4.jpg", "no"),
        (5, "random", "COCO_val2014_5.jpg", "yes"),
        (6, "random", "COCO_val2014_6.jpg", "no"),
        (7, "adversarial", "COCO_val2014_7.jpg", "yes"),
    ]
    write_jsonl(
        d / "llava_pope_test.jsonl",
        [
            {"question_id": q, "image": img, "text": f"Is there a thing {q}?\nAnswer the question using a single word or phrase.", "category": c}
            for q, c, img, _ in questions
        ],
    )
    for split in ("adversarial", "random"):
        write_jsonl(
            d / "coco" / f"coco_pope_{split}.json",
            [{"question_id": k, "image": img, "text": "q", "label": lab} for k, (q, c, img, lab) in enumerate(questions, 1) if c == split],
        )
    return d


POPE_ANSWERS = [
    (1, "p", "Yes, there is a dog."),  # yes, label yes -> TP
    (2, "p", "Not at all."),  # 'Not' is not a no-word -> yes, label no -> FP
    (3, "p", "No."),  # no, label yes -> FN
    (4, "p", "There is no cat in the image."),  # no, label no -> TN
    (5, "p", "yes"),  # random: TP
    (6, "p", "No, there is not. But yes, maybe."),  # first sentence -> no: TN
    (7, "p", "NO"),  # 'NO' is not a no-word -> yes, label yes -> TP
]


def test_pope_end_to_end(tmp_path):
    d = make_pope(tmp_path)
    res = score("pope", d, answers(tmp_path / "a.jsonl", POPE_ANSWERS))
    adv, rnd = res["per_split"]["adversarial"], res["per_split"]["random"]
    # adversarial: TP=2 (q1, q7), FP=1 (q2), FN=1 (q3), TN=1 (q4), n=5
    assert (adv["TP"], adv["FP"], adv["TN"], adv["FN"]) == (2, 1, 1, 1)
    assert adv["accuracy"] == APPROX(60.0)  # (2+1)/5
    assert adv["precision"] == APPROX(200 / 3)  # 2/(2+1)
    assert adv["recall"] == APPROX(200 / 3)  # 2/(2+1)
    assert adv["f1"] == APPROX(200 / 3)  # 2PR/(P+R) with P=R=2/3
    assert adv["yes_ratio"] == APPROX(60.0)  # predicted yes: q1, q2, q7 -> 3/5
    # random: TP=1, TN=1 -> everything 100, yes-ratio 1/2
    assert rnd["f1"] == APPROX(100.0) and rnd["yes_ratio"] == APPROX(50.0)
    # headline: mean F1 = (66.667 + 100) / 2 = 83.333
    assert res["score"] == APPROX(250 / 3)
    assert res["headline"] == "f1_mean"
    assert res["accuracy_mean"] == APPROX(80.0)  # (60 + 100) / 2
    assert res["n_missing"] == 0 and res["n_unmatched"] == 0


def test_pope_subset_and_strict(tmp_path):
    d = make_pope(tmp_path)
    subset = [a for a in POPE_ANSWERS if a[0] != 6] + [(99, "p", "yes")]
    res = score("pope", d, answers(tmp_path / "a.jsonl", subset))
    assert res["n_missing"] == 1 and res["n_unmatched"] == 1
    # random now only has q5 (TP) -> F1 100; headline unchanged (66.667 + 100) / 2
    assert res["score"] == APPROX(250 / 3)
    with pytest.raises(ValueError, match="no answer"):
        score("pope", d, tmp_path / "a.jsonl", strict=True)


# ----------------------------------------------------------------------------- MME end to end


def make_mme(root: Path) -> Path:
    from PIL import Image

    d = root / "MME"
    bench = d / "MME_Benchmark_release_version"
    img = Image.new("RGB", (4, 4), (200, 10, 10))
    layout = {
        # category: (image dir, qa dir, {image file: [(question, answer), ...]})
        "existence": (
            "existence",
            "existence",
            {
                "000000000001.png": [
                    ("Is there a dog in this image? Please answer yes or no.", "Yes"),
                    ("Is there a cat in this image? Please answer yes or no.", "No"),
                ],
                "000000000002.png": [
                    ("Is there a car in this image? Please answer yes or no.", "Yes"),
                    ("Is there a bus in this image? Please answer yes or no.", "No"),
                ],
            },
        ),
        "artwork": (
            "artwork/images",
            "artwork/questions_answers_YN",
            {
                "10002.jpg": [
                    ("Is this artwork created by Monet? Please answer yes or no.", "Yes"),
                    # double space before the suffix, as in some MME files
                    ("Is this artwork created by Dali?  Please answer yes or no.", "No"),
                ]
            },
        ),
        "code_reasoning": (
            "code_reasoning",
            "code_reasoning",
            {
                "0001.png": [
                    ("Is the output 3? Please answer yes or no.", "Yes"),
                    ("Is the output 4? Please answer yes or no.", "No"),
                ]
            },
        ),
    }
    questions = []
    for category, (image_dir, qa_dir, files) in layout.items():
        (bench / image_dir).mkdir(parents=True, exist_ok=True)
        (bench / qa_dir).mkdir(parents=True, exist_ok=True)
        for image_name, qas in files.items():
            img.save(bench / image_dir / image_name)
            stem = image_name.split(".")[0]
            (bench / qa_dir / f"{stem}.txt").write_text("".join(f"{q}\t{a}\n" for q, a in qas), encoding="utf-8")
            for q, _ in qas:
                # LLaVA's question file: suffix replaced by the short-answer instruction
                base = q.replace("  Please answer yes or no.", "").replace(" Please answer yes or no.", "")
                questions.append(
                    {
                        "question_id": f"{category}/{image_name}",
                        "image": f"{image_dir}/{image_name}",
                        "text": base + "\nAnswer the question using a single word or phrase.",
                        "category": category,
                    }
                )
    write_jsonl(d / "llava_mme.jsonl", questions)
    return d


def mme_prompt(question: str) -> str:
    return question + "\nAnswer the question using a single word or phrase."


MME_ANSWERS = [
    ("existence/000000000001.png", mme_prompt("Is there a dog in this image?"), "Yes"),  # right
    ("existence/000000000001.png", mme_prompt("Is there a cat in this image?"), "No, there is no cat."),  # right
    ("existence/000000000002.png", mme_prompt("Is there a car in this image?"), "There is a car."),  # other
    ("existence/000000000002.png", mme_prompt("Is there a bus in this image?"), "No"),  # right
    ("artwork/10002.jpg", mme_prompt("Is this artwork created by Monet?"), "yes, it is"),  # right
    ("artwork/10002.jpg", mme_prompt("Is this artwork created by Dali?"), "Not really"),  # right ('not ' -> no)
    ("code_reasoning/0001.png", mme_prompt("Is the output 3?"), "Yes"),  # right
    ("code_reasoning/0001.png", mme_prompt("Is the output 4?"), "yes"),  # wrong
]


def test_mme_end_to_end(tmp_path):
    d = make_mme(tmp_path)
    res = score("mme", d, answers(tmp_path / "a.jsonl", MME_ANSWERS))
    sub = res["subtasks"]
    # existence: acc 3/4 = 75, acc+ 1/2 images = 50 -> 125
    assert (sub["existence"]["acc"], sub["existence"]["acc_plus"], sub["existence"]["score"]) == APPROX((75.0, 50.0, 125.0))
    # artwork: 2/2 and 1/1 -> 200 (the Dali question resolves through the double-space variant)
    assert sub["artwork"]["score"] == APPROX(200.0)
    # code_reasoning: acc 1/2 = 50, acc+ 0 -> 50
    assert sub["code_reasoning"]["score"] == APPROX(50.0)
    assert res["perception"] == APPROX(325.0)  # 125 + 200
    assert res["cognition"] == APPROX(50.0)
    assert res["total"] == APPROX(375.0)
    assert res["score"] == APPROX(325.0) and res["headline"] == "perception"
    assert res["n_other"] == 1
    assert res["n_missing"] == 0 and res["n_unmatched"] == 0


def test_mme_partial_image_leaves_acc_plus(tmp_path):
    d = make_mme(tmp_path)
    # drop the (wrong) second code_reasoning answer: that image no longer counts for acc+
    res = score("mme", d, answers(tmp_path / "a.jsonl", MME_ANSWERS[:-1]))
    cr = res["subtasks"]["code_reasoning"]
    # acc 1/1 = 100, acc+ over 0 complete images = 0 -> 100
    assert (cr["acc"], cr["acc_plus"], cr["n_images"]) == (100.0, 0.0, 0)
    assert res["n_missing"] == 1


# ----------------------------------------------------------------------------- GQA end to end


def test_gqa_end_to_end(tmp_path):
    d = tmp_path / "gqa"
    gold = {
        "201": ("yes", "verify", "attr", "Yes."),  # -> 'yes' right
        "202": ("left", "query", "rel", "Left"),  # right
        "203": ("white", "query", "attr", "White. "),  # 'white. ' (no whitespace strip) wrong
        "204": ("no", "logical", "obj", "No..."),  # all trailing periods stripped: right
        "205": ("t-shirt", "query", "attr", "T-Shirt"),  # right
    }
    write_json(
        d / "data" / "testdev_balanced_questions.json",
        {
            qid: {"imageId": f"n{qid}", "question": f"q{qid}?", "answer": a, "isBalanced": True, "types": {"structural": s, "semantic": m}}
            for qid, (a, s, m, _) in gold.items()
        },
    )
    write_jsonl(
        d / "llava_gqa_testdev_balanced.jsonl",
        [{"question_id": qid, "image": f"n{qid}.jpg", "text": f"q{qid}?\nAnswer the question using a single word or phrase."} for qid in gold],
    )
    res = score("gqa", d, answers(tmp_path / "a.jsonl", [(qid, "p", v[3]) for qid, v in gold.items()]))
    assert res["score"] == APPROX(80.0)  # 4/5
    assert res["binary"] == APPROX(100.0)  # verify + logical: 201, 204
    assert res["open"] == APPROX(200 / 3)  # query: 202 ok, 203 wrong, 205 ok
    assert res["per_semantic_type"]["attr"] == APPROX(200 / 3)  # 201 ok, 203 wrong, 205 ok


# ----------------------------------------------------------------------------- TextVQA end to end


def test_textvqa_end_to_end(tmp_path):
    d = tmp_path / "textvqa"
    anns = [
        # (image_id, question, answers, prediction, expected accuracy)
        # 'coca-cola' -> 'coca cola': 5 matches -> 1.0
        ("img1", "What brand is this?", ["coca cola"] * 3 + ["coca-cola"] * 2 + ["coke"] * 5, "The Coca-Cola.", 1.0),
        # same image, other question: "Two" -> "2", gts 2, 2, two -> 3 matches -> 0.9
        ("img1", "How many cans?", ["2", "2", "two"] + ["3"] * 7, "Two", 0.9),
        # "STOP!" -> "stop": 1 match -> 0.3
        ("img2", "What does the sign say?", ["stop"] + ["stop sign"] * 9, "STOP!", 0.3),
        # "Dr. Who" -> "dr who": 4 matches -> 1.0
        ("img2", "Who is it?", ["dr who"] * 4 + ["doctor"] * 6, "Dr. Who", 1.0),
    ]
    write_json(
        d / "TextVQA_0.5.1_val.json",
        {"data": [{"question_id": i, "image_id": im, "question": q, "answers": a} for i, (im, q, a, _, _) in enumerate(anns)]},
    )
    prompts = [f"{q.lower()}\nReference OCR token: X, Y\nAnswer the question using a single word or phrase." for _, q, _, _, _ in anns]
    write_jsonl(
        d / "llava_textvqa_val_v051_ocr.jsonl",
        [{"question_id": im, "image": f"{im}.jpg", "text": p} for (im, *_), p in zip(anns, prompts)],
    )
    res = score("textvqa", d, answers(tmp_path / "a.jsonl", [(a[0], p, a[3]) for a, p in zip(anns, prompts)]))
    # (1.0 + 0.9 + 0.3 + 1.0) / 4 = 0.8
    assert res["score"] == APPROX(80.0)
    assert res["n_missing"] == 0 and res["n_unmatched"] == 0


# ----------------------------------------------------------------------------- VQAv2 end to end


def test_vqav2_end_to_end(tmp_path):
    d = tmp_path / "vqav2"
    data = [
        # (qid, answers, answer_type, prediction)
        (1, ["yes"] * 10, "yes/no", "Yes."),  # 10 matches -> 1.0
        (2, ["2"] * 2 + ["3"] * 8, "number", "two"),  # 2 matches: (2*1/3 + 8*2/3)/10 = 0.6
        (3, ["red"] + ["dark red"] * 9, "other", "Red"),  # 1 match -> 0.3
        (4, ["t-shirt"] * 4 + ["shirt"] * 6, "other", "T-shirt"),  # 't shirt' x4 -> 1.0
    ]
    write_json(
        d / "v2_mscoco_val2014_annotations.json",
        {
            "annotations": [
                {
                    "question_id": q,
                    "image_id": 100 + q,
                    "answer_type": t,
                    "question_type": "what",
                    "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(ans)],
                }
                for q, ans, t, _ in data
            ]
        },
    )
    write_json(
        d / "v2_OpenEnded_mscoco_val2014_questions.json",
        {"questions": [{"question_id": q, "image_id": 100 + q, "question": f"question {q}?"} for q, *_ in data]},
    )
    res = score("vqav2", d, answers(tmp_path / "a.jsonl", [(q, "p", pred) for q, _, _, pred in data]))
    assert res["score"] == APPROX(72.5)  # (1 + 0.6 + 0.3 + 1) / 4
    assert res["per_answer_type"] == APPROX({"number": 60.0, "other": 65.0, "yes/no": 100.0})


# ----------------------------------------------------------------------------- ScienceQA end to end


def make_sqa(root: Path) -> Path:
    d = root / "scienceqa"
    # pid: (has image, choices, answer index, split, prediction, correct?)
    table = {
        "1": (True, ["a", "b", "c"], 1, "test", "The answer is B."),  # right
        "2": (True, ["a", "b"], 0, "test", "A"),  # right
        "3": (True, ["x", "y", "red", "z"], 2, "test", "C. red"),  # right
        "4": (True, ["a", "b"], 1, "test", "The answer is B"),  # FAILED -> wrong
        "5": (True, ["a", "b", "c"], 0, "test", "E"),  # E not among 3 choices -> wrong
        "6": (False, ["a", "b"], 0, "test", "A"),  # right, but no image
        "7": (True, ["a", "b"], 0, "test", "The answer is A. The answer is B."),  # two matches -> wrong
        "8": (True, ["a", "b"], 0, "train", "A"),  # not in the test split
    }
    problems, llava = {}, []
    for pid, (has_img, choices, ans, split, _) in table.items():
        problems[pid] = {
            "question": f"Question {pid}?",
            "choices": choices,
            "answer": ans,
            "hint": "",
            "image": "image.png" if has_img else None,
            "split": split,
        }
        opts = " ".join(f"({'ABCDE'[i]}) {c}" for i, c in enumerate(choices))
        entry = {
            "id": pid,
            "conversations": [
                {"from": "human", "value": ("<image>\n" if has_img else "") + f"Context: N/A\nQuestion: Question {pid}?\nOptions: {opts}"},
                {"from": "gpt", "value": f"The answer is {'ABCDE'[ans]}."},
            ],
        }
        if has_img:
            entry["image"] = f"{pid}/image.png"
        llava.append(entry)
    write_json(d / "problems.json", problems)
    write_json(d / "pid_splits.json", {"test": [p for p, v in table.items() if v[3] == "test"], "train": ["8"]})
    write_json(d / "llava_test_CQM-A.json", llava)
    return d, {pid: v[4] for pid, v in table.items()}


def test_sqa_img_end_to_end(tmp_path):
    d, preds = make_sqa(tmp_path)
    a = answers(tmp_path / "a.jsonl", [(pid, "<image>\nq", text) for pid, text in preds.items()])
    res = score("sqa", d, a)
    # IMG test problems: 1, 2, 3, 4, 5, 7 -> right: 1, 2, 3 -> 3/6
    assert res["n_questions"] == 6
    assert res["score"] == APPROX(50.0) and res["headline"] == "img_accuracy"
    # answers 6 (no image) and 8 (train) match no IMG test question
    assert res["n_unmatched"] == 2
    assert res["n_failed_parse"] == 2  # problems 4 and 7
    full = score("sqa", d, a, images_only=False)
    # all 7 test problems: right 1, 2, 3, 6 -> 4/7; IMG accuracy still 3/6
    assert full["accuracy"] == APPROX(400 / 7)
    assert full["img_accuracy"] == APPROX(50.0)


# ----------------------------------------------------------------------------- MMBench end to end


def tiny_png_b64(color=(0, 128, 255)) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (3, 2), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


MMB_COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image", "source", "split", "comment"]


def write_mmbench_tsv(path: Path, rows) -> Path:
    """rows: (index, question, hint, [options], answer, category)"""
    image = tiny_png_b64()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(MMB_COLUMNS)
        for index, question, hint, options, answer, category in rows:
            opts = list(options) + [""] * (4 - len(options))
            writer.writerow([index, question, hint, *opts, answer, category, "l2", image, "src", "dev", ""])
    return path


def test_mmbench_circular_end_to_end(tmp_path):
    d = tmp_path / "mmbench"
    animals = ["cat", "dog", "bird", "fish"]
    colors = ["red", "green", "blue"]
    rows = [
        # question 0, gold 'dog', and its 3 circular copies (options rotated, letter moved)
        (0, "Which animal?", "nan", animals, "B", "attr"),
        (1000000, "Which animal?", "nan", animals[1:] + animals[:1], "A", "attr"),
        (2000000, "Which animal?", "nan", animals[2:] + animals[:2], "D", "attr"),
        (3000000, "Which animal?", "nan", animals[3:] + animals[:3], "C", "attr"),
        # question 1: two options
        (1, "Is it sunny?", "Look outside.", ["yes", "no"], "A", "logic"),
        (1000001, "Is it sunny?", "Look outside.", ["no", "yes"], "B", "logic"),
        # question 2: three options, gold 'blue'
        (2, "Which color?", "", colors, "C", "attr"),
        (1000002, "Which color?", "", colors[1:] + colors[:1], "B", "attr"),
        (2000002, "Which color?", "", colors[2:] + colors[:2], "A", "attr"),
        # questions 3 and 4 without copies
        (3, "What is shown?", "", ["a cat", "a dog"], "B", "count"),
        (4, "How many?", "", ["1", "2"], "A", "count"),
    ]
    write_mmbench_tsv(d / "mmbench_dev_20230712.tsv", rows)
    preds = [
        (0, "p", "B"),  # right
        (1000000, "p", "A. dog"),  # 'A.' -> A, right
        (2000000, "p", "The answer is D"),  # bare D, right
        (3000000, "p", "(C)"),  # right -> question 0 passes all 4
        (1, "p", "A"),  # right
        (1000001, "p", "yes"),  # option text 'yes' -> B, right -> question 1 passes
        (2, "p", "C"),  # right
        (1000002, "p", "B"),  # right
        (2000002, "p", "C"),  # wrong (gold A) -> circular failure of question 2
        (3, "p", "A dog is in the picture"),  # 'A' guard, then text 'a dog' -> B, right
        (4, "p", "I am not sure"),  # nothing inferable -> unparsed -> wrong
    ]
    res = score("mmbench", d, answers(tmp_path / "a.jsonl", preds))
    # circular: q0 ok, q1 ok, q2 fail, q3 ok, q4 fail -> 3/5
    assert res["score"] == APPROX(60.0) and res["headline"] == "circular_accuracy"
    # vanilla (index < 1e6): 0, 1, 2, 3 right, 4 wrong -> 4/5
    assert res["vanilla_accuracy"] == APPROX(80.0)
    assert res["n_questions"] == 5 and res["n_unparsed"] == 1
    # attr: q0 ok, q2 fail -> 50; logic: q1 -> 100; count: q3 ok, q4 fail -> 50
    assert res["per_category"] == APPROX({"attr": 50.0, "count": 50.0, "logic": 100.0})


def test_mmbench_llava_all_rounds(tmp_path):
    from vlprune.bench import read

    d = tmp_path / "mmb"
    write_mmbench_tsv(
        d / "mmbench_dev_20230712.tsv",
        [
            (0, "Which animal?", "", ["cat", "dog", "bird", "fish"], "B", "attr"),
            (1, "Is it sunny?", "", ["yes", "no"], "A", "logic"),
        ],
    )
    items = list(read("mmbench", d, all_rounds=True))
    assert [(i.question_id, i.record_extra["round_id"]) for i in items] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]
    # a model that always finds 'dog' / 'yes': the letter it writes moves with the rotation
    records = []
    for item in items:
        gold = "dog" if item.question_id == 0 else "yes"
        letter = "ABCD"[item.record_extra["options"].index(gold)]
        records.append(item.answer_record(letter))
    # ... except on round 1 of question 1, where it answers the shown letter A ('no')
    records[5]["text"] = "A"
    write_jsonl(tmp_path / "a.jsonl", records)
    res = score("mmbench", d, tmp_path / "a.jsonl")
    # question 0: 4 rounds right; question 1: round 1 wrong -> 1/2
    assert res["score"] == APPROX(50.0)
    assert res["passes_per_question"] == {"2": 1, "4": 1}
    assert res["vanilla_accuracy"] == APPROX(100.0)  # round 0 of both questions right
