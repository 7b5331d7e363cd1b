"""Every contract vlprune's hooks hold with transformers internals, in one place.

vlprune patches a model's ``forward``/``generate`` and hooks its decoder layers, so it depends on names and
layouts that transformers does not promise to keep. Each one is read here, and nowhere else:

* the KV cache argument of ``forward`` and of the decoder layers: ``past_key_values`` until 5.23, ``cache`` from
  5.24 (the old name is still accepted through a ``deprecate_kwarg`` shim);
* the cache on a model output: ``.past_key_values`` / ``.cache``;
* how pruned image features reach the LLM: ``mm_encoder_outputs={"image": BaseModelOutputWithPooling}`` from
  5.18 (videos: ``"video"``); before that the model always runs ``get_image_features(pixel_values, ...)``
  (``get_video_features``), so the instance's method is replaced for the duration of one patched call
  (ToMe-style, on this instance only);
* Video-LLaVA's image pixels: ``pixel_values_images`` until 5.22, ``pixel_values`` from 5.23 (old name shimmed);
* the decoder layer's rotary tables ``position_embeddings=(cos, sin)``: ``(B, L, d)``, or for Qwen2.5-VL before
  5.17 ``(3, B, L, d)`` (one table per M-RoPE section, combined inside attention by
  ``apply_multimodal_rotary_pos_emb``);
* the decoder layer's mask: ``attention_mask`` a 4-D tensor ``(B, 1, q, kv)`` or None;
* the Qwen2.5-VL vision config's depth: ``depth`` (also ``num_hidden_layers`` from 5.24).

Tested: transformers ``TESTED_MIN`` up to (not including) ``TESTED_BELOW``; outside that range ``check_version``
warns once. A contract found broken raises ``TransformersContractError`` at the first call, never a shape error
deep inside attention.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import warnings
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .ops import repeat_per_sample

TESTED_MIN = "5.16.1"
TESTED_BELOW = "5.25"
CACHE_ARGS = ("cache", "past_key_values")  # 5.24 renamed past_key_values -> cache
MM_OUTPUTS_ARG = "mm_encoder_outputs"
_INJECTING = "_vlprune_injecting"  # instance flag while get_image_features is replaced (before 5.18)
_GIVEN = "_vlprune_features"  # call key: per modality, the features image_features_override hands in (before 5.18)


class TransformersContractError(RuntimeError):
    """transformers no longer offers something vlprune's hooks rely on (see ``vlprune.compat``)."""

    def __init__(self, what: str) -> None:
        import transformers

        super().__init__(
            f"{what} (transformers {transformers.__version__}; vlprune is tested with {tested_range()}). "
            f"Install a tested release, e.g. pip install 'transformers>={TESTED_MIN},<{TESTED_BELOW}', "
            "or report this at the vlprune issue tracker."
        )


def tested_range() -> str:
    return f"transformers >={TESTED_MIN},<{TESTED_BELOW}"


def _version_tuple(version: str) -> tuple[int, ...]:
    out = []
    for part in version.split("."):
        digits = "".join(c for c in part if c.isdigit()) if not part.isdigit() else part
        if not digits:
            break
        out.append(int(digits))
        if not part.isdigit():  # 5.25.0.dev0, 5.25.0rc1: stop at the first non-numeric part
            break
    return tuple(out)


def is_tested(version: str) -> bool:
    v = _version_tuple(version)
    return _version_tuple(TESTED_MIN) <= v < _version_tuple(TESTED_BELOW)


@functools.lru_cache(maxsize=None)
def check_version(version: str | None = None) -> bool:
    """Warn once (per version) when transformers lies outside the tested range; True when it is inside."""
    if version is None:
        import transformers

        version = transformers.__version__
    if is_tested(version):
        return True
    warnings.warn(
        f"vlprune is tested with {tested_range()}; transformers {version} is outside that range. It may work; "
        "if a hook contract changed you will get a TransformersContractError naming it. "
        f"To pin a tested release: pip install 'transformers>={TESTED_MIN},<{TESTED_BELOW}'",
        UserWarning,
        stacklevel=3,
    )
    return False


# -- forward / generate calls -------------------------------------------------------------------------------
def accepted_args(fn: Callable) -> set[str]:
    return set(inspect.signature(fn).parameters)


def check_forward(model: nn.Module) -> None:
    """At ``apply`` time: the forward must name a KV cache argument we know (or take **kwargs)."""
    params = inspect.signature(model.forward).parameters
    if not any(name in params for name in CACHE_ARGS):
        raise TransformersContractError(
            f"{type(model).__name__}.forward takes none of the cache arguments {CACHE_ARGS}"
        )


