"""The real lmms-eval (0.7.3) runs ``--model vlprune`` on a local task pair (generate_until + multiple_choice),
in one process and under ``accelerate launch --num_processes 2``. Needs ``make env-lmms`` (.venv-lmms)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from toy_task import EXPECTED_SCORE, KEEP

GEN, MC = "vlprune_toy_gen", "vlprune_toy_mc"
N_DOCS, N_CHOICES = 5, 4


def _answers(run) -> list[str]:
    return [run.samples[GEN][i]["filtered_resps"] for i in range(N_DOCS)]


def _nll(run) -> list[float]:
    """Every choice's mean NLL as lmms-eval logged it, doc by doc."""
    return [float(pair[0]) for i in range(N_DOCS) for pair in run.samples[MC][i]["filtered_resps"]]


def _flat(rows: list[list[float]]) -> list[float]:
    return [x for row in rows for x in row]


def test_lmms_eval_registry_resolves_vlprune_without_building_it():
    """The entry point hands lmms-eval a manifest; the model class is imported only when asked for."""
    from lmms_eval.models import MODEL_REGISTRY_V2, get_model

    from vlprune.lmms_plugin import VlpruneLMM

    assert MODEL_REGISTRY_V2.get_manifest("vlprune").simple_class_path == "vlprune.lmms_plugin.VlpruneLMM"
    assert get_model("vlprune") is VlpruneLMM


def test_legacy_plugin_variable_finds_the_same_class():
    code = "from lmms_eval.models import get_model; print(get_model('vlprune').__module__)"
    env = dict(os.environ, LMMS_EVAL_PLUGINS="vlprune")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "vlprune.lmms_plugin"


@pytest.mark.parametrize("batch_size", [1, 3])
def test_method_none_answers_as_the_unpruned_model(toy, run_lmms_eval, batch_size):
    _, _, ref = toy
    run = run_lmms_eval("none", batch_size)
    assert _answers(run) == ref.answers
    assert _nll(run) == pytest.approx(_flat(ref.nll), abs=1e-4)
    assert run.score(GEN, "exact_match") == pytest.approx(EXPECTED_SCORE)
    assert run.score(MC, "acc") == pytest.approx(EXPECTED_SCORE)
    counts = [run.samples[GEN][i]["token_counts"][0] for i in range(N_DOCS)]
    assert all(c["input_tokens"] > 16 and 1 <= c["output_tokens"] <= 4 for c in counts)  # 16 image tokens + text
    assert run.kept == []  # nothing pruned, nothing to report


@pytest.mark.parametrize("method", ["desap", "fastv"])
def test_pruning_methods_run_and_report_kept_counts(toy, run_lmms_eval, method):
    _, _, ref = toy
    run = run_lmms_eval(method, 2)
    assert all(r["method"] == method and r["kept"] == [KEEP] and r["of"] == [16] for r in run.kept)
    assert sorted(r["doc_id"] for r in run.kept if r["task"] == GEN) == list(range(N_DOCS))
    assert sorted(r["doc_id"] for r in run.kept if r["task"] == MC) == sorted(list(range(N_DOCS)) * N_CHOICES)
    assert f"{method} kept {KEEP * N_DOCS} of {16 * N_DOCS} visual tokens" in run.log
    # the pruned model scored what it saw: its choice NLLs are not the unpruned model's
    assert max(abs(a - b) for a, b in zip(_nll(run), _flat(ref.nll))) > 1e-3
    assert all(isinstance(a, str) for a in _answers(run))
    assert 0.0 <= run.score(GEN, "exact_match") <= 1.0 and 0.0 <= run.score(MC, "acc") <= 1.0


