"""The testbed from Python (load, the example script), its results file (written per row, resumable), and the
bundled checkpoint that `testbed build` never overwrites unasked."""
from __future__ import annotations

import json
import os
import runpy
from pathlib import Path

import pytest
from typer.testing import CliRunner

import vlprune
from vlprune import testbed
from vlprune.cli import app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bed():
    return testbed.load(n=2)


def test_load_applies_the_checkpoint_defaults(bed):
    model, processor, samples = bed
    s = samples[0]
    assert s.prompt and s.image.size == (96, 96)
    inputs = processor(images=s.image, text=s.prompt, return_tensors="pt")
    with vlprune.pruned(model, "fastv", 16):  # FastV's default layer 2 does not exist in the 2-layer LLM
        assert vlprune.api._state(model).config.layer == 1
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
    with pytest.raises(ValueError, match="layer"):  # explicit options still win over the checkpoint's
        vlprune.apply(model, "fastv", 16, layer=2)
    vlprune.remove(model)


def test_without_the_defaults_fastv_fails(bed):
    """What the defaults fix: the bare checkpoint has no FastV layer 2."""
    from transformers import AutoModelForImageTextToText

    bare = AutoModelForImageTextToText.from_pretrained(str(testbed.checkpoint_dir()))
    with pytest.raises(ValueError, match="layer"):
        vlprune.apply(bare, "fastv", 16)


def test_kept_token_counts_match_the_documented_semantics(bed):
    model, processor, samples = bed
    inputs = processor(images=samples[0].image, text=samples[0].prompt, return_tensors="pt")
    counts = {}
    for name in ("visionzip", "vispruner", "random"):
        with vlprune.pruned(model, name, 16):
            model(**inputs)
        counts[name] = len(vlprune.last_selection(model).indices[0])  # readable after the block
    assert counts == {"visionzip": 15, "vispruner": 16, "random": 16}
    assert "keep-1" in vlprune.methods()["visionzip"].kept and "keep-1" in vlprune.KeptTokens.__doc__


def test_example_script_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(ROOT / "examples" / "testbed_quickstart.py"), run_name="__main__")
    assert "truth:" in capsys.readouterr().out and (tmp_path / "kept.png").stat().st_size > 1000


# -- results file: per row, resumable ----------------------------------------------------------------------
def _eval(path, *extra):
    return CliRunner().invoke(app, ["eval", "--limit", "4", "--batch-size", "4", "--json", str(path), *extra])


def test_eval_json_is_written_per_row_and_resumed(tmp_path, monkeypatch):
    import vlprune.evaluation as ev

    out = tmp_path / "r.json"
    res = _eval(out, "--methods", "random,vispruner", "--keep", "16")
    assert res.exit_code == 0, res.output
    first = json.loads(out.read_text())
    assert first["complete"] and [r["method"] for r in first["results"]] == ["random", "vispruner"]

    real, calls = ev.answer, []

    def counting(loaded, samples, *a, **k):
        calls.append(vlprune.api._state(loaded.model).spec.name if vlprune.api._state(loaded.model) else "full")
        return real(loaded, samples, *a, **k)

    monkeypatch.setattr(ev, "answer", counting)
    res = _eval(out, "--methods", "random,vispruner,visionzip", "--keep", "16")
    assert res.exit_code == 0, res.output
    assert calls == ["visionzip"]  # full, random and vispruner came from the file
    again = json.loads(out.read_text())
    assert again["results"][:2] == first["results"][:2] and again["full"] == first["full"]

    calls.clear()  # another option value: that row is recomputed, not reused
    assert _eval(out, "--methods", "random", "--keep", "16", "--set", "random.seed=5").exit_code == 0
    assert calls == ["random"]


def test_eval_refuses_a_file_of_another_configuration(tmp_path):
    out = tmp_path / "r.json"
    assert _eval(out, "--methods", "random", "--keep", "16").exit_code == 0
    res = _eval(out, "--methods", "random", "--keep", "16", "--split", "val")
    assert res.exit_code == 2 and "split" in res.output and "--fresh" in res.output and "Traceback" not in res.output
    assert _eval(out, "--methods", "random", "--keep", "16", "--split", "val", "--fresh").exit_code == 0
    out.write_text(json.dumps({"results": []}))  # a results file from before resumable runs
    res = _eval(out, "--methods", "random", "--keep", "16")
    assert res.exit_code == 2 and "without a run configuration" in res.output


def _die_on(monkeypatch, method: str) -> None:
    """Answering with ``method`` applied raises, as a run killed there would stop."""
    import vlprune.evaluation as ev

    real = ev.answer

    def dying(loaded, samples, *a, **k):
        state = vlprune.api._state(loaded.model)
        if state is not None and state.spec.name == method:
            raise RuntimeError("killed")
        return real(loaded, samples, *a, **k)

    monkeypatch.setattr(ev, "answer", dying)


def test_eval_keeps_finished_rows_when_a_later_one_dies(tmp_path, monkeypatch):
    _die_on(monkeypatch, "vispruner")
    out = tmp_path / "r.json"
    res = _eval(out, "--methods", "random,vispruner", "--keep", "16")
    assert res.exit_code == 2 and "killed" in res.output and "Traceback" not in res.output
    kept = json.loads(out.read_text())
    assert not kept["complete"] and [r["method"] for r in kept["results"]] == ["random"]


# -- the bundled checkpoint --------------------------------------------------------------------------------
def test_build_never_overwrites_the_bundled_checkpoint_unasked(tmp_path):
    from vlprune.testbed.train import check_out_dir

    weights = testbed.checkpoint_dir() / "model.safetensors"
    before = weights.stat().st_mtime_ns
    for args in (["testbed", "build"], ["testbed", "build", "--out", str(testbed.checkpoint_dir())]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and "--replace-bundled" in res.output and "Traceback" not in res.output
    assert weights.stat().st_mtime_ns == before
    assert check_out_dir(tmp_path, False) == tmp_path
    assert check_out_dir(None, True) == testbed.checkpoint_dir()
    assert os.access(weights, os.R_OK)


def test_show_keeps_the_panels_drawn_before_a_failure(tmp_path, monkeypatch):
    from PIL import Image

    _die_on(monkeypatch, "vispruner")
    out = tmp_path / "kept.png"
    res = CliRunner().invoke(app, ["show", "--methods", "random,vispruner", "-o", str(out)])
    assert res.exit_code == 2 and "killed" in res.output
    assert Image.open(out).width == 384  # the random panel, with its legend
