"""End to end on a tiny random Video-LLaVA: a generated MSVD-QA folder (real encoded clips) -> the benchmark
runner (full model, then pruned: answers files, resumable) -> the GPT judge on a local server."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("av")
pytest.importorskip("openai")

from video_fixtures import JudgeServer, TinyVideoLlavaProcessor, make_video_bench  # noqa: E402

import vlprune  # noqa: E402
from vlprune.bench.runner import run_benchmark  # noqa: E402
from vlprune.evaluation import LoadedModel  # noqa: E402

KEEP = 34  # of a tiny 8-frame video's 8 x 16 patch tokens (+ 8 [CLS] kept)


def test_eval_then_judge_on_a_tiny_video_llava(tmp_path):
    from vlprune.testing import tiny_video_llava

    t = tiny_video_llava(seed=0)
    data = make_video_bench(tmp_path, "msvd_qa")
    proc = TinyVideoLlavaProcessor(t)
    loaded = LoadedModel(t.model, proc, t.clip, "tiny-video-llava")
    calls = proc.batches
    kwargs = {"desap": {"processor": t.tokenizer, "clip": t.clip, "clip_tokenizer": t.clip_tokenizer}}
    run = lambda: run_benchmark(loaded, f"msvd-qa:{data}", ["desap", "random"], [KEEP], tmp_path / "answers",  # noqa: E731
                                batch_size=3, max_new_tokens=3, method_kwargs=lambda m: kwargs.get(m, {}))
    report = run()
    # 4 questions, batches of 3 and 1, for full + 2 methods; every video decoded to Video-LLaVA's 8 frames
    assert [tuple(s[:2]) for s in calls] == [(3, 8), (1, 8)] * 3
    assert all(f.shape == (8, 24, 32, 3) for f in proc.frames)
    assert report["full"]["score"] is None and report["n"] == 4
    assert [(r["method"], r["keep"], r["n_answers"]) for r in report["results"]] == [("desap", KEEP, 4), ("random", KEEP, 4)]
    kept = vlprune.last_selection(t.model)  # the last pruned batch: one video, KEEP of its 8 x 16 patches
    assert kept.method == "random" and len(kept.indices) == 1 and len(kept.indices[0]) == KEEP
    lines = [json.loads(x) for x in open(report["results"][0]["answers_file"])]
    assert [x["question_id"] for x in lines] == ["v_vid0_0", "v_vid0_1", "v_vid1_0", "v_vid1_1"]
    assert all(x["pred"] == x["text"] and x["answer"] == f"a{x['id'][5]}_{x['id'][7]}" for x in lines)

    again = run()  # resumed: nothing is generated again, the same answers come back
    assert len(calls) == 6 and again["results"][1]["answers_file"] == report["results"][1]["answers_file"]

    from vlprune.bench.judge import Judge
    from vlprune.bench.video_score import score_video

    with JudgeServer() as server:
        result = score_video("msvd-qa", data, report["full"]["answers_file"],
                             Judge(url=server.url, model="judge-1", api_key="test-key", retry_wait=0))
    full = [json.loads(x)["text"] for x in open(report["full"]["answers_file"])]
    assert sorted(server.preds()) == sorted(full)  # the judge saw the model's answers
    assert result["n_judged"] == 4 and result["n_missing"] == 0


def test_eval_report_names_the_files_and_the_score_command(capsys):
    from vlprune.cli import print_bench_report

    row = {"answers_file": "out/msvd_qa/m/random-34.jsonl", "n_answers": 4, "score": None}
    print_bench_report({"model": "m", "bench": "msvd_qa", "n": 4, "full": {**row, "answers_file": "out/full.jsonl"},
                        "results": [{**row, "method": "random", "keep": 34, "relative": None}]})
    out = " ".join(capsys.readouterr().out.split())
    assert "out/full.jsonl" in out and "random-34.jsonl" in out
    assert "vlprune score --bench msvd-qa --data DIR --answers FILE --judge-url URL --judge-model MODEL" in out
