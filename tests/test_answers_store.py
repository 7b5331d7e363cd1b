"""Answers files never mix runs, never lose an answer and have one writer (issue 18, items 1-3)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

from test_lmms_plugin import saved_tiny  # noqa: F401  (fixture: a tiny LLaVA saved to disk)
from vlprune.bench.runconfig import config_diff, describe, model_fingerprint, questions_sha256
from vlprune.bench.store import (
    AnswersFile,
    AnswersFileError,
    AnswersFileLocked,
    RunConfigMismatch,
    answer_key,
    sidecar_path,
)

CONFIG = {"model": {"id": "m", "weights_sha256": "abc"}, "dtype": "torch.float32", "method": "full", "keep": None,
          "options": {}, "generation": {"max_new_tokens": 8, "do_sample": False}, "data_dir": "/d",
          "questions_sha256": "q1"}


def rec(qid, text="yes", prompt="p", **extra):
    return {"question_id": qid, "prompt": prompt, "text": text, **extra}


def write_run(path: Path, records, config=CONFIG) -> None:
    with AnswersFile(path, config) as store:
        store.append(records)


# ----------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"generation": {"max_new_tokens": 16, "do_sample": False}}, "generation.max_new_tokens: 8 in the file, 16 now"),
        ({"dtype": "torch.bfloat16"}, 'dtype: "torch.float32" in the file, "torch.bfloat16" now'),
        ({"model": {"id": "m", "weights_sha256": "def"}}, 'model.weights_sha256: "abc" in the file, "def" now'),
        ({"options": {"seed": 1}}, "options.seed: (absent) in the file, 1 now"),
        ({"keep": 64, "method": "fastv"}, "keep: null in the file, 64 now"),
        ({"data_dir": "/other"}, 'data_dir: "/d" in the file, "/other" now'),
        ({"questions_sha256": "q2"}, 'questions_sha256: "q1" in the file, "q2" now'),
    ],
)
def test_resume_with_another_configuration_is_refused_saying_what_differs(tmp_path, change, expected):
    path = tmp_path / "a.jsonl"
    write_run(path, [rec(1)])
    with pytest.raises(RunConfigMismatch) as err:
        with AnswersFile(path, {**CONFIG, **change}):
            pass
    assert expected in str(err.value) and "--out-dir" in str(err.value)
    assert path.read_text().count("\n") == 1  # nothing written, nothing lost
    with AnswersFile(path, CONFIG) as store:  # the file's own configuration still resumes
        assert [r["question_id"] for r in store.records] == [1]


def test_configuration_of_an_empty_file_is_replaced_and_recorded_fields_are_not_compared(tmp_path):
    path = tmp_path / "a.jsonl"
    with AnswersFile(path, CONFIG, recorded={"batch_size": 8}):
        pass
    with AnswersFile(path, {**CONFIG, "keep": 3}) as store:  # no answers yet: nothing to mix
        store.append([rec(1)])
    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar["config"]["keep"] == 3 and sidecar["recorded"] == {}
    with AnswersFile(path, {**CONFIG, "keep": 3}, recorded={"batch_size": 1}) as store:
        assert len(store.records) == 1
    assert config_diff({"a": {"b": 1}}, {"a": {"b": 1}}) == []


def test_files_without_a_configuration_or_with_foreign_lines_are_refused_clearly(tmp_path):
    legacy = tmp_path / "legacy.jsonl"
    legacy.write_text(json.dumps({**rec(1), "_key": "[1]"}) + "\n")  # written before configurations existed
    with pytest.raises(AnswersFileError, match="no readable run configuration.*move the file away"):
        with AnswersFile(legacy, CONFIG):
            pass
    path = tmp_path / "a.jsonl"
    write_run(path, [rec(1), rec(2)])
    lines = path.read_text().splitlines()
    for bad, why in [(json.dumps(rec(3)), "not written by this run configuration"),  # no _run, no _key
                     ("{not json", "is not JSON"),
                     (json.dumps({"question_id": 3, "text": 5, "_run": "x"}), "text is a number")]:
        path.write_text("\n".join([lines[0], bad, lines[1]]) + "\n")
        with pytest.raises(AnswersFileError, match=f"line 2 of .*{why}.*delete line 2"):
            with AnswersFile(path, CONFIG):
                pass


# ----------------------------------------------------------------------------- torn lines, repeats, lock


def test_cut_off_last_line_is_removed_on_open_and_nothing_else_is_lost(tmp_path):
    path = tmp_path / "a.jsonl"
    write_run(path, [rec(1), rec(2)])
    whole = path.read_bytes()
    with open(path, "ab") as handle:
        handle.write(whole[: len(whole) // 3])  # a write cut off by a crash
    with AnswersFile(path, CONFIG) as store:
        assert store.repaired_bytes == len(whole) // 3
        assert [r["question_id"] for r in store.records] == [1, 2]
        keys = [answer_key(rec(q)) for q in (1, 2, 3)]
        assert [r and r["question_id"] for r in store.match(keys)] == [1, 2, None]
        store.append([rec(3)])  # the next record starts on its own line
    assert [json.loads(line)["question_id"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_repeated_questions_and_passes_are_answered_once_each(tmp_path):
    path = tmp_path / "a.jsonl"
    write_run(path, [rec("img1", "a"), rec(7, "A", round_id=0), rec(7, "B", round_id=1)])
    keys = [answer_key(r) for r in (rec("img1"), rec("img1"), rec(7, round_id=0), rec(7, round_id=1))]
    with AnswersFile(path, CONFIG) as store:
        got = store.match(keys)
    assert [g and g["text"] for g in got] == ["a", None, "A", "B"]  # the repeat of img1 is still to answer


def test_second_writer_is_refused_while_the_first_holds_the_file(tmp_path):
    path = tmp_path / "a.jsonl"
    with AnswersFile(path, CONFIG):
        with pytest.raises(AnswersFileLocked, match=f"pid {os.getpid()}.*another --out-dir"):
            with AnswersFile(path, CONFIG):
                pass
    with AnswersFile(path, CONFIG):  # released on close
        pass
    with pytest.raises(AnswersFileError, match="not open"):
        AnswersFile(path, CONFIG).append([rec(1)])


def test_run_config_parts(tmp_path, saved_tiny):  # noqa: F811
    from vlprune.evaluation import load_model

    loaded = load_model(str(saved_tiny))
    on_disk = model_fingerprint(loaded.model, str(saved_tiny))
    assert on_disk["id"] == str(saved_tiny) and len(on_disk["weights_sha256"]) == 64
    in_memory = model_fingerprint(loaded.model, "no-such-dir")
    assert in_memory["weights_sha256"] == model_fingerprint(loaded.model, "x")["weights_sha256"]
    assert describe({"clip": str(saved_tiny), "ratio": 0.5, "processor": loaded.processor}) == {
        "clip": {"path": str(saved_tiny), "weights_sha256": on_disk["weights_sha256"]},
        "processor": f"<{type(loaded.processor).__name__}>", "ratio": 0.5}
    from vlprune.bench.readers import BenchItem

    from vlprune.bench.readers import ImageRef

    items = [BenchItem("pope", 1, "p", None)]
    assert questions_sha256(items) != questions_sha256([BenchItem("pope", 1, "q", None)])
    relative, absolute = (BenchItem("pope", 1, "p", ImageRef(path=p)) for p in (Path("x.jpg"), Path.cwd() / "x.jpg"))
    assert questions_sha256([relative]) == questions_sha256([absolute])


# ----------------------------------------------------------------------------- the runner end to end


def make_pope(root: Path, n: int) -> Path:
    data = root / "pope"
    (data / "val2014").mkdir(parents=True)
    (data / "coco").mkdir()
    qs, labels = [], []
    for i in range(n):
        name = f"COCO_val2014_{i:012d}.jpg"
        Image.new("RGB", (16, 16), (i * 30 % 256, 10, 200)).save(data / "val2014" / name)
        qs.append({"question_id": i, "image": name, "text": "Is there a circle in the image?", "category": "random"})
        labels.append({"question_id": i, "image": name, "label": "yes" if i % 2 else "no"})
    (data / "llava_pope_test.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
    (data / "coco" / "coco_pope_random.json").write_text("".join(json.dumps(r) + "\n" for r in labels))
    return data


def run(saved, data, out, **kw):
    from vlprune.bench.runner import run_benchmark
    from vlprune.evaluation import load_model

    return run_benchmark(load_model(str(saved)), f"pope:{data}", ["random"], [4], out, batch_size=1,
                         max_new_tokens=kw.pop("max_new_tokens", 2), **kw)


def answers_of(path: Path) -> list[tuple]:
    return [(r["question_id"], r["text"]) for r in map(json.loads, path.read_text().splitlines())]


KILLED_RUN = textwrap.dedent("""
    import os, pathlib, sys, time
    import torch
    torch.set_num_threads(1)
    from vlprune.bench import store
    from vlprune.bench.runner import run_benchmark
    from vlprune.evaluation import load_model

    model_dir, data, out, flag = sys.argv[1:]
    real_write, writes = os.write, []

    def cut_write(fd, payload):  # the 7th answer write stops half way, then the process hangs there
        if b'"_run"' in bytes(payload):
            writes.append(1)
            if len(writes) == 7:
                real_write(fd, bytes(payload)[: len(payload) // 2])
                pathlib.Path(flag).write_text(str(os.getpid()))
                time.sleep(600)
        return real_write(fd, payload)

    store.os.write = cut_write
    run_benchmark(load_model(model_dir), f"pope:{data}", ["random"], [4], pathlib.Path(out), batch_size=1,
                  max_new_tokens=2)
""")


def test_kill_9_mid_write_then_rerun_leaves_answers_and_score_right(tmp_path, saved_tiny):  # noqa: F811
    """A real `kill -9` while an answer is half written: the lock holds a second writer off while the run
    lives, the rerun repairs the torn line and answers only what is missing, and the score is the clean one."""
    data = make_pope(tmp_path, 5)
    out, flag = tmp_path / "answers", tmp_path / "flag"
    script = tmp_path / "killed_run.py"
    script.write_text(KILLED_RUN)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, str(script), str(saved_tiny), str(data), str(out), str(flag)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while not flag.exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline, "the killed run never reached its 7th write"
            time.sleep(0.1)
        torn = out / "pope" / saved_tiny.name / "random-4.jsonl"
        first, fragment = torn.read_bytes().split(b"\n")  # full: 5 answers; random-4: 1 + half of the 2nd
        assert json.loads(first)["question_id"] == 0 and fragment and b"\n" not in fragment
        with pytest.raises(AnswersFileLocked, match=f"pid {proc.pid}"):
            with AnswersFile(torn, CONFIG):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(answers_of(out / "pope" / saved_tiny.name / "full.jsonl")) == 5

    with pytest.warns(UserWarning, match="cut-off last line"):
        resumed = run(saved_tiny, data, out)
    clean = run(saved_tiny, data, tmp_path / "clean")
    for label in ("full", "random-4"):
        got = answers_of(out / "pope" / saved_tiny.name / f"{label}.jsonl")
        assert got == answers_of(tmp_path / "clean" / "pope" / saved_tiny.name / f"{label}.jsonl")
        assert [q for q, _ in got] == list(range(5))  # each question exactly once, in order
    assert resumed["full"]["score"] == clean["full"]["score"]
    assert resumed["results"][0]["score"] == clean["results"][0]["score"]

    # a changed setting: refused with what differs, and the answers and score stay right
    with pytest.raises(RunConfigMismatch, match="generation.max_new_tokens: 2 in the file, 3 now"):
        run(saved_tiny, data, out, max_new_tokens=3)
    assert run(saved_tiny, data, out)["full"]["score"] == clean["full"]["score"]


def test_eval_cli_refuses_a_changed_setting_with_a_message(tmp_path, saved_tiny):  # noqa: F811
    from typer.testing import CliRunner

    from vlprune.cli import app

    data = make_pope(tmp_path, 2)
    args = ["eval", "--model", str(saved_tiny), "--bench", f"pope:{data}", "--methods", "random", "--keep", "4",
            "--batch-size", "2", "--out-dir", str(tmp_path / "out")]
    first = CliRunner().invoke(app, [*args, "--max-new-tokens", "2"])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(app, [*args, "--max-new-tokens", "3"])
    assert again.exit_code == 2 and "Traceback" not in again.output
    assert "generation.max_new_tokens: 2 in the file, 3 now" in again.output


def test_runner_answers_and_scores_a_question_asked_twice(tmp_path, saved_tiny):  # noqa: F811
    """TextVQA: one image asked the same question twice is two answer lines and two scored predictions."""
    from vlprune.bench.runner import run_benchmark
    from vlprune.evaluation import load_model

    d = tmp_path / "textvqa"
    (d / "train_images").mkdir(parents=True)
    Image.new("RGB", (16, 16), (200, 10, 10)).save(d / "train_images" / "img1.jpg")
    prompt = "what is written?\nAnswer the question using a single word or phrase."
    (d / "TextVQA_0.5.1_val.json").write_text(json.dumps({"data": [
        {"question_id": 0, "image_id": "img1", "question": "What is written?", "answers": ["stop"] * 10}]}))
    (d / "llava_textvqa_val_v051_ocr.jsonl").write_text(
        "".join(json.dumps({"question_id": "img1", "image": "img1.jpg", "text": prompt}) + "\n" for _ in range(2)))
    out = tmp_path / "out"
    report = run_benchmark(load_model(str(saved_tiny)), f"textvqa:{d}", [], [], out, batch_size=1, max_new_tokens=2)
    assert report["full"]["n_scored"] == 2 and report["full"]["n_missing"] == 0
    assert len(answers_of(out / "textvqa" / saved_tiny.name / "full.jsonl")) == 2
