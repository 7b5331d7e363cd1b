"""Parsing of string-valued model/method arguments (lmms-eval model_args, `vlprune eval --set`).

Every value is checked where it is parsed: a budget must be a whole number, a dtype one of the known names, a
method option a field of the method's config with a value of that field's type. The errors are ``ValueError``s
that name the argument and what to write instead.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Literal, Union

import torch

DTYPE_NAMES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
}


def coerce(value: Any) -> Any:
    """model_args arrive as strings: '64' -> 64, '0.5' -> 0.5, 'true' -> True, 'none' -> None."""
    if not isinstance(value, str):
        return value
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def parse_int(value: Any, name: str, minimum: int | None = None) -> int:
    """A whole number: 64 or "64"; "16.7", 16.7, "abc" and True are refused (no silent truncation)."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, str):
        try:
            value, ok = int(value.strip()), True
        except ValueError:
            ok = False
    if not ok:
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def parse_dtype(name: Any) -> torch.dtype:
    """``"bfloat16"``/``"bf16"``/``torch.bfloat16`` -> ``torch.bfloat16``; an unknown name names the choices."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).strip().lower().removeprefix("torch.")
    if key not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPE_NAMES)}")
    return DTYPE_NAMES[key]


def _convert(raw: Any, kind: Any, label: str) -> Any:
    """``raw`` (usually a string) as a value of the annotation ``kind``; ValueError naming ``label`` if not."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Union or type(kind).__name__ == "UnionType":
        if isinstance(raw, str) and raw.strip().lower() == "none" and type(None) in args:
            return None
        errors = []
        for arm in (a for a in args if a is not type(None)):
            try:
                return _convert(raw, arm, label)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if errors else f"{label}: cannot parse {raw!r}")
    if origin is Literal:
        if raw in args:
            return raw
        raise ValueError(f"{label} must be one of {list(args)}, got {raw!r}")
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        low = str(raw).strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ValueError(f"{label} must be true or false, got {raw!r}")
    if kind is int:
        return parse_int(raw, label)
    if kind is float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        try:
            return float(str(raw))
        except ValueError:
            raise ValueError(f"{label} must be a number, got {raw!r}") from None
    if kind is str:
        return str(raw)
    if origin in (tuple, list):
        items = raw
        if isinstance(raw, str):
            text = raw.strip()
            try:
                items = json.loads(text) if text.startswith("[") else [x for x in text.replace(";", ",").split(",") if x]
            except json.JSONDecodeError:
                raise ValueError(f"{label} must be a list such as [0.5, 0.25], got {raw!r}") from None
        if not isinstance(items, (list, tuple)):
            items = [items]
        inner = args[0] if args else Any
        values = [x if inner is Any else _convert(x, inner, f"{label}[{i}]") for i, x in enumerate(items)]
        return tuple(values) if origin is tuple else values
    return coerce(raw)


def parse_option(method: str, name: str, raw: Any) -> Any:
    """One option of a registered method, typed by its config dataclass (``random.seed`` must be an int)."""
    from .registry import get_method

    spec = get_method(method)
    hints = typing.get_type_hints(spec.config_cls)
    names = sorted(f.name for f in dataclasses.fields(spec.config_cls))
    if name not in names:
        raise ValueError(f"{spec.name} has no option {name!r}; its options are {names}")
    return _convert(raw, hints.get(name, Any), f"{spec.name}.{name}")


def parse_options(method: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Every option of ``method`` parsed and checked together (the config's own checks run too)."""
    from .registry import get_method

    out = {name: parse_option(method, name, value) for name, value in raw.items()}
    try:
        get_method(method).config_cls(**out)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{method} options {out}: {e}") from None
    return out
