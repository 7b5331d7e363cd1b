"""The per-deployment pruning settings of a vLLM engine, read from the model config (``--hf-overrides``).

Kept free of vLLM imports so it can be checked in the core environment.

    --hf-overrides '{"architectures": ["VlpruneLlavaForConditionalGeneration"],
                     "vlprune": {"method": "visionzip", "keep": 64, "options": {"contextual_ratio": 0.15}}}'
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ..methods.base import check_keep
from ..registry import get_method

CONFIG_KEY = "vlprune"  # attribute of the HF config that ``--hf-overrides`` sets
UNPRUNED = ("none", "full")
# methods whose encoder side needs more than the vision tower (DeSAP: a CLIP text tower and the question)
NOT_IN_VLLM = {"desap": "DeSAP needs the question and a CLIP text tower at encoding time, which this plugin "
                        "does not carry yet; use vispruner, visionzip or random in vLLM, or vlprune.apply in "
                        "transformers",
               "holov": "HoloV scores the projected tokens and may hand the LLM zero tokens, which this plugin's "
                        "tower-side hook cannot return yet; use vlprune.apply in transformers"}


@dataclass(frozen=True)
class PruneSettings:
    """method: an encoder-side vlprune method ("none"/"full": no pruning); keep: visual tokens per image;
    options: the method's config fields (see ``vlprune.methods()``)."""

    method: str = "none"
    keep: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def prunes(self) -> bool:
        return self.method not in UNPRUNED

    def config(self) -> Any:
        """The method's config dataclass with ``options`` (defaults for the rest)."""
        spec = get_method(self.method)
        return spec.config_cls(**self.options)

    def tokens(self, n: int) -> int:
        """Tokens one image of ``n`` patches takes in the prompt."""
        return min(self.keep, n) if self.prunes else n

    def check(self, n: int) -> None:
        """Raise a clear error if ``keep`` cannot be honoured on a tower with ``n`` patches."""
        if self.prunes:
            check_keep(self.keep, n)


def parse_settings(raw: Any) -> PruneSettings:
    """Validate the ``vlprune`` entry of the HF config (a dict) into ``PruneSettings``; None means no pruning."""
    if raw is None:
        return PruneSettings()
    if not isinstance(raw, dict):
        raise TypeError(f'the "{CONFIG_KEY}" override must be a JSON object like {{"method": "random", "keep": 64}}, '
                        f"got {raw!r}")
    unknown = sorted(set(raw) - {f.name for f in fields(PruneSettings)})
    if unknown:
        raise ValueError(f'unknown key(s) {unknown} in the "{CONFIG_KEY}" override; allowed: method, keep, options')
    method = str(raw.get("method", "none")).lower().strip()
    options = raw.get("options") or {}
    if not isinstance(options, dict):
        raise TypeError(f'"options" must be a JSON object of the method\'s fields, got {options!r}')
    if method in UNPRUNED:
        return PruneSettings(method=method)
    if method in NOT_IN_VLLM:
        raise NotImplementedError(NOT_IN_VLLM[method])
    spec = get_method(method)  # unknown names: ValueError listing the methods
    if spec.plan is not None:
        raise ValueError(
            f"{method} prunes inside the LLM ({spec.stage}); vLLM's paged KV cache holds every prompt token in "
            f"every layer, so only encoder-side methods run in vLLM: vispruner, visionzip, random"
        )
    keep = raw.get("keep")
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise ValueError(f'"keep" must be a positive int (visual tokens per image) for method {method!r}, got {keep!r}')
    names = {f.name for f in fields(spec.config_cls)}
    bad = sorted(set(options) - names)
    if bad:
        raise ValueError(f"{method} has no option(s) {bad}; its options are {sorted(names)}")
    settings = PruneSettings(method=method, keep=keep, options=dict(options))
    settings.config()  # the config's own validation (__post_init__) runs now, not at the first request
    return settings


def settings_of(hf_config: Any) -> PruneSettings:
    """The settings a (possibly overridden) HF config carries."""
    return parse_settings(getattr(hf_config, CONFIG_KEY, None))
