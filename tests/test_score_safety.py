"""Scorers never crash on a malformed answers file, never print a score for nothing, and follow the
official VQAv2 (2021) and TextVQA rules on the cases issue 18 found."""
from __future__ import annotations

import json

import pytest

from helpers import write_json, write_jsonl
from test_scoring import make_pope
from vlprune.bench import score
from vlprune.bench.answers import check_record, load_answers
from vlprune.bench.score import NothingScored
from vlprune.bench.scoring import textvqa_accuracy, vqav2_accuracy

GOOD = {"question_id": 1, "prompt": "p", "text": "Yes"}


@pytest.mark.parametrize(
    "line, reason",
    [
        ('{"question_id": 1, "prompt": "p", "text": 1}', "text is a number"),
        ('{"question_id": 1, "prompt": "p", "text": ["yes"]}', "text is a list"),
        ('{"question_id": 1, "prompt": "p", "text": {"a": 1}}', "text is an object"),
        ('{"question_id": 1, "prompt": "p", "text": true}', "text is a boolean"),
        ('{"question_id": [1], "prompt": "p", "text": "yes"}', "question_id is a list"),
        ('{"question_id": null, "prompt": "p", "text": "yes"}', "question_id is null"),
        ('{"prompt": "p", "text": "yes"}', "no question_id"),
        ('{"question_id": 1, "prompt": "p"}', "no text"),
        ('{"question_id": 1, "prompt": 3, "text": "yes"}', "prompt is a number"),
        ('{"question_id": 1, "text": "A", "round_id": "x"}', "round_id is a string"),
        ('{"question_id": 1, "text": "A", "options": "AB"}', "options is a string"),
        ('{"question_id": 1, "text": "A", "option_char": 5}', "option_char is a number"),
        ("[1, 2]", "not a JSON object but a list"),
        ('{"question_id": 1, "text": "ye', "not JSON"),
    ],
)
def test_malformed_line_is_counted_with_its_reason_and_the_rest_scored(tmp_path, line, reason):
    d = make_pope(tmp_path)
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n" + json.dumps({**GOOD, "question_id": 5}) + "\n")
    res = score("pope", d, path)
    assert res["n_bad_lines"] == 1 and res["bad_lines"][0]["line"] == 2
    assert reason in res["bad_lines"][0]["reason"]
    assert res["n_answers"] == 2 and res["n_missing"] == 5


def test_text_null_is_an_empty_answer_and_non_utf8_is_a_bad_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"question_id": 1, "text": null}\n{"question_id": 2, "text": "\xff\xfe"}\n\n')
    records, bad = load_answers(path)
    assert records == [{"question_id": 1, "text": "", "prompt": ""}]
    assert bad == [(2, "not UTF-8 text")]
    assert check_record(GOOD) is None


@pytest.mark.parametrize(
    "content",
    [
        "",  # empty file
        "\n\n",
        json.dumps({"question_id": 999, "prompt": "p", "text": "yes"}) + "\n",  # matches no question
        '{"question_id": 1, "text": 7}\n',  # only malformed lines
        "not json at all\n",
    ],
)
def test_nothing_scored_raises_and_the_cli_exits_nonzero(tmp_path, content):
    typer = pytest.importorskip("typer")
    from typer.testing import CliRunner

    from vlprune.bench.cli import score_command

    d = make_pope(tmp_path)
    path = tmp_path / "a.jsonl"
    path.write_text(content)
    with pytest.raises(NothingScored, match="nothing scored"):
        score("pope", d, path)
    app = typer.Typer()
    app.command("score")(score_command)
    app.command("other")(lambda: None)
    result = CliRunner().invoke(app, ["score", "--bench", "pope", "--data", str(d), "--answers", str(path)])
    assert result.exit_code == 2 and "nothing scored" in result.output
    assert "Traceback" not in result.output and "score 0" not in result.output


def test_cli_reports_malformed_lines(tmp_path):
    typer = pytest.importorskip("typer")
    from typer.testing import CliRunner

    from vlprune.bench.cli import score_command

    d = make_pope(tmp_path)
    path = write_jsonl(tmp_path / "a.jsonl", [GOOD, {"question_id": 2, "prompt": "p", "text": 0}])
    app = typer.Typer()
    app.command("score")(score_command)
    app.command("other")(lambda: None)
    result = CliRunner().invoke(app, ["score", "--bench", "pope", "--data", str(d), "--answers", str(path)])
    assert result.exit_code == 0, result.output
    assert "1 malformed answer line" in result.output and "line 2: text is a number" in result.output


