"""vlprune's VQAv2 and TextVQA scores equal the official code's, run as an oracle on the same answers.

The official files live verbatim in tests/oracles/ (repository, commit, lines and licences in its
README.md): GT-Vision-Lab/VQA ``vqaEval.py`` at master (a013f00, 2021 "Fixed processing answers bug"),
LLaVA's ``m4c_evaluator.py`` (EvalAIAnswerProcessor, TextVQAAccuracyEvaluator) and ``eval_textvqa.py``.
"""
from __future__ import annotations

import copy
import io
import json
import os
import random
import re
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from helpers import write_json, write_jsonl
from vlprune.bench import score

ORACLES = Path(__file__).parent / "oracles"


def _exec(name: str, namespace: dict | None = None, py2_prints: bool = False) -> dict:
    source = (ORACLES / name).read_text(encoding="utf-8")
    if py2_prints:  # the only Python 2 syntax of vqaEval.py: two `print "..."` statements
        source, n = re.subn(r'^(\s*)print (".*")\s*$', r"\1print(\2)", source, flags=re.MULTILINE)
        assert n == 2
    namespace = {} if namespace is None else namespace
    with warnings.catch_warnings():  # upstream's "\d" in plain strings
        warnings.simplefilter("ignore", DeprecationWarning)
        code = compile(source, str(ORACLES / name), "exec")
    exec(code, namespace)
    return namespace


@pytest.fixture(scope="module")
def official():
    vqa_eval = _exec("vqaEval.py.txt", py2_prints=True)["VQAEval"]
    pytest.importorskip("tqdm")
    m4c = _exec("m4c_evaluator.py.txt")
    textvqa = _exec("eval_textvqa.py.txt", {"os": os, "json": json, "re": re, **m4c})
    return vqa_eval, m4c["EvalAIAnswerProcessor"](), textvqa["eval_single"]


class _VQA:
    """The part of the official ``vqaTools/vqa.py`` that ``VQAEval`` reads: ``qa`` and ``getQuesIds``."""

    def __init__(self, qa: dict):
        self.qa = qa

    def getQuesIds(self):  # noqa: N802 (official name)
        return list(self.qa)


WORDS = ["two", "2", "three", "dog", "a dog", "the dog", "white", "white ", " White", "t-shirt", "t shirt",
         "yes", "Yes.", "no", "none", "0", "graffiti" + "." * 40, "graffiti.", "1,000", "1000", "don't",
         "dont", "red/white", "red white", "it's", "ten", "10", "hot dog!", "hot dog", "\tcat\n", "cat",
         "3.5", "c.d.", "mr. smith", "(left)", "left", "10:30", "yes!"]


def _cases(n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """The issue's three cases + random ones mixing case, spaces, punctuation, numbers and articles."""
    rng = random.Random(seed)
    cases = [("Two", ["two"] * 3 + ["2"] + ["3"] * 6), ("White", ["white "] * 10),
             ("graffiti" + "." * 40, ["graffiti"] * 10)]
    for _ in range(n):
        pool = rng.sample(WORDS, rng.randint(1, 3))
        gts = [rng.choice(pool) for _ in range(10)]
        pred = rng.choice(WORDS + pool * 3)
        if rng.random() < 0.3:
            pred = pred.upper() if rng.random() < 0.5 else pred.capitalize()
        cases.append((pred, gts))
    return cases


def test_vqav2_equals_official_vqaeval_after_llava_converter(tmp_path, official):
    vqa_eval, evalai, _ = official
    cases = _cases(400)
    gt_qa, res_qa, anns = {}, {}, []
    for qid, (pred, gts) in enumerate(cases, start=1):
        answers = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(gts)]
        entry = {"question_id": qid, "image_id": qid, "question_type": "what", "answer_type": "other",
                 "answers": answers}
        anns.append(copy.deepcopy(entry))
        gt_qa[qid] = entry
        res_qa[qid] = {"question_id": qid, "answer": evalai(pred)}  # LLaVA's convert_vqav2_for_submission.py
    ev = vqa_eval(_VQA(gt_qa), _VQA(res_qa), n=2)
    with redirect_stdout(io.StringIO()):
        ev.evaluate()

    d = tmp_path / "vqav2"
    write_json(d / "v2_mscoco_val2014_annotations.json", {"annotations": anns})
    write_json(d / "v2_OpenEnded_mscoco_val2014_questions.json",
               {"questions": [{"question_id": a["question_id"], "image_id": a["image_id"], "question": "q?"}
                              for a in anns]})
    answers = write_jsonl(tmp_path / "a.jsonl", [{"question_id": q, "prompt": "q?", "text": p}
                                                 for q, (p, _) in enumerate(cases, start=1)])
    ours = score("vqav2", d, answers)
    from vlprune.bench.scoring import vqav2_accuracy

    per_question = {q: round(100 * vqav2_accuracy(p, g), 2) for q, (p, g) in enumerate(cases, start=1)}
    assert per_question == ev.evalQA
    assert round(ours["score"], 2) == ev.accuracy["overall"]
    assert [ev.evalQA[q] for q in (1, 2, 3)] == [100.0, 100.0, 0.0]  # the three cases
    # the random cases do reach both branches and all three outcomes
    assert {0.0, 100.0} < set(ev.evalQA.values())


def test_textvqa_equals_official_eval_textvqa(tmp_path, official):
    _, _, eval_single = official
    cases = _cases(200, seed=1)
    d = tmp_path / "textvqa"
    data, questions, results = [], [], []
    for i, (pred, gts) in enumerate(cases):
        image = f"img{i // 3}"
        question = "what is written?" if i % 3 == 2 else f"question {i}?"  # every third: a repeat
        data.append({"question_id": i, "image_id": image, "question": question.capitalize(), "answers": gts})
        prompt = f"{question}\nReference OCR token: a, b\nAnswer the question using a single word or phrase."
        questions.append({"question_id": image, "image": f"{image}.jpg", "text": prompt})
        results.append({"question_id": image, "prompt": prompt, "text": pred})
    results += results[:5]  # lines answered twice: the official script scores both
    write_json(d / "TextVQA_0.5.1_val.json", {"data": data})
    write_jsonl(d / "llava_textvqa_val_v051_ocr.jsonl", questions)
    answers = write_jsonl(tmp_path / "answers.jsonl", results)
    printed = io.StringIO()
    with redirect_stdout(printed):
        eval_single(str(d / "TextVQA_0.5.1_val.json"), str(answers))
    match = re.search(r"Samples: (\d+)\nAccuracy: ([\d.]+)%", printed.getvalue())
    ours = score("textvqa", d, answers)
    assert ours["n_scored"] == int(match.group(1)) == len(results)
    assert f"{ours['score']:.2f}" == match.group(2)
