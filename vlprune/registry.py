"""Registry of pruning methods, looked up by name (peft/llmc style).

A method has an encoder-side part (``encoder(source, keep, cfg) -> Selection``), an in-LLM part
(``plan(keep, num_layers, cfg) -> list[LLMStage]``), or both (VisionDrop prunes at the encoder output and
inside the LLM).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable


@dataclass(frozen=True)
class MethodSpec:
    """What the library knows about one registered method."""

    name: str
    config_cls: type
    paper: str
    encoder: Callable[..., Any] | None = None
    plan: Callable[..., Any] | None = None

    @property
    def stage(self) -> str:
        """"encoder", "llm" or "encoder+llm"."""
        return "+".join(s for s, f in (("encoder", self.encoder), ("llm", self.plan)) if f is not None)

    def defaults(self) -> dict[str, Any]:
        cfg = self.config_cls()
        return {f.name: getattr(cfg, f.name) for f in fields(cfg)}


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(
    name: str, *, config: type, paper: str, encoder: Callable | None = None, plan: Callable | None = None
) -> MethodSpec:
    """Register a method under ``name``; at least one of ``encoder`` / ``plan`` is required."""
    if name in _REGISTRY:
        raise ValueError(f"method {name!r} is already registered")
    if encoder is None and plan is None:
        raise ValueError("a method needs an encoder-side selection, an in-LLM plan, or both")
    spec = MethodSpec(name=name, config_cls=config, paper=paper, encoder=encoder, plan=plan)
    _REGISTRY[name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    from . import methods as _  # noqa: F401  (registers the built-in methods)

    key = name.lower().strip()
    if key not in _REGISTRY:
        raise ValueError(
            f"unknown pruning method {name!r}; choose one of {sorted(_REGISTRY)} (see vlprune.methods())"
        )
    return _REGISTRY[key]


def methods() -> dict[str, MethodSpec]:
    """All registered methods, by name, with their paper and default options."""
    from . import methods as _  # noqa: F401

    return dict(sorted(_REGISTRY.items()))