def call_cache(call: dict[str, Any]) -> Any:
    """The KV cache passed to a forward call (bound arguments), under either name; None if there is none."""
    for name in CACHE_ARGS:
        cache = call.get(name)
        if cache is not None:
            return cache
    return None


def is_prefill(call: dict[str, Any]) -> bool:
    """A forward call that starts a prompt: no cache, or an empty one."""
    cache = call_cache(call)
    if cache is None:
        return True
    length = getattr(cache, "get_seq_length", None)
    if length is None:
        raise TransformersContractError(f"the KV cache ({type(cache).__name__}) has no get_seq_length()")
    return int(length()) == 0


def output_cache(out: Any) -> Any:
    """The cache a model output carries (``.cache`` from 5.24, ``.past_key_values`` before)."""
    cache = getattr(out, "cache", None)
    if cache is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cache = getattr(out, "past_key_values", None)
    return cache


def is_static_cache(cache: Any) -> bool:
    return cache is not None and type(cache).__name__ == "StaticCache"


# -- image features into the LLM ----------------------------------------------------------------------------
def image_features_output(features: list[torch.Tensor]) -> Any:
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    return BaseModelOutputWithPooling(pooler_output=features)


def takes_mm_outputs(model: nn.Module) -> bool:
    """Whether the model's forward takes precomputed encoder outputs (transformers >= 5.18)."""
    return _class_takes_mm_outputs(type(getattr(model, "model", model)))


@functools.lru_cache(maxsize=None)
def _class_takes_mm_outputs(cls: type) -> bool:
    # a class property: read its signature once, not on every pruned call (the host is the bottleneck on a GPU)
    return MM_OUTPUTS_ARG in accepted_args(cls.forward)


def give_image_features(model: nn.Module, call: dict[str, Any], features: list[torch.Tensor],
                        images_per_sample: list[int] | None = None, *, modality: str = "image",
                        pixel_args: tuple[str, ...] = ("pixel_values",),
                        pack: Callable[[list[torch.Tensor]], Any] | None = None) -> dict[str, Any]:
    """Hand the pruned per-item features of one ``modality`` ("image" / "video") to the model in place of its own
    vision pass. ``pixel_args``: the call's arguments holding those pixels (Video-LLaVA's images:
    ``pixel_values`` from 5.23, ``pixel_values_images`` before); ``pack``: the per-item list -> what the model's
    forward reads as ``pooler_output`` (default: the list; Video-LLaVA reads one tensor).

    >= 5.18: ``mm_encoder_outputs[modality]`` (the pixels dropped). Before: the pixels stay in the call (the model
    only runs that branch when they are present) and ``image_features_override`` must wrap the model call.
    Called once per modality, on the call the previous one returned.
    """
    call = dict(call)
    pack = pack or (lambda given: given)
    if takes_mm_outputs(model):
        for name in pixel_args:
            call.pop(name, None)
        call[MM_OUTPUTS_ARG] = {**(call.get(MM_OUTPUTS_ARG) or {}), modality: image_features_output(pack(features))}
    else:
        pixels = next((call[a] for a in pixel_args if isinstance(call.get(a), torch.Tensor)), None)
        rows = pixels.shape[0] if pixels is not None else None
        given = dict(call.get(_GIVEN) or {})
        given[modality] = (features, images_per_sample or [1] * len(features), rows, pack)
        call[_GIVEN] = given
    return call


