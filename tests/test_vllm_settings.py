"""The vLLM plugin's deployment settings (no vLLM needed): what --hf-overrides accepts and the errors it gives."""
from __future__ import annotations

import re

import pytest

from vlprune.vllm_plugin import hf_overrides, mm_processor_kwargs, parse_settings, request_settings


def test_encoder_methods_parse_with_their_options():
    s = parse_settings({"method": "VisionZip", "keep": 16, "options": {"contextual_ratio": 0.25}})
    assert (s.method, s.keep, s.prunes, s.tokens(64), s.tokens(8)) == ("visionzip", 16, True, 16, 8)
    assert s.config().contextual_ratio == 0.25


@pytest.mark.parametrize("raw", [None, {"method": "none"}, {"method": "full", "keep": 3}])
def test_unpruned(raw):
    s = parse_settings(raw)
    assert not s.prunes and s.tokens(64) == 64


@pytest.mark.parametrize("raw,error,words", [
    ({"method": "fastv", "keep": 16}, ValueError, "only encoder-side methods"),
    ({"method": "visiondrop", "keep": 16}, ValueError, "only encoder-side methods"),
    ({"method": "desap", "keep": 16}, ValueError, 'add "clip": "openai/clip-vit-large-patch14-336"'),
    ({"method": "desap", "keep": 16, "clip": 3}, TypeError, "hub id or a local path"),
    ({"method": "nope", "keep": 16}, ValueError, "unknown pruning method"),
    ({"method": "random"}, ValueError, '"keep" must be a positive int'),
    ({"method": "random", "keep": 0}, ValueError, '"keep" must be a positive int'),
    ({"method": "random", "keep": 16, "options": {"sed": 1}}, ValueError, "its options are ['seed']"),
    ({"method": "visionzip", "keep": 16, "options": {"contextual_ratio": 2}}, ValueError, "contextual_ratio"),
    ({"method": "random", "kep": 16}, ValueError, "allowed: method, keep, options, clip, budget, newlines"),
    ({"method": "random", "keep": 16, "newlines": "rows"}, ValueError, 'use "all"'),
    ({"method": "random", "keep": 16, "budget": "image"}, ValueError, '"global" (keep per image)'),
    ("random", TypeError, "JSON object"),
])
def test_bad_settings_name_the_fix(raw, error, words):
    with pytest.raises(error) as info:
        parse_settings(raw)
    assert words in str(info.value)


def test_keep_beyond_the_tower_is_refused():
    with pytest.raises(ValueError, match="choose 1 <= keep <= 64"):
        parse_settings({"method": "random", "keep": 65}).check(64)


def test_hf_overrides_names_the_architecture():
    assert hf_overrides("random", 16, seed=3) == {
        "architectures": ["VlpruneLlavaForConditionalGeneration"],
        "vlprune": {"method": "random", "keep": 16, "options": {"seed": 3}},
    }
    with pytest.raises(ValueError, match="choose one of"):
        hf_overrides("random", 16, family="qwen2_5_vl")


def test_desap_with_clip_parses():
    s = parse_settings({"method": "desap", "keep": 16, "clip": "openai/clip-vit-large-patch14-336"})
    assert s.needs_question and s.clip == "openai/clip-vit-large-patch14-336"
    assert hf_overrides("desap", 16, clip="c")["vlprune"] == {"method": "desap", "keep": 16, "options": {}, "clip": "c"}


DEPLOYED = parse_settings({"method": "visionzip", "keep": 16, "clip": "c"})


def test_request_settings_override_the_deployment():
    assert request_settings(None, DEPLOYED, 64) is DEPLOYED
    s = request_settings({"method": "desap", "keep": 8, "options": {"task_ratio": 0.25}}, DEPLOYED, 64)
    assert (s.method, s.keep, s.config().task_ratio, s.clip) == ("desap", 8, 0.25, "c")
    assert request_settings(s.key(), DEPLOYED, 64).key() == s.key()  # the canonical key the processor writes back
    assert not request_settings({"method": "none"}, DEPLOYED, 64).prunes
    assert mm_processor_kwargs("random", 8, seed=1) == {"vlprune": {"method": "random", "keep": 8, "options": {"seed": 1}}}


@pytest.mark.parametrize("raw,deployed,words", [
    ({"method": "random", "keep": 65}, DEPLOYED, "choose 1 <= keep <= 64"),
    ({"method": "random", "keep": 8, "clip": "c"}, DEPLOYED, "allowed: method, keep, options"),
    ({"method": "desap", "keep": 8}, parse_settings({"method": "random", "keep": 16}), '"clip"'),
    ({"method": "random", "keep": 8}, parse_settings(None), "needs an engine started with a pruning method"),
])
def test_bad_request_settings_name_the_fix(raw, deployed, words):
    with pytest.raises(ValueError) as info:
        request_settings(raw, deployed, 64)
    assert words in str(info.value)


@pytest.mark.parametrize("args,words", [
    (["--methods", "fastv"], "only encoder-side methods"),
    (["--methods", "random", "--keep", "16", "--rate", "0"], "--rate > 0"),
    (["--methods", "desap", "--keep", "16"], "vLLM is not installed here"),  # the core environment has no vLLM
])
def test_bench_engine_vllm_names_the_fix(args, words):
    """``vlprune bench --engine vllm`` refuses what cannot run before any engine or model is built."""
    pytest.importorskip("typer")
    if "not installed" in words and __import__("importlib").util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    from typer.testing import CliRunner

    from vlprune.cli import app

    result = CliRunner().invoke(app, ["bench", "--engine", "vllm", "--model", "tiny", *args])
    assert result.exit_code != 0
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())  # rich's error box, wrapped
    assert words in text, result.output


def test_family_limits_name_the_reason():
    from vlprune.vllm_plugin.settings import check_family

    check_family(parse_settings({"method": "flowcut", "keep": 16}), "llava")
    check_family(parse_settings({"method": "hired", "keep": 16}), "llava_next")
    with pytest.raises(ValueError, match="flowcut runs on llava only under vLLM, not llava_next: on llava_next it "
                                         "also prunes inside the LLM"):
        check_family(parse_settings({"method": "flowcut", "keep": 16}), "llava_next")
    with pytest.raises(ValueError, match="hired runs on llava_next only, not llava"):
        check_family(parse_settings({"method": "hired", "keep": 16}), "llava")