def test_answers_of_two_run_configurations_are_not_scored_together(tmp_path):
    d = make_pope(tmp_path)
    path = write_jsonl(tmp_path / "a.jsonl", [{**GOOD, "_run": "aaaa"}, {**GOOD, "question_id": 2, "_run": "bbbb"}])
    with pytest.raises(ValueError, match="mixes the answers of 2 run configurations"):
        score("pope", d, path)


@pytest.mark.parametrize(
    "prediction, gts, official",
    [
        # issue 18: the 2021 vqaEval.py processes both sides when the humans disagree: "Two" -> "2", and
        # the humans' "two" -> "2" too: 4 matches -> 1.0 (the 2016 rule left the humans' "two": 0.3)
        ("Two", ["two"] * 3 + ["2"] + ["3"] * 6, 1.0),
        # human answers are stripped first: "white " x10 are all "white" -> identical -> 1.0 (was 0)
        ("White", ["white "] * 10, 1.0),
        # identical humans: the result is compared as LLaVA's converter left it (EvalAI removes at most
        # 32 periods, 8 remain) -> 0.0 (was 1.0)
        ("graffiti" + "." * 40, ["graffiti"] * 10, 0.0),
        # disagreeing humans: articles and number words are removed on their side too
        ("a dog", ["the dog"] * 3 + ["cat"] * 7, 0.9),
        ("T-shirt", ["t-shirt"] * 4 + ["shirt"] * 6, 1.0),
        ("T-shirt", ["t-shirt"] * 10, 0.0),  # identical: "t-shirt" vs the converter's "t shirt"
    ],
)
def test_vqav2_follows_the_2021_official_rule(prediction, gts, official):
    assert vqav2_accuracy(prediction, gts) == pytest.approx(official)


def test_textvqa_scores_every_answer_line(tmp_path):
    """One image asked the same question twice: two question lines, two answer lines, both scored
    (eval_textvqa.py builds its pred_list from every result line)."""
    d = tmp_path / "textvqa"
    gts = ["stop"] * 10
    write_json(d / "TextVQA_0.5.1_val.json", {"data": [
        {"question_id": 0, "image_id": "img1", "question": "What does it say?", "answers": gts},
        {"question_id": 1, "image_id": "img1", "question": "What does it say?", "answers": gts},
        {"question_id": 2, "image_id": "img2", "question": "What colour?", "answers": ["red"] * 10},
    ]})
    prompt = "what does it say?\nAnswer the question using a single word or phrase."
    other = "what colour?\nAnswer the question using a single word or phrase."
    write_jsonl(d / "llava_textvqa_val_v051_ocr.jsonl", [
        {"question_id": "img1", "image": "img1.jpg", "text": prompt},
        {"question_id": "img1", "image": "img1.jpg", "text": prompt},
        {"question_id": "img2", "image": "img2.jpg", "text": other},
    ])
    both = write_jsonl(tmp_path / "a.jsonl", [
        {"question_id": "img1", "prompt": prompt, "text": "stop"},
        {"question_id": "img1", "prompt": prompt, "text": "go"},
        {"question_id": "img2", "prompt": other, "text": "red"},
    ])
    res = score("textvqa", d, both)
    assert res["n_scored"] == 3 and res["n_missing"] == 0
    assert res["score"] == pytest.approx(200 / 3)  # (1 + 0 + 1) / 3
    one = write_jsonl(tmp_path / "b.jsonl", [{"question_id": "img1", "prompt": prompt, "text": "stop"}])
    res = score("textvqa", d, one)
    assert res["n_scored"] == 1 and res["n_missing"] == 2  # the repeated question is counted as missing
    assert textvqa_accuracy("Stop.", gts) == 1.0


def test_a_damaged_benchmark_file_is_named_in_the_error(tmp_path):
    d = make_pope(tmp_path)
    with open(d / "llava_pope_test.jsonl", "a") as handle:
        handle.write('{"question_id": 8, "te\n')
    path = write_jsonl(tmp_path / "a.jsonl", [GOOD])
    with pytest.raises(ValueError, match=r"line 8 of .*llava_pope_test.jsonl is not JSON"):
        score("pope", d, path)


@pytest.mark.parametrize("qid", [float("inf"), "abc", 1e300])
def test_mmbench_odd_ids_are_unmatched_not_a_crash(qid):
    from vlprune.bench import score_items

    with pytest.raises(NothingScored, match="1 match no question"):
        score_items("mmbench", [], [{"question_id": qid, "prompt": "", "text": "A"}])
