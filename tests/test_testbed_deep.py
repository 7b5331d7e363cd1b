"""`testbed build --llm-layers/--clip-from/--llm-init`: a deeper testbed LLM started from a built one."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from vlprune.testbed.deepen import deepen_from
from vlprune.testbed import train
from vlprune.testbed.train import make_clip, make_llava, make_tokenizer, method_options

Spec = train.TestbedSpec

TINY = dict(patch_size=8, vision_width=32, vision_layers=2, vision_heads=2, text_width=32, text_layers=1,
            text_heads=2, projection_dim=16, llm_width=32, llm_layers=2, llm_heads=2, llm_ffn=64,
            clip_batch=8, llava_batch=4, warmup=2, pool=48, val_probe=0, grid=4)


def _llava(layers: int, seed: int, **over):
    torch.manual_seed(seed)
    spec = Spec(**{**TINY, "llm_layers": layers, **over})
    tok = make_tokenizer()
    clip = make_clip(spec, len(tok))
    return make_llava(spec, len(tok), clip.config.vision_config).eval()


def test_deepen_split_repeats_layers_and_splits_their_updates():
    src, new = _llava(2, 0), _llava(6, 1)
    info = deepen_from(new, src, "split")
    assert info == {"mode": "split", "layer_map": [0, 0, 0, 1, 1, 1], "scales": pytest.approx([1 / 3] * 6)}
    s_layers, n_layers = src.model.language_model.layers, new.model.language_model.layers
    for i, j in enumerate(info["layer_map"]):
        assert torch.equal(n_layers[i].self_attn.q_proj.weight, s_layers[j].self_attn.q_proj.weight)
        assert torch.equal(n_layers[i].mlp.up_proj.weight, s_layers[j].mlp.up_proj.weight)
        assert torch.allclose(n_layers[i].self_attn.o_proj.weight * 3, s_layers[j].self_attn.o_proj.weight)
        assert torch.allclose(n_layers[i].mlp.down_proj.weight * 3, s_layers[j].mlp.down_proj.weight)
    assert torch.equal(new.lm_head.weight, src.lm_head.weight)
    assert torch.equal(new.get_input_embeddings().weight, src.get_input_embeddings().weight)
    sp, np_ = src.model.multi_modal_projector.state_dict(), new.model.multi_modal_projector.state_dict()
    assert all(torch.equal(sp[k], np_[k]) for k in sp)


@pytest.mark.parametrize("layers,mode", [(2, "split"), (2, "identity"), (6, "identity")])
def test_exact_deepenings_compute_the_source_function(layers, mode):
    """The same depth (either mode), or identity layers inserted: the logits of the source, exactly or to
    float rounding (a zero update added to the residual stream)."""
    src, new = _llava(2, 0), _llava(layers, 1)
    new.model.vision_tower.load_state_dict(src.model.vision_tower.state_dict())
    info = deepen_from(new, src, mode)
    if layers == 6:
        assert info["layer_map"] == [0, 0, 0, 1, 1, 1] and info["scales"] == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    ids = torch.randint(5, 40, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(new(input_ids=ids).logits, src(input_ids=ids).logits, rtol=0, atol=1e-6)
    if layers == 6:  # and split, at 6 layers, is not the same function
        split = _llava(6, 1)
        deepen_from(split, src, "split")
        with torch.no_grad():
            assert not torch.allclose(split(input_ids=ids).logits, src(input_ids=ids).logits, atol=1e-3)


def test_deepen_refuses_what_does_not_stack():
    with pytest.raises(ValueError, match="multiple"):
        deepen_from(_llava(5, 1), _llava(2, 0))
    with pytest.raises(ValueError, match="hidden_size"):
        deepen_from(_llava(4, 1, llm_width=64, llm_heads=2), _llava(2, 0))
    with pytest.raises(ValueError, match="identity"):
        deepen_from(_llava(4, 1), _llava(2, 0), "stack")


def test_method_options_at_depth():
    assert method_options(Spec(llm_layers=2))["fastv"] == {"layer": 1}
    deep = method_options(Spec(llm_layers=6))
    assert deep["fastv"] == deep["asap"] == deep["fastv+bimask"] == {"layer": 2}
    assert deep["visiondrop"] == {"layer_fractions": [0.25, 0.5, 0.75]}
    from vlprune.methods.visiondrop import VisionDropConfig, stage_layers

    assert stage_layers(6, VisionDropConfig(**deep["visiondrop"])) == [2, 3, 5]


def test_deep_build_from_a_built_testbed(tmp_path):
    from vlprune.evaluation import load_model
    from vlprune.testbed.train import build

    src_dir, deep_dir = tmp_path / "src", tmp_path / "deep"
    build(src_dir, grid=4, clip_steps=2, llava_steps=2, progress=False, val_n=0, spec=Spec(**TINY),
          threads=None)
    res = build(deep_dir, grid=4, llava_steps=2, progress=False, val_n=4, threads=None,
                spec=Spec(**{**TINY, "llm_layers": 4}), clip_dir=src_dir / "clip", llm_init=src_dir)
    assert res["clip_from"] == str(src_dir / "clip") and res["llm_init"]["layer_map"] == [0, 0, 1, 1]
    assert res["llm_init"]["mode"] == "identity"
    assert res["spec"]["align_steps"] == 0 and res["spec"]["background_start"] == 1.0
    loaded = load_model(str(deep_dir))
    assert loaded.model.config.text_config.num_hidden_layers == 4 and loaded.options["fastv"] == {"layer": 2}
    src = load_model(str(src_dir)).model
    for k, v in src.model.vision_tower.state_dict().items():  # the same CLIP, not retrained
        assert torch.equal(v, loaded.model.model.vision_tower.state_dict()[k]), k
    assert json.loads((deep_dir / "testbed_build.json").read_text())["llm_init"]["from"] == str(src_dir)


def test_build_cli_checks_deepening_before_training(tmp_path):
    from vlprune.cli import app
    from vlprune.testbed import checkpoint_dir

    run = CliRunner().invoke
    res = run(app, ["testbed", "build", "--out", str(tmp_path / "x"), "--llm-init", str(tmp_path)])
    assert res.exit_code == 2 and "no config.json" in res.output
    res = run(app, ["testbed", "build", "--out", str(tmp_path / "x"), "--llm-init", str(checkpoint_dir()),
                    "--llm-layers", "5"])
    assert res.exit_code == 2 and "multiple" in res.output
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------ the bundled testbed-deep
def test_bundled_deep_loads_with_its_depth_options_and_the_testbed_clip():
    from vlprune.evaluation import load_model, resolve_model
    from vlprune.testbed import checkpoint_dir, clip_dir, deep_checkpoint_dir, load

    assert resolve_model("testbed-deep") == deep_checkpoint_dir() != checkpoint_dir()
    loaded = load_model("testbed-deep")
    assert loaded.model.config.text_config.num_hidden_layers == 6
    assert loaded.options["fastv"] == {"layer": 2} and loaded.options["visiondrop"]["layer_fractions"] == [0.25, 0.5, 0.75]
    assert loaded.clip == str(clip_dir())  # bundled without clip/: DeSAP reads the testbed's own CLIP
    bundled = load_model("testbed").model.model.vision_tower.state_dict()
    for k, v in loaded.model.model.vision_tower.state_dict().items():  # built on the same, frozen, CLIP
        assert torch.equal(v, bundled[k]), k
    record = json.loads((deep_checkpoint_dir() / "testbed_build.json").read_text())
    assert record["clip_from"].endswith("checkpoint/clip") and record["spec"]["llm_layers"] == 6
    model, _, samples = load(deep=True, n=2)
    assert model.config.text_config.num_hidden_layers == 6 and len(samples) == 2


def test_bundled_deep_runs_in_llm_methods_at_layer_two():
    import vlprune
    from vlprune.evaluation import load_model, method_kwargs
    from vlprune.testbed import load_split

    loaded = load_model("testbed-deep")
    model, proc = loaded.model, loaded.processor
    sample = load_split("val", 1)[0]
    inputs = proc(text=[sample.prompt], images=[sample.image], return_tensors="pt")
    with torch.no_grad():
        full = model(**inputs, output_hidden_states=True).hidden_states
        vlprune.apply(model, "fastv", 16, **method_kwargs("fastv", loaded))
        try:
            pruned = model(**inputs, output_hidden_states=True).hidden_states
        finally:
            vlprune.remove(model)
    n_img = 144
    for layer in (0, 1, 2):  # the inputs of layers 0-2 see every token (FastV prunes after layer 2)
        assert pruned[layer].shape[1] == full[layer].shape[1], layer
        torch.testing.assert_close(pruned[layer], full[layer])
    for layer in range(3, 7):
        assert pruned[layer].shape[1] == full[layer].shape[1] - (n_img - 16), layer


@pytest.mark.slow
def test_bundled_deep_answers_val_at_full_budget():
    from vlprune.evaluation import answer, load_model
    from vlprune.testbed import is_correct, load_split

    loaded = load_model("testbed-deep")
    samples = load_split("val", 50)
    preds = answer(loaded, samples, batch_size=25)
    assert sum(is_correct(p, s.answer) for p, s in zip(preds, samples)) >= 43
