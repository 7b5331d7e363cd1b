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
}

__all__ = ["ARCHITECTURES", "CONFIG_KEY", "PruneSettings", "hf_overrides", "mm_processor_kwargs", "parse_settings",
           "register", "request_settings", "settings_of"]


def register() -> None:
    """Register vlprune's model classes with vLLM's ModelRegistry (idempotent)."""
    from vllm import ModelRegistry

    for arch, target in ARCHITECTURES.items():
        if arch not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(arch, target)


def hf_overrides(method: str, keep: int | None = None, family: str = "llava", clip: str | None = None,
                 **options) -> dict:
    """The ``hf_overrides`` for ``vllm.LLM(...)`` / ``--hf-overrides`` that prune with ``method`` to ``keep``
    (``clip``: DeSAP's CLIP, a hub id or local path).

    Validated here, before vLLM starts: bad input raises a clear error naming the fix."""
    families = {"llava": "VlpruneLlavaForConditionalGeneration"}
    if family not in families:
        raise ValueError(f"family {family!r} is not served by the vLLM plugin yet; choose one of {sorted(families)}")
    raw = {"method": method, "keep": keep, "options": options}
    if clip is not None:
        raw["clip"] = str(clip)
    parse_settings(raw)
    return {"architectures": [families[family]], CONFIG_KEY: raw}


def mm_processor_kwargs(method: str, keep: int | None = None, **options) -> dict:
    """A request's own settings: ``{"prompt": ..., "multi_modal_data": ..., "mm_processor_kwargs": THIS}``
    (OpenAI API: ``extra_body={"mm_processor_kwargs": THIS}``). Checked here; the engine checks it again."""
    raw = {"method": method, "keep": keep, "options": options}
    parse_settings(raw, where="request")
    return {CONFIG_KEY: raw}
