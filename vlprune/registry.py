"""Registry of pruning methods, looked up by name (peft/llmc style)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Literal

Stage = Literal["encoder", "llm"]


@dataclass(frozen=True)
class MethodSpec:
    """What the library knows about one registered method."""

    name: str
    config_cls: type
    stage: Stage  # "encoder": prunes vision features before the LLM; "llm": prunes inside decoder layers
    paper: str
    select: Callable[..., Any]  # encoder: select(source, keep, cfg) -> Selection; llm: a scorer factory

    def defaults(self) -> dict[str, Any]:
        cfg = self.config_cls()
        return {f.name: getattr(cfg, f.name) for f in fields(cfg)}


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(name: str, *, config: type, stage: Stage, paper: str) -> Callable:
    """Decorator registering ``select`` (or an LLM scorer) under ``name``."""

    def wrap(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is already registered")
        _REGISTRY[name] = MethodSpec(name=name, config_cls=config, stage=stage, paper=paper, select=fn)
        return fn

    return wrap


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
