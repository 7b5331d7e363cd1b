"""The GPT-judged score of the video QA benchmarks, against a real OpenAI-compatible HTTP server on 127.0.0.1
(tests/video_fixtures.py) and against Video-LLaVA's own eval_video_qa.py (tests/oracles/, run verbatim)."""
from __future__ import annotations

import io
import json
import re
import sys
import types
from contextlib import redirect_stdout
from pathlib import Path

import pytest

pytest.importorskip("openai")

from video_fixtures import JudgeServer, make_video_bench  # noqa: E402

from vlprune.bench import read  # noqa: E402
from vlprune.bench.judge import Judge, JudgeUnavailable, judge_messages, judgements_path, parse_judgement  # noqa: E402
from vlprune.bench.score import NothingScored  # noqa: E402
from vlprune.bench.store import RunConfigMismatch  # noqa: E402
from vlprune.bench.video_score import score_video  # noqa: E402

ORACLE = Path(__file__).parent / "oracles" / "eval_video_qa.py.txt"


def write_answers(d: Path, preds: list[str], path: Path, bench: str = "msvd_qa") -> Path:
    """vlprune's answer lines for the benchmark's questions, in order, with these predictions."""
    items = list(read(bench, d, missing_videos="ignore"))
    path.write_text("".join(json.dumps(item.answer_record(p)) + "\n" for item, p in zip(items, preds)))
    return path


def judge(server: JudgeServer, **kw) -> Judge:
    kw = {"model": "judge-1", "workers": 2, **kw}
    return Judge(url=server.url, api_key="test-key", retry_wait=0, **kw)


@pytest.fixture
def bench_dir(tmp_path):
    return make_video_bench(tmp_path, "msvd_qa")


@pytest.mark.parametrize("reply, parsed", [
    ("{'pred': 'yes', 'score': 4}", ("yes", 4)),
    ("{'pred': 'no', 'score': 0}", ("no", 0)),
    ("{'pred': 'yes', 'score': 4.8}", ("yes", 4)),               # upstream: int(score)
    (" {'pred': 'Yes.', 'score': 5}\n", ("yes", 5)),             # upstream: "yes" in pred.lower()
    ('{"pred": "no", "score": 3}', ("no", 3)),
    ("```python\n{'pred': 'yes', 'score': 4}\n```", "not a Python dictionary literal"),
    ("The answer is right.", "not a Python dictionary literal"),
    ("['yes', 4]", "not a dictionary with 'pred' and 'score'"),
    ("{'pred': 'maybe', 'score': 3}", "neither yes nor no"),
    ("{'pred': 1, 'score': 3}", "not a string"),
    ("{'pred': 'yes', 'score': '4'}", "not a number"),
    ("{'pred': 'yes', 'score': True}", "not a number"),
    ("{'pred': 'yes', 'score': 7}", "outside 0..5"),
    (None, "no text"),
])
def test_parse_judgement(reply, parsed):
    got = parse_judgement(reply)
    assert got == parsed if isinstance(parsed, tuple) else parsed in got


def test_malformed_replies_and_server_errors_are_retried_then_resumed_for_free(bench_dir, tmp_path):
    answers = write_answers(bench_dir, ["right: a dog", "wrong: a cat", "flaky: a bird", "boom: a fish"],
                            tmp_path / "full.jsonl")
    with JudgeServer() as server:
        result = score_video("msvd-qa", bench_dir, answers, judge(server))
        # 4 questions + 1 malformed reply asked again + 1 HTTP 500 asked again
        assert sorted(server.preds()) == sorted(["right: a dog", "wrong: a cat", "flaky: a bird", "flaky: a bird",
                                                 "boom: a fish", "boom: a fish"])
        assert result["accuracy"] == result["score"] == 50.0  # yes: right, flaky; no: wrong, boom
        assert result["avg_score"] == (5 + 1 + 4 + 2) / 4      # 4.8 -> int 4, as upstream
        assert (result["n_judged"], result["n_unjudged"], result["n_malformed_replies"]) == (4, 0, 1)
        assert result["n_judge_calls"] == 5                     # replies received (the 500 is not one)
        lines = [json.loads(x) for x in judgements_path(answers, "judge-1").read_text().splitlines()]
        assert sorted(x["status"] for x in lines) == ["malformed", "ok", "ok", "ok", "ok"]
        assert all(x["reply_model"] == "judge-1" for x in lines)
        n_calls = len(server.calls)
        again = score_video("msvd_qa", bench_dir, answers, judge(server))  # everything is in the judgements file
        assert len(server.calls) == n_calls and again["n_judge_calls"] == 0
        assert {k: again[k] for k in ("accuracy", "avg_score", "n_judged")} == \
            {k: result[k] for k in ("accuracy", "avg_score", "n_judged")}


