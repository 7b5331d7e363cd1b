"""Registry of pruning methods, looked up by name (peft/llmc style).

A method has an encoder-side part (``encoder(source, keep, cfg) -> Selection``), an in-LLM part
(``plan(keep, num_layers, cfg) -> list[LLMStage]``), or both (VisionDrop prunes at the encoder output and
inside the LLM).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable


# What ``vlprune.last_selection(model).indices`` holds after each built-in method (the ``kept`` column of
# ``vlprune methods``). A token that stands for no patch (VisionZip's [CLS]) has no index.
KEPT_TOKENS: dict[str, str] = {
    "desap": "keep patches (task-relevant + salient); dropped patches are average-merged into their nearest kept "
             "token (assign) unless merge=False",
    "vispruner": "keep patches (important by [CLS] attention + diverse); the rest dropped",
    "visionzip": "keep-1 entries: the [CLS] token (no patch, so no index) + dominant patches + contextual tokens "
                 "(each index is its merge target; assign maps every merged patch); keep entries if include_cls=False",
    "random": "keep uniformly random patches, in raster order",
    "fastv": "every token up to layer K, then keep patches (by attention) in the later layers; indices = the "
             "patches whose tokens survive",
    "fastv+bimask": "as fastv, ranked with ASAP's bidirectional mask",
    "asap": "as fastv (dropped before `layer`), after ASAP's consolidation; indices = the surviving patches",
    "visiondrop": "keep is the layer-averaged count (~1.5x keep leave the encoder, fewer after each LLM stage); "
                  "indices = the patches whose tokens survive the last stage, fewer than keep",
}


@dataclass(frozen=True)
class MethodSpec:
    """What the library knows about one registered method."""

    name: str
    config_cls: type
    paper: str
    encoder: Callable[..., Any] | None = field(default=None, repr=False)
    plan: Callable[..., Any] | None = field(default=None, repr=False)
    kept_tokens: str = field(default="", repr=False)
    families: tuple[str, ...] | None = field(default=None, repr=False)  # adapters' ``family``; None: every one
    families_why: str = field(default="", repr=False)
    # per family, an in-LLM plan that replaces ``plan`` there (FlowCut's LLaVA-NeXT path cuts after LLM layer 1)
    family_plans: dict[str, Callable[..., Any]] = field(default_factory=dict, repr=False)
    # per family, adapter options the method runs with (FlowCut on LLaVA-NeXT: newlines="none"); others refused
    adapter_options: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return f"MethodSpec({self.name!r}, stage={self.stage!r}, paper={self.paper!r}, defaults={self.defaults()})"

    @property
    def kept(self) -> str:
        """What ``last_selection(model).indices`` holds after this method (see ``KEPT_TOKENS``)."""
        return self.kept_tokens or KEPT_TOKENS.get(self.name, "the patches whose tokens were kept")

    @property
    def stage(self) -> str:
        """"encoder", "llm" or "encoder+llm"."""
        return "+".join(s for s, f in (("encoder", self.encoder), ("llm", self.plan)) if f is not None)

    def defaults(self) -> dict[str, Any]:
        cfg = self.config_cls()
        return {f.name: getattr(cfg, f.name) for f in fields(cfg)}


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(
    name: str, *, config: type, paper: str, encoder: Callable | None = None, plan: Callable | None = None,
    kept: str = "", families: tuple[str, ...] | None = None, families_why: str = "",
    family_plans: dict[str, Callable] | None = None, adapter_options: dict[str, dict[str, Any]] | None = None,
) -> MethodSpec:
    """Register a method under ``name``; at least one of ``encoder`` / ``plan`` is required.
    ``kept`` says what its ``last_selection(model).indices`` hold; ``families`` limits it to those model families
    (with per-image budgets), ``families_why`` says why in the error ``apply`` raises elsewhere. ``family_plans``:
    per family, the in-LLM plan used there instead of ``plan``; ``adapter_options``: per family, the adapter options
    the method needs (set when not given, refused when given otherwise)."""
    if name in _REGISTRY:
        raise ValueError(f"method {name!r} is already registered")
    if encoder is None and plan is None:
        raise ValueError("a method needs an encoder-side selection, an in-LLM plan, or both")
    spec = MethodSpec(name=name, config_cls=config, paper=paper, encoder=encoder, plan=plan, kept_tokens=kept,
                      families=families, families_why=families_why, family_plans=dict(family_plans or {}),
                      adapter_options=dict(adapter_options or {}))
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


def methods() -> MethodTable:
    """All registered methods, by name, with their paper and default options."""
    from . import methods as _  # noqa: F401

    return MethodTable(sorted(_REGISTRY.items()))


class MethodTable(dict):
    """``vlprune.methods()``: a dict name -> MethodSpec that prints as a table."""

    def __repr__(self) -> str:
        width = max((len(n) for n in self), default=6)
        lines = [f"{'method':<{width}}  {'stage':<11}  paper / defaults"]
        for name, spec in self.items():
            opts = ", ".join(f"{k}={v!r}" for k, v in spec.defaults().items())
            lines.append(f"{name:<{width}}  {spec.stage:<11}  {spec.paper}; {opts}")
        return "\n".join(lines)

    _repr_pretty_ = lambda self, p, cycle: p.text(repr(self))  # noqa: E731  (IPython / Jupyter)


CHECKPOINT_DEFAULTS = "vlprune_method_options"  # model.config attribute: a checkpoint's per-method defaults


def checkpoint_defaults(model: Any, method: str) -> dict[str, Any]:
    """The option defaults a checkpoint carries for ``method`` (``method_options.json``, attached to
    ``model.config`` by ``vlprune.testbed.load`` / ``vlprune eval``); explicit options override them."""
    table = getattr(getattr(model, "config", None), CHECKPOINT_DEFAULTS, None) or {}
    return dict(table.get(method, {}))
