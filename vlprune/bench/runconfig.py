"""The run configuration an answers file is bound to: what was run, on what, how.

Two runs may share an answers file only if their configurations are equal
(:func:`config_diff` says what differs otherwise).  The configuration holds the
model id with its hub revision or a hash of its weights, dtype, method,
options, keep, generation settings, the data folder and a hash of the
questions; what does not change the answers' meaning (batch size, device,
library versions, time) is recorded beside it but not compared.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["config_diff", "config_sha256", "describe", "model_fingerprint", "questions_sha256"]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_CHUNK = 1 << 23


def config_sha256(config: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-able configuration."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key in sorted(value):
            out.update(_flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``"key: <old> in the file, <new> now"`` for every setting that differs (dotted keys)."""
    a, b = _flatten(json.loads(json.dumps(old, default=str))), _flatten(json.loads(json.dumps(new, default=str)))
    missing = object()
    lines = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key, missing), b.get(key, missing)
        if x != y:
            shown_x = "(absent)" if x is missing else json.dumps(x)
            shown_y = "(absent)" if y is missing else json.dumps(y)
            lines.append(f"{key}: {shown_x} in the file, {shown_y} now")
    return lines


def _hash_files(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode("utf-8") + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(folder: str | Path) -> str | None:
    """sha256 over the weight files (and ``config.json``) of a local checkpoint folder, or ``None``."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.iterdir() if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name == "config.json"))
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        return None
    return _hash_files(files)


def _state_sha256(model: Any) -> str:
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode("utf-8"))
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_fingerprint(model: Any, name: str) -> dict[str, Any]:
    """``{"id", "class", and "revision" (hub commit) or "weights_sha256"}`` of a loaded model.

    A local folder is hashed (its weight files); a hub checkpoint is named by
    the commit ``from_pretrained`` resolved; a model built in memory by a hash
    of its parameters."""
    config = getattr(model, "config", None)
    source = getattr(config, "_name_or_path", "") or name
    out: dict[str, Any] = {"id": str(name), "class": type(model).__name__}
    for candidate in (name, source):
        digest = weights_sha256(candidate) if candidate else None
        if digest:
            out["weights_sha256"] = digest
            return out
    commit = getattr(config, "_commit_hash", None)
    if commit:
        out["revision"] = commit
    else:
        out["weights_sha256"] = _state_sha256(model)
    return out


def describe(value: Any) -> Any:
    """A JSON-able description of a method option: plain values as they are,
    a local checkpoint folder with its weights hash, objects by class and name."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (str, Path)):
        digest = weights_sha256(value) if Path(value).is_dir() else None
        return {"path": str(value), "weights_sha256": digest} if digest else str(value)
    if isinstance(value, Mapping):
        return {str(k): describe(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    config = getattr(value, "config", None)
    source = getattr(config, "_name_or_path", None) or getattr(value, "name_or_path", None)
    return f"<{type(value).__name__}{' ' + str(source) if source else ''}>"


def questions_sha256(items: Iterable[Any]) -> str:
    """Hash of the questions as the model sees them: ids, prompts, images (videos and their frame counts), extra
    answer fields."""
    digest = hashlib.sha256()
    for item in items:
        image = item.image
        if image is None:
            ref = None
        elif getattr(image, "path", None) is not None:
            ref = os.path.abspath(image.path)  # "data/x.jpg" and "/abs/data/x.jpg" are one image
        else:
            ref = hashlib.sha256(str(getattr(image, "b64", "")).encode("ascii", "replace")).hexdigest()
        row = [item.question_id, item.prompt, ref, item.record_extra]
        video = getattr(item, "video", None)
        if video is not None:  # video questions: the file and how many frames are sampled from it
            row.append([os.path.abspath(video.path), video.num_frames])
        digest.update(json.dumps(row, sort_keys=True, default=str).encode("utf-8") + b"\n")
    return digest.hexdigest()