def test_a_question_with_only_malformed_replies_is_counted_never_scored(bench_dir, tmp_path):
    answers = write_answers(bench_dir, ["right", "garbled", "wrong", "right"], tmp_path / "full.jsonl")
    with JudgeServer() as server:
        result = score_video("msvd_qa", bench_dir, answers, judge(server, max_attempts=3))
        assert server.preds().count("garbled") == 3
        assert (result["n_judged"], result["n_unjudged"], result["unjudged"]) == (3, 1, ["v_vid0_1"])
        assert result["accuracy"] == pytest.approx(100 * 2 / 3) and result["n_malformed_replies"] == 3
        score_video("msvd_qa", bench_dir, answers, judge(server, max_attempts=3))
        assert len(server.calls) == 6  # its 3 attempts are spent: not asked again
        more = score_video("msvd_qa", bench_dir, answers, judge(server, max_attempts=4))
        assert len(server.calls) == 7 and more["n_malformed_replies"] == 4  # one more attempt allowed


def test_an_interrupted_run_keeps_every_reply_and_asks_only_for_the_rest(bench_dir, tmp_path):
    answers = write_answers(bench_dir, ["right 1", "wrong 2", "right 3", "wrong 4"], tmp_path / "full.jsonl")
    with JudgeServer() as server:
        answered = {}

        def cut(path, body, auth, original=server.reply):
            status, content = original(path, body, auth)
            if status == 200 and len(answered) >= 2:
                return 503, "overloaded"
            answered[len(server.calls)] = True
            return status, content

        server.reply = cut
        with pytest.raises(JudgeUnavailable, match=r"failed 2 times .* 2 judgements received so far are kept .*"
                                                   r"rerun the same command"):
            score_video("msvd_qa", bench_dir, answers, judge(server, max_attempts=2, workers=1))
        kept = judgements_path(answers, "judge-1").read_text().splitlines()
        assert len(kept) == 2
        first = [json.loads(x)["text"] for x in kept]
    with JudgeServer() as healthy:
        result = score_video("msvd_qa", bench_dir, answers, judge(healthy))
        assert len(healthy.calls) == 2  # only the two questions without a reply
        assert (result["accuracy"], result["avg_score"], result["n_judged"]) == (50.0, 3.0, 4)
    assert [json.loads(x)["text"] for x in judgements_path(answers, "judge-1").read_text().splitlines()[:2]] == first


def test_judgements_are_bound_to_the_judge(bench_dir, tmp_path):
    answers = write_answers(bench_dir, ["right", "wrong", "right", "wrong"], tmp_path / "full.jsonl")
    with JudgeServer() as server:
        score_video("msvd_qa", bench_dir, answers, judge(server, model="judge-1"))
        other = score_video("msvd_qa", bench_dir, answers, judge(server, model="judge/2"))
        assert len(server.calls) == 8 and other["judgements_file"].endswith("full.jsonl.judge-judge_2.jsonl")
        with pytest.raises(RunConfigMismatch, match="judge_model: \"judge-1\" in the file, \"judge-3\" now"):
            score_video("msvd_qa", bench_dir, answers, judge(server, model="judge-3"),
                        judgements=judgements_path(answers, "judge-1"))
        # a changed prediction is a new question for the judge; the unchanged ones are reused
        write_answers(bench_dir, ["right", "wrong", "right", "right now"], answers)
        score_video("msvd_qa", bench_dir, answers, judge(server, model="judge-1"))
        assert len(server.calls) == 9 and server.preds()[-1] == "right now"


