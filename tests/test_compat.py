"""vlprune.compat: the transformers contracts, the tested range, and clear errors when a contract breaks."""
import sys
import warnings

import pytest
import torch
import transformers

import vlprune
from helpers import QUESTIONS, logits
from vlprune import compat


@pytest.fixture(autouse=True)
def _clean(tiny):
    yield
    vlprune.remove(tiny.model)
    compat.check_version.cache_clear()


@pytest.mark.parametrize(
    "version, tested",
    [("5.16.1", True), ("5.16.0", False), ("5.20.2", True), ("5.24.0", True), ("5.24.9", True),
     ("5.25.0", False), ("5.25.0.dev0", False), ("5.24.0rc1", True), ("4.57.6", False), ("6.0.0", False)],
)
def test_tested_range(version, tested):
    assert compat.is_tested(version) is tested


def test_declared_range_matches_compat():
    """pyproject.toml declares exactly the range compat.py warns outside of."""
    import pathlib
    import tomllib

    project = tomllib.loads((pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    declared = [d for d in project["dependencies"] if d.startswith("transformers")]
    assert declared == [f"transformers>={compat.TESTED_MIN},<{compat.TESTED_BELOW}"]


def test_installed_transformers_is_in_tested_range():
    assert compat.is_tested(transformers.__version__), transformers.__version__


def test_apply_warns_once_outside_tested_range(tiny, monkeypatch):
    # the module object in sys.modules (transformers swaps its lazy module once loaded)
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "5.99.0")
    compat.check_version.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vlprune.apply(tiny.model, "random", 5)
        vlprune.apply(tiny.model, "random", 6)
    mine = [w for w in caught if "tested with transformers" in str(w.message)]
    assert len(mine) == 1 and "5.99.0" in str(mine[0].message) and "pip install" in str(mine[0].message)


def test_no_warning_inside_tested_range(tiny):
    compat.check_version.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        vlprune.apply(tiny.model, "random", 5)


@pytest.mark.parametrize("name", compat.CACHE_ARGS)
def test_cache_found_under_either_name(name):
    cache = transformers.DynamicCache()
    assert compat.call_cache({name: cache}) is cache
    assert compat.is_prefill({name: cache}) and compat.is_prefill({})


def test_output_cache(tiny, pixels):
    with torch.no_grad():
        out = tiny.model(**tiny.prompt_ids(QUESTIONS), pixel_values=pixels, use_cache=True)
    cache = compat.output_cache(out)
    assert cache is not None and cache.get_seq_length() == out.logits.shape[1]


def test_missing_rotary_tables_raise_a_contract_error(tiny, pixels):
    """A decoder layer called without position_embeddings: a named error at the first call, no shape error."""
    layer = tiny.model.model.language_model.layers[1]

    def strip(module, args, kwargs):
        kwargs.pop("position_embeddings", None)
        return args, kwargs

    handle = layer.register_forward_pre_hook(strip, with_kwargs=True)  # runs before vlprune's hook
    try:
        vlprune.apply(tiny.model, "fastv", 4, layer=1)
        with pytest.raises(compat.TransformersContractError, match="position_embeddings.*tested with transformers"):
            logits(tiny.model, tiny.prompt_ids(QUESTIONS), pixels)
    finally:
        handle.remove()


def test_forward_without_cache_argument_is_refused(tiny, monkeypatch):
    def forward(input_ids=None, pixel_values=None):  # a forward that names no cache argument
        raise AssertionError("not called")

    monkeypatch.setitem(tiny.model.__dict__, "forward", forward)
    with pytest.raises(compat.TransformersContractError, match="cache arguments"):
        vlprune.apply(tiny.model, "random", 5)


@pytest.mark.parametrize("method", ["random", "visiondrop"])
def test_features_through_get_image_features_before_5_18(tiny, pixels, monkeypatch, method):
    """The pre-5.18 route (no mm_encoder_outputs: get_image_features replaced for one call) gives the same logits
    as the mm_encoder_outputs route, and leaves no trace on the model. (generate() on that route runs for real
    in ``make test-oldest``: transformers 5.16.1 has no mm_encoder_outputs; from 5.18 generate itself passes
    them, so it cannot be imitated here.)"""
    inputs = tiny.prompt_ids(QUESTIONS)
    vlprune.apply(tiny.model, method, 5)
    ref = logits(tiny.model, inputs, pixels)
    monkeypatch.setattr(compat, "takes_mm_outputs", lambda model: False)
    out = logits(tiny.model, inputs, pixels)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    inner = tiny.model.model.__dict__
    assert "get_image_features" not in inner and compat._INJECTING not in inner
