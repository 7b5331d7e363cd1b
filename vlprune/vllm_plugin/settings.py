"""The per-deployment pruning settings of a vLLM engine, read from the model config (``--hf-overrides``).

Kept free of vLLM imports so it can be checked in the core environment.

    --hf-overrides '{"architectures": ["VlpruneLlavaForConditionalGeneration"],
                     "vlprune": {"method": "visionzip", "keep": 64, "options": {"contextual_ratio": 0.15}}}'

DeSAP also needs ``"clip"``: the hub id or local path of the CLIP model whose vision tower the LVLM uses
(LLaVA-1.5-7B: openai/clip-vit-large-patch14-336); its text tower encodes the question. A request may choose its
own method / keep / options with ``mm_processor_kwargs={"vlprune": {...}}`` (``request_settings``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any

from ..methods.base import check_keep
from ..registry import get_method

CONFIG_KEY = "vlprune"  # attribute of the HF config that ``--hf-overrides`` sets
UNPRUNED = ("none", "full")
DEPLOYMENT_KEYS = ("clip", "budget", "newlines")  # set per engine (--hf-overrides), not per request
# methods whose output vLLM's fixed placeholder count cannot hold
NOT_IN_VLLM = {"holov": "HoloV scores the projected tokens and may hand the LLM zero tokens, which this plugin's "
                        "tower-side hook cannot return yet; use vlprune.apply in transformers"}
# methods that read the question (the prompt's text after the last image) through a CLIP text tower
NEEDS_QUESTION = ("desap",)
NEEDS_CLIP = ('DeSAP needs a CLIP text tower: add "clip": "openai/clip-vit-large-patch14-336" (the hub id or '
              "local path of the CLIP whose vision tower the LVLM uses) to the deployment's vlprune settings")


@dataclass(frozen=True)
class PruneSettings:
    """method: an encoder-side vlprune method ("none"/"full": no pruning); keep: visual tokens per image;
    options: the method's config fields (see ``vlprune.methods()``)."""

    method: str = "none"
    keep: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    clip: str | None = None  # DeSAP's CLIP (hub id or local path); deployment-wide
    budget: str = "global"  # LLaVA-NeXT: keep per image ("global") or per tile ("tile"); deployment-wide
    newlines: str = "all"  # LLaVA-NeXT: "all" (one per unpadded grid row) or "none"; deployment-wide

    @property
    def prunes(self) -> bool:
        return self.method not in UNPRUNED

    @property
    def needs_question(self) -> bool:
        return self.method in NEEDS_QUESTION

    def key(self) -> str:
        """Canonical JSON of what a request may choose (method, keep, options): equal settings, equal key."""
        return json.dumps({"method": self.method, "keep": self.keep, "options": self.options}, sort_keys=True)

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