def test_answers_of_video_llavas_own_script_and_odd_lines(bench_dir, tmp_path):
    merge = tmp_path / "merge.jsonl"
    lines = [json.dumps({"id": "v_vid0_0", "question": "q", "answer": "a", "pred": "right"}),
             "{not json", json.dumps({"id": "v_other", "question": "q", "answer": "a", "pred": "right"}),
             json.dumps({"question_id": "v_vid1_0", "text": 3})]
    merge.write_text("\n".join(lines) + "\n")
    with JudgeServer() as server:
        with pytest.raises(ValueError, match="3 question"):
            score_video("msvd_qa", bench_dir, merge, judge(server), strict=True)
        assert server.calls == []  # strict refuses before anything is paid for
        result = score_video("msvd_qa", bench_dir, merge, judge(server))
        assert (result["n_judged"], result["n_missing"], result["n_unmatched"], result["n_bad_lines"]) == (1, 3, 1, 2)
        # the judge was asked about the benchmark's question and answer, not the line's
        assert "Question: what happens in 0 0?\nCorrect Answer: a0_0\n" in server.calls[0]["messages"][1]["content"]
    empty = tmp_path / "none.jsonl"
    empty.write_text(json.dumps({"id": "x", "pred": "y"}) + "\n")
    with pytest.raises(NothingScored, match="no line of .* answers a question"):
        score_video("msvd_qa", bench_dir, empty, judge(JudgeServer()))


class _InlinePool:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def starmap(self, fn, args):
        return [fn(*a) for a in args]


def test_video_llavas_eval_script_agrees(bench_dir, tmp_path, monkeypatch):
    """Video-LLaVA's eval_video_qa.py, run verbatim (its openai module is a stand-in that answers what the local
    server answers), sends the same messages and prints the same accuracy and average score."""
    answers = write_answers(bench_dir, ["right: a dog", "wrong: a cat", "flaky: a bird", "wrong: a fish"],
                            tmp_path / "merge.jsonl")
    with JudgeServer() as server:
        ours = score_video("msvd_qa", bench_dir, answers, judge(server))
        our_messages = sorted(json.dumps(c["messages"]) for c in server.calls)
    stand_in, sent = JudgeServer(), []

    def create(model, messages):
        sent.append(json.dumps(messages))
        status, content = stand_in.reply("/v1/chat/completions", {"model": model, "messages": messages},
                                         "Bearer test-key")
        assert status == 200
        return {"choices": [{"message": {"content": content}}]}

    fake_openai = types.SimpleNamespace(ChatCompletion=types.SimpleNamespace(create=create))
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "openai", fake_openai)
        namespace = {"__name__": "eval_video_qa"}
        exec(compile(ORACLE.read_text(), str(ORACLE), "exec"), namespace)
        namespace["Pool"] = _InlinePool
        m.setattr(sys, "argv", ["eval_video_qa.py", "--pred_path", str(answers), "--output_dir",
                                str(tmp_path / "gpt"), "--output_json", str(tmp_path / "results.json"),
                                "--api_key", "k", "--num_tasks", "1"])
        out = io.StringIO()
        with redirect_stdout(out):
            namespace["main"]()
    printed = out.getvalue()
    accuracy = float(re.search(r"Accuracy: ([\d.]+)", printed).group(1))
    average = float(re.search(r"Average score: ([\d.]+)", printed).group(1))
    assert sorted(sent) == our_messages  # 4 questions + the malformed reply asked again, same text
    assert json.dumps(judge_messages("what happens in 0 0?", "a0_0", "right: a dog")) in sent
    assert ours["accuracy"] == pytest.approx(100 * accuracy) and ours["avg_score"] == pytest.approx(average)


def test_score_cli(bench_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from vlprune.cli import app

    answers = write_answers(bench_dir, ["right", "wrong", "right", "garbled"], tmp_path / "full.jsonl")
    base = ["score", "--bench", "msvd-qa", "--data", str(bench_dir), "--answers", str(answers)]

    def text(result) -> str:  # the console wraps long lines
        return " ".join(result.output.split())

    result = CliRunner().invoke(app, base)
    assert result.exit_code == 2 and "GPT judge: give --judge-url URL and --judge-model NAME" in text(result)
    with JudgeServer() as server:
        judge_args = ["--judge-url", server.url, "--judge-model", "judge-1", "--judge-attempts", "2"]
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        result = CliRunner().invoke(app, base + judge_args)
        assert result.exit_code == 2 and "set OPENAI_API_KEY" in text(result)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        result = CliRunner().invoke(app, base + judge_args + ["--json", str(tmp_path / "r.json")])
        assert result.exit_code == 0, result.output
        assert "accuracy = 66.67" in text(result) and "1 question(s) got only malformed" in text(result)
        saved = json.loads((tmp_path / "r.json").read_text())
        assert saved["avg_score"] == pytest.approx((5 + 1 + 5) / 3) and saved["n_unjudged"] == 1
    result = CliRunner().invoke(app, ["score", "--bench", "pope", "--data", str(bench_dir), "--answers",
                                      str(answers), "--judge-model", "x"])
    assert result.exit_code == 2 and "without a judge" in text(result)
