"""Checks the command line runs before any work: every method, option and budget, so that a typo in the last
method fails in the first second, not after an hour of the others."""
from __future__ import annotations

from typing import Any, Iterable

from .lmms_plugin_args import parse_int, parse_option, parse_options

FULL = ("none", "full")  # names of the unpruned model where a command accepts it
ALL = "all"  # every registered method


def parse_keeps(text: str, option: str = "--keep") -> list[int]:
    """``"16,32"`` -> [16, 32]; every budget a whole number >= 1."""
    keeps = [parse_int(x.strip(), f"{option} budget", minimum=1) for x in text.split(",") if x.strip()]
    if not keeps:
        raise ValueError(f"{option} is empty; give one or more budgets such as {option} 16,32")
    return keeps


def parse_methods(text: str, allow_full: bool = False, option: str = "--methods") -> list[str]:
    """``"desap, random"`` -> ["desap", "random"]; every name registered (all unknown names in one error);
    ``all`` stands for every registered method (``for_family`` then drops those the model's family cannot run)."""
    from .registry import methods

    known = methods()
    names = [x.strip().lower() for x in text.split(",") if x.strip()]
    if ALL in names:  # every registered method, once, where "all" stands (filtered per family by for_family)
        at = names.index(ALL)
        names = list(dict.fromkeys(names[:at] + sorted(known) + [n for n in names[at + 1 :] if n != ALL]))
    unknown = [n for n in names if n not in known and not (allow_full and n in FULL)]
    if unknown:
        choices = sorted(known) + (["none"] if allow_full else [])
        raise ValueError(f"{option}: unknown method(s) {unknown}; choose from {', '.join(choices)} "
                         "(`vlprune methods` lists them)")
    if not names:
        raise ValueError(f"{option} is empty; name at least one method, e.g. {option} desap")
    return names


def for_family(names: list[str], family: str) -> tuple[list[str], list[str]]:
    """The methods of ``names`` that run on the model ``family`` (an adapter's ``family``), and one "name (why)" per
    method dropped (its ``families`` exclude it)."""
    from .registry import get_method

    kept, skipped = [], []
    for name in names:
        spec = None if name in FULL else get_method(name)
        if spec is not None and spec.families is not None and family not in spec.families:
            skipped.append(f"{name} (runs on {', '.join(spec.families)} only: {spec.families_why})")
        else:
            kept.append(name)
    return kept, skipped


def parse_set(pairs: Iterable[str] | None) -> dict[str, dict[str, Any]]:
    """``["desap.sign=-1", "random.seed=3"]`` -> ``{"desap": {"sign": -1.0}, "random": {"seed": 3}}``, every value
    typed by its method's config (``random.seed=abc`` is refused here, not at generate time)."""
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        method, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ValueError(f"--set expects METHOD.OPTION=VALUE, e.g. --set desap.task_ratio=0.75; got {pair!r}")
        method = method.lower()
        out.setdefault(method, {})[name] = parse_option(method, name, value)
    for method, opts in out.items():
        parse_options(method, opts)  # the config's own range checks, on the combination
    return out


def check_runs(model: Any, names: list[str], keeps: list[int], kwargs_for: Any) -> None:
    """Patch ``model`` with every (method, keep) and unpatch it at once: everything ``apply`` checks (budget vs
    the model's tokens per image, options vs its depth, DeSAP's CLIP) fails here, before the first answer."""
    from . import api

    for name in names:
        if name in FULL:
            continue
        for keep in keeps:
            try:
                api.apply(model, name, keep, **kwargs_for(name))
            except (TypeError, ValueError, NotImplementedError) as e:
                raise type(e)(f"{name} at keep={keep}: {e}") from e
            finally:
                api.remove(model)
