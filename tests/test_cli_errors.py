"""Every CLI error: one or two lines with the fix, exit code 2, no traceback (``--debug`` shows it); every method,
option and budget checked before any work; typed option parsing (issue 18 item 10)."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from vlprune.cli import app

BAD = {
    "unknown preset": (["flops", "--model", "gpt2"], "choose one of"),
    "unknown method": (["eval", "--methods", "random,desapp"], "desapp"),
    "fractional budget": (["eval", "--keep", "16.7"], "whole number"),
    "typed --set": (["eval", "--set", "random.seed=abc"], "random.seed"),
    "unknown option": (["eval", "--set", "random.sed=1"], "seed"),
    "malformed --set": (["eval", "--set", "seed=1"], "METHOD.OPTION=VALUE"),
    "unknown dtype": (["eval", "--dtype", "fp8"], "bfloat16"),
    "zero batch": (["eval", "--batch-size", "0"], ">= 1"),
    "no GPU": (["eval", "--device", "cuda:7"] if not __import__("torch").cuda.is_available() else
               ["eval", "--device", "tpu"], "--device"),
    "missing folder": (["eval", "--model", "/no/such/folder"], "no such folder"),
    "bench without data": (["eval", "--bench", "pope"], "NAME:DIR"),
    "unknown benchmark": (["eval", "--bench", "popx:/tmp"], "unknown benchmark"),
    "show method": (["show", "--method", "nope"], "nope"),
    "show picture type": (["show", "-o", "kept.xyz"], ".png"),
    "bench method": (["bench", "--model", "tiny", "--methods", "none,fastvv"], "fastvv"),
    "bench budget": (["bench", "--model", "tiny", "--keep", "8.5"], "whole number"),
    "build without --out": (["testbed", "build"], "--replace-bundled"),
}


def _check_error(res, needle: str) -> None:
    text = res.output
    assert res.exit_code == 2, text
    assert isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in text and needle in text, text
    assert len([line for line in text.splitlines() if line.strip()]) <= 2, text


@pytest.mark.parametrize("args,needle", list(BAD.values()), ids=list(BAD))
def test_cli_error_is_one_line_with_the_fix(args, needle):
    _check_error(CliRunner().invoke(app, args), needle)


def test_budget_beyond_the_model_fails_before_any_answer(monkeypatch):
    import vlprune.evaluation as ev

    calls = []
    monkeypatch.setattr(ev, "answer", lambda *a, **k: calls.append(1) or [])
    res = CliRunner().invoke(app, ["eval", "--methods", "random,fastv", "--keep", "16,999", "--limit", "2"])
    _check_error(res, "keep=999")
    assert calls == []  # not even the unpruned pass ran


def test_option_beyond_the_model_depth_fails_before_any_answer(monkeypatch):
    import vlprune.evaluation as ev

    monkeypatch.setattr(ev, "answer", lambda *a, **k: pytest.fail("generated before validating"))
    res = CliRunner().invoke(app, ["eval", "--methods", "random,fastv", "--set", "fastv.layer=5", "--limit", "2"])
    _check_error(res, "layer")


def test_debug_shows_the_traceback():
    res = CliRunner().invoke(app, ["--debug", "flops", "--model", "gpt2"])
    assert isinstance(res.exception, ValueError) and "gpt2" in str(res.exception)


def test_console_script_prints_no_traceback():
    """The real entry point, as a user runs it: stderr holds one line, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "vlprune.cli", "flops", "--model", "gpt2"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: unknown model preset 'gpt2'")


def test_offline_hub_id_fails_at_once_naming_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    res = CliRunner().invoke(app, ["eval", "--model", "nobody-xyz/not-a-model"])
    _check_error(res, "HF_HUB_OFFLINE")
    assert "local folder" in res.output and time.perf_counter() - t0 < 10


def test_unreachable_hub_fails_at_once(monkeypatch):
    import vlprune.hub as hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ConnectionError, match="local folder"):
        hub.check_source("nobody-xyz/not-a-model")
    with pytest.raises(FileNotFoundError, match="config.json"):
        hub.check_source(str(hub.Path(__file__).parent))  # a folder that is no checkpoint


# -- typed options (issue 18 item 10) ----------------------------------------------------------------------
def test_set_values_are_typed_by_the_method_config():
    from vlprune.validate import parse_set

    assert parse_set(["random.seed=3", "desap.sign=-1", "desap.merge=false"]) == {
        "random": {"seed": 3}, "desap": {"sign": -1.0, "merge": False}}
    drop = parse_set(["visiondrop.layer_fractions=[0.5]", "visiondrop.stage_ratios=1.5,0.6",
                      "visiondrop.contextual_ratios=[0.125, 0.15]"])["visiondrop"]
    assert drop == {"layer_fractions": (0.5,), "stage_ratios": (1.5, 0.6), "contextual_ratios": (0.125, 0.15)}
    with pytest.raises(ValueError, match="stage_ratios needs one entry per segment"):
        parse_set(["visiondrop.layer_fractions=[0.5]"])  # checked together with the other options
    for bad, needle in [("random.seed=abc", "whole number"), ("random.seed=1.5", "whole number"),
                        ("desap.attention=zz", "one of"), ("desap.merge=maybe", "true or false"),
                        ("visionzip.contextual_ratio=2", "contextual_ratio"), ("nomethod.x=1", "unknown pruning")]:
        with pytest.raises(ValueError, match=needle):
            parse_set([bad])


def test_plugin_arg_parsers():
    from vlprune.lmms_plugin_args import parse_dtype, parse_int

    assert parse_int("16", "keep") == 16 and parse_dtype("bf16") == parse_dtype("bfloat16")
    with pytest.raises(ValueError, match="keep must be a whole number, got '16.7'"):
        parse_int("16.7", "keep")
    with pytest.raises(ValueError, match="unknown dtype 'bfloat'; use one of"):
        parse_dtype("bfloat")


@pytest.mark.parametrize("kwargs,needle", [({"keep": "16.7"}, "whole number"), ({"dtype": "bfloat"}, "dtype"),
                                           ({"seed": "abc"}, "random.seed")])
def test_plugin_refuses_bad_model_args(monkeypatch, kwargs, needle):
    import types

    for name in ("lmms_eval", "lmms_eval.api", "lmms_eval.api.model", "lmms_eval.api.registry"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["lmms_eval.api.model"].lmms = type("lmms", (), {"__init__": lambda self: None})
    sys.modules["lmms_eval.api.registry"].register_model = lambda *n: (lambda cls: cls)
    monkeypatch.delitem(sys.modules, "vlprune.lmms_plugin", raising=False)
    import vlprune.evaluation as ev
    from vlprune.lmms_plugin import VlpruneLMM

    monkeypatch.setattr(ev, "load_model", lambda *a, **k: pytest.fail("loaded before checking the arguments"))
    with pytest.raises(ValueError, match=needle):
        VlpruneLMM(pretrained="x", method="random", device="cpu", **kwargs)
