"""Parsing of string-valued model/method arguments (lmms-eval model_args, `vlprune eval --set`)."""
from __future__ import annotations

from typing import Any


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