def parse_settings(raw: Any, *, where: str = "override") -> PruneSettings:
    """Validate the ``vlprune`` entry of the HF config (a dict) into ``PruneSettings``; None means no pruning.

    ``where="request"``: a request's ``mm_processor_kwargs["vlprune"]`` (no ``clip``: that is deployment-wide)."""
    if raw is None:
        return PruneSettings()
    if not isinstance(raw, dict):
        raise TypeError(f'the "{CONFIG_KEY}" {where} must be a JSON object like {{"method": "random", "keep": 64}}, '
                        f"got {raw!r}")
    allowed = ["method", "keep", "options"] + (list(DEPLOYMENT_KEYS) if where == "override" else [])
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ValueError(f'unknown key(s) {unknown} in the "{CONFIG_KEY}" {where}; allowed: {", ".join(allowed)}')
    method = str(raw.get("method", "none")).lower().strip()
    options = raw.get("options") or {}
    if not isinstance(options, dict):
        raise TypeError(f'"options" must be a JSON object of the method\'s fields, got {options!r}')
    clip = raw.get("clip")
    if clip is not None and not isinstance(clip, str):
        raise TypeError(f'"clip" must be a hub id or a local path (a string), got {clip!r}')
    layout = {k: raw[k] for k in ("budget", "newlines") if k in raw}
    if layout.get("budget", "global") not in ("global", "tile"):
        raise ValueError(f'"budget" must be "global" (keep per image) or "tile" (keep per tile), got {raw["budget"]!r}')
    if layout.get("newlines", "all") not in ("all", "none"):
        raise ValueError(
            f'"newlines": {raw["newlines"]!r} cannot be served: vLLM fixes a prompt\'s length before the encoder runs, '
            f'and "rows" (vlprune.apply\'s default) keeps a newline only after grid rows that kept a patch, which '
            f'depends on the selection; use "all" (one per unpadded row: keep + rows tokens) or "none"'
        )
    if method in UNPRUNED:
        return PruneSettings(method=method, clip=clip, **layout)
    if method in NOT_IN_VLLM:
        raise NotImplementedError(NOT_IN_VLLM[method])
    if method in NEEDS_QUESTION and where == "override" and not clip:
        raise ValueError(NEEDS_CLIP)
    spec = get_method(method)  # unknown names: ValueError listing the methods
    if spec.plan is not None:
        raise ValueError(
            f"{method} prunes inside the LLM ({spec.stage}); vLLM's paged KV cache holds every prompt token in "
            f"every layer, so only encoder-side methods run in vLLM: desap, vispruner, visionzip, random"
        )
    keep = raw.get("keep")
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise ValueError(f'"keep" must be a positive int (visual tokens per image) for method {method!r}, got {keep!r}')
    names = {f.name for f in fields(spec.config_cls)}
    bad = sorted(set(options) - names)
    if bad:
        raise ValueError(f"{method} has no option(s) {bad}; its options are {sorted(names)}")
    settings = PruneSettings(method=method, keep=keep, options=dict(options), clip=clip, **layout)
    settings.config()  # the config's own validation (__post_init__) runs now, not at the first request
    return settings


def settings_of(hf_config: Any) -> PruneSettings:
    """The settings a (possibly overridden) HF config carries."""
    return parse_settings(getattr(hf_config, CONFIG_KEY, None))


def request_settings(raw: Any, deployment: PruneSettings, n: int) -> PruneSettings:
    """The settings of one request: its ``mm_processor_kwargs["vlprune"]`` (None: the deployment's), checked against
    the engine (``n`` patches per image) with an error naming the fix."""
    if raw is None:
        return deployment
    if isinstance(raw, str):  # the canonical key this plugin writes back into the request
        raw = json.loads(raw)
    if not deployment.prunes:
        raise ValueError(
            f'per-request pruning (mm_processor_kwargs "{CONFIG_KEY}") needs an engine started with a pruning '
            f"method (its vision tower keeps every block the methods read); this one runs {deployment.method!r}: "
            f"start it with --hf-overrides naming an encoder-side method"
        )
    settings = parse_settings(raw, where="request")
    if settings.needs_question and not deployment.clip:
        raise ValueError(NEEDS_CLIP)
    settings.check(n)
    return settings_from_key(settings.key(), deployment)


def check_family(settings: PruneSettings, family: str) -> None:
    """Raise the registry's reason when a method does not run on ``family`` ("llava", "llava_next")."""
    if not settings.prunes:
        return
    spec = get_method(settings.method)
    if spec.families is not None and family not in spec.families:
        raise ValueError(f"{settings.method} runs on {', '.join(spec.families)} only, not {family}: "
                         f"{spec.families_why or 'see docs/methods'}")
    if family in spec.family_plans:  # FlowCut's LLaVA-NeXT path: a second cut inside the LLM
        runs = [f for f in spec.families or () if f not in spec.family_plans]
        raise ValueError(
            f"{settings.method} runs on {', '.join(runs)} only under vLLM, not {family}: on {family} it also prunes "
            "inside the LLM (after a decoder layer, positions renumbered), while the plugin fixes each image's "
            "placeholder count before the encoder runs and vLLM's paged KV cache holds every prompt token in every "
            "layer; run it with transformers (vlprune.apply)")


def settings_from_key(key: str, deployment: PruneSettings) -> PruneSettings:
    """``PruneSettings`` back from ``PruneSettings.key()`` (validated by the processor), with the deployment-wide
    fields (clip, budget, newlines) of ``deployment``."""
    return _from_key(key, deployment.clip, deployment.budget, deployment.newlines)


@lru_cache(maxsize=256)
def _from_key(key: str, clip: str | None, budget: str, newlines: str) -> PruneSettings:
    raw = json.loads(key)
    return PruneSettings(raw["method"], raw["keep"], raw["options"], clip, budget, newlines)
