"""vLLM plugin: serve vlprune-pruned models with vLLM (entry point ``vllm.general_plugins`` -> ``register``).

vLLM calls ``register()`` in every process it starts; it adds the architecture
``VlpruneLlavaForConditionalGeneration`` (lazily imported, so CUDA is not touched at registration). A deployment
opts in with ``--hf-overrides`` (see docs/vllm.md)::

    vllm serve DIR --hf-overrides '{"architectures": ["VlpruneLlavaForConditionalGeneration"],
                                    "vlprune": {"method": "visionzip", "keep": 64}}'
"""
from __future__ import annotations

from .settings import CONFIG_KEY, PruneSettings, parse_settings, request_settings, settings_of

ARCHITECTURES = {
    "VlpruneLlavaForConditionalGeneration": "vlprune.vllm_plugin.llava:VlpruneLlavaForConditionalGeneration",
    "VlpruneLlavaNextForConditionalGeneration":
        "vlprune.vllm_plugin.llava_next:VlpruneLlavaNextForConditionalGeneration",
}
FAMILIES = {"llava": "VlpruneLlavaForConditionalGeneration", "llava_next": "VlpruneLlavaNextForConditionalGeneration"}

__all__ = ["ARCHITECTURES", "CONFIG_KEY", "FAMILIES", "PruneSettings", "hf_overrides", "mm_processor_kwargs", "parse_settings",
           "register", "request_settings", "settings_of"]


def register() -> None:
    """Register vlprune's model classes with vLLM's ModelRegistry (idempotent)."""
    from vllm import ModelRegistry

    for arch, target in ARCHITECTURES.items():
        if arch not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(arch, target)


def hf_overrides(method: str, keep: int | None = None, family: str = "llava", clip: str | None = None,
                 budget: str | None = None, newlines: str | None = None, **options) -> dict:
    """The ``hf_overrides`` for ``vllm.LLM(...)`` / ``--hf-overrides`` that prune with ``method`` to ``keep``
    (``clip``: DeSAP's CLIP, a hub id or local path; ``budget`` / ``newlines``: LLaVA-NeXT's layout).

    Validated here, before vLLM starts: bad input raises a clear error naming the fix."""
    if family not in FAMILIES:
        raise ValueError(f"family {family!r} is not served by the vLLM plugin; choose one of {sorted(FAMILIES)} "
                         f"(Qwen2.5-VL: docs/vllm.md says why not)")
    raw: dict = {"method": method, "keep": keep, "options": options}
    for name, value in (("clip", clip), ("budget", budget), ("newlines", newlines)):
        if value is not None:
            raw[name] = str(value)
    parse_settings(raw)
    return {"architectures": [FAMILIES[family]], CONFIG_KEY: raw}


def mm_processor_kwargs(method: str, keep: int | None = None, **options) -> dict:
    """A request's own settings: ``{"prompt": ..., "multi_modal_data": ..., "mm_processor_kwargs": THIS}``
    (OpenAI API: ``extra_body={"mm_processor_kwargs": THIS}``). Checked here; the engine checks it again."""
    raw = {"method": method, "keep": keep, "options": options}
    parse_settings(raw, where="request")
    return {CONFIG_KEY: raw}