def test_two_processes_score_as_one(run_lmms_eval):
    """``accelerate launch --multi_gpu --num_processes 2`` on the CPU: lmms-eval shards the docs over two ranks,
    each plugin answers its share, lmms-eval gathers: the same answers and scores as one process."""
    one, two = run_lmms_eval("desap", 2, 1), run_lmms_eval("desap", 2, 2)
    assert [f.name for f in two.kept_files] == ["kept.jsonl", "kept.jsonl.rank1"]  # two ranks really ran
    assert "rank 1]: desap kept" in two.log
    rows = [[json.loads(line) for line in f.read_text().splitlines()] for f in two.kept_files]
    per_rank = [{r["doc_id"] for r in rank if r["task"] == GEN} for rank in rows]
    assert all(per_rank) and set().union(*per_rank) == set(range(N_DOCS))  # each rank answered a share
    assert sorted(two.samples[GEN]) == list(range(N_DOCS)) and sorted(two.samples[MC]) == list(range(N_DOCS))
    assert _answers(two) == _answers(one)
    assert _nll(two) == pytest.approx(_nll(one), abs=1e-4)
    for task, metric in ((GEN, "exact_match"), (MC, "acc")):
        assert two.score(task, metric) == pytest.approx(one.score(task, metric))
    assert two.results["n-samples"] == one.results["n-samples"]


def test_bad_model_args_name_the_fix(toy):
    from vlprune.lmms_plugin import VlpruneLMM

    model_dir = str(toy[0])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device=cpu"):
            VlpruneLMM(pretrained=model_dir, device="cuda")
    with pytest.raises(ValueError, match="batch_size=auto is not supported"):
        VlpruneLMM(pretrained=model_dir, device="cpu", batch_size="auto")
    with pytest.raises(ValueError, match="unknown dtype 'fp8'; use one of"):
        VlpruneLMM(pretrained=model_dir, device="cpu", dtype="fp8")
    with pytest.raises(ValueError, match="unknown pruning method 'nope'"):
        VlpruneLMM(pretrained=model_dir, device="cpu", dtype="float32", method="nope")
    with pytest.raises(ValueError, match="keep must be a whole number"):
        VlpruneLMM(pretrained=model_dir, device="cpu", dtype="float32", keep="8.5")
    with pytest.raises(ValueError, match="fastv has no option 'layers'"):
        VlpruneLMM(pretrained=model_dir, device="cpu", dtype="float32", method="fastv", layers="2")
    with pytest.raises(ValueError, match="takes no method options"):
        VlpruneLMM(pretrained=model_dir, device="cpu", dtype="float32", method="none", layer=2)


def test_kept_log_holds_this_runs_lines_only(toy, tmp_path):
    from vlprune.lmms_plugin import VlpruneLMM

    log = tmp_path / "kept.jsonl"
    log.write_text('{"from": "an earlier run"}\n')
    VlpruneLMM(pretrained=str(toy[0]), device="cpu", dtype="float32", method="random", keep=KEEP, kept_log=str(log))
    assert log.read_text() == ""


def test_text_only_requests_beside_image_requests(toy):
    """A document without an image (ScienceQA has them) is answered as text, in a batch with image requests or
    alone; only image requests get kept counts."""
    from PIL import Image

    from vlprune.lmms_plugin import VlpruneLMM

    lm = VlpruneLMM(pretrained=str(toy[0]), device="cpu", dtype="float32", method="desap", keep=KEEP, batch_size=2)
    docs = {0: {"im": Image.new("RGB", (16, 16), (200, 30, 30))}, 1: {"im": None}, 2: {"im": None}}
    lm.task_dict = {"t": {"test": docs}}
    gen = {"until": ["?"], "max_new_tokens": 3}
    reqs = [SimpleNamespace(args=("what color is the circle ?", dict(gen), lambda d: [d["im"]], i, "t", "test"))
            for i in (0, 1, 2)]
    out = lm.generate_until(reqs)
    assert len(out) == 3 and all(isinstance(o.text, str) for o in out)
    assert [(r["doc_id"], r["kept"]) for r in lm.kept_records] == [(0, [KEEP]), (1, []), (2, [])]


def test_environment_is_the_locked_one():
    """.venv-lmms holds lmms-eval 0.7.3 and all it needs but torchvision and timm (requirements/lmms.txt)."""
    from importlib.metadata import version

    assert version("lmms_eval") == "0.7.3"
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=300)
    assert sorted(line for line in out.stdout.splitlines() if line.strip()) == [
        "lmms-eval 0.7.3 requires timm, which is not installed.",
        "lmms-eval 0.7.3 requires torchvision, which is not installed.",
    ]