@contextlib.contextmanager
def image_features_override(model: nn.Module, call: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Context for one model call built by ``give_image_features``; yields the call to pass on.

    Before 5.18 it replaces ``get_image_features`` (``get_video_features`` for videos) on this model instance (its
    inner ``model``) for the duration of the call and restores the class methods afterwards.
    """
    given = call.get(_GIVEN)
    if given is None:
        yield call
        return
    call = {k: v for k, v in call.items() if k != _GIVEN}
    inner = getattr(model, "model", model)
    saved = {}
    for modality, (features, per_sample, rows, pack) in given.items():
        name = f"get_{modality}_features"
        if not hasattr(inner, name):
            raise TransformersContractError(f"{type(inner).__name__} has neither mm_encoder_outputs nor {name}")
        saved[name] = (name in inner.__dict__, inner.__dict__.get(name))
        inner.__dict__[name] = _replacement(features, per_sample, rows, pack)
    inner.__dict__[_INJECTING] = True
    try:
        yield call
    finally:
        inner.__dict__.pop(_INJECTING, None)
        for name, (had, previous) in saved.items():
            if had:
                inner.__dict__[name] = previous
            else:
                inner.__dict__.pop(name, None)


def _replacement(features: list[torch.Tensor], per_sample: list[int], rows: int | None,
                 pack: Callable[[list[torch.Tensor]], Any]) -> Callable[..., Any]:
    """A ``get_*_features`` that returns the given features (packed as the model reads them)."""
    def get_features(*args: Any, **kwargs: Any) -> Any:
        # generate(num_beams=r / num_return_sequences=r) repeats every row of its inputs r times: repeat each
        # sample's block of images to match the token stream (row b's images, r times, then row b+1's)
        pixels = args[0] if args else next((v for k, v in kwargs.items() if k.startswith("pixel_values")
                                            and v is not None), None)
        r = pixels.shape[0] // rows if isinstance(pixels, torch.Tensor) and rows else 1
        return image_features_output(pack(repeat_per_sample(features, per_sample, r) if r > 1 else features))

    return get_features


def injecting(model: nn.Module) -> bool:
    """True inside ``image_features_override``: the model's own forward, called by generate, must not prune again."""
    return _INJECTING in getattr(model, "model", model).__dict__


# -- decoder layers -----------------------------------------------------------------------------------------
def layer_cache(kwargs: dict[str, Any]) -> Any:
    """The cache a decoder layer receives (either name)."""
    return call_cache(kwargs)


def layer_cache_length(kwargs: dict[str, Any], layer: int) -> int:
    """Tokens the cache a decoder layer receives holds for that layer, before the layer's own update."""
    cache = layer_cache(kwargs)
    length = getattr(cache, "get_seq_length", None)
    if length is None:
        raise TransformersContractError(f"decoder layer {layer} got no cache with get_seq_length(layer_idx)")
    return int(length(layer))


def attention_implementation(layer: nn.Module) -> str:
    """The attention a decoder layer runs ("sdpa", "eager", ...): its attention config's ``_attn_implementation``."""
    config = getattr(getattr(layer, "self_attn", None), "config", None)
    return str(getattr(config, "_attn_implementation", None) or "eager")


def rotary_tables(kwargs: dict[str, Any], layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` of a decoder layer's call."""
    tables = kwargs.get("position_embeddings")
    if not (isinstance(tables, (tuple, list)) and len(tables) == 2):
        raise TransformersContractError(
            f"decoder layer {layer} was called without position_embeddings=(cos, sin); in-LLM pruning gathers "
            "the rotary tables of the kept tokens"
        )
    return tables[0], tables[1]


def table_rows(table: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rows ``pos`` (B, n) of a rotary table laid out (B or 1, L, d), or sectioned (3, B or 1, L, d) as
    Qwen2.5-VL's before 5.17: returns (B, n, d) or (3, B, n, d)."""
    lead = table.shape[:-3]
    table = table.expand(*lead, pos.shape[0], table.shape[-2], table.shape[-1])
    idx = pos.unsqueeze(-1).expand(*lead, pos.shape[0], pos.shape[1], table.shape[-1])
    return torch.gather(table, -2, idx)


def layer_mask(kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The decoder layer's 4-D additive/boolean mask, or None (SDPA's is_causal path, or a non-tensor mask)."""
    mask = kwargs.get("attention_mask")
    return mask if isinstance(mask, torch.Tensor) and mask.dim() == 4 else None


def rope_function(attention: nn.Module) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``rope(x, cos, sin)`` for x (B, H, L, d), with the attention module's own rotary function.

    Qwen2.5-VL before 5.17 applies M-RoPE inside attention (``apply_multimodal_rotary_pos_emb`` with the
    config's ``mrope_section``); every other case has ``apply_rotary_pos_emb(q, k, cos, sin)``.
    """
    module = sys.modules[type(attention).__module__]
    apply = getattr(module, "apply_rotary_pos_emb", None)
    if apply is not None:
        return lambda x, cos, sin: apply(x, x, cos, sin)[0]
    multimodal = getattr(module, "apply_multimodal_rotary_pos_emb", None)
    config = getattr(attention, "config", None)
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if multimodal is not None and "mrope_section" in rope:
        section = rope["mrope_section"]
        return lambda x, cos, sin: multimodal(x, x, cos, sin, section)[0]
    raise TransformersContractError(f"no rotary function found next to {type(attention).__name__}")


# -- configs ------------------------------------------------------------------------------------------------
def config_value(config: Any, *names: str) -> int:
    """The first of ``names`` the config has (set, not None)."""
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise TransformersContractError(f"{type(config).__name__} has none of {names}")


def vision_depth(vision_config: Any) -> int:
    """Number of vision blocks: ``num_hidden_layers`` (CLIP; Qwen2.5-VL through an alias from 5.24) or ``depth``."""
    return config_value(vision_config, "num_hidden_layers", "depth")


def vision_heads(vision_config: Any) -> int:
    """Attention heads of a vision block: ``num_attention_heads`` (CLIP; Qwen alias from 5.24) or ``num_heads``."""
    return config_value(vision_config, "num_attention_heads", "num_heads")
