"""Where a checkpoint comes from: a local folder, the Hugging Face cache, or the hub. Checked before loading so
that an offline machine fails at once with the fix, not after minutes of download retries."""
from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_TRUE = ("1", "on", "yes", "true")


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set: nothing may be downloaded."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def cached(repo_id: str) -> bool:
    """``repo_id``'s config.json is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - an invalid id is simply not cached
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """A TCP connection to the hub endpoint (HF_ENDPOINT) opens within ``timeout`` seconds."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def check_source(name: str, option: str = "--model") -> None:
    """Raise a one-paragraph error unless ``name`` is a local folder with config.json, a cached hub id, or a hub
    id that can be downloaded now."""
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "config.json").exists():
            raise FileNotFoundError(f"{option} {name}: the folder has no config.json; pass a folder written by "
                                    "save_pretrained (model + processor) or a hub id")
        return
    if name.startswith((".", "/", "~")) or not _HUB_ID.match(name):
        raise FileNotFoundError(f"{option} {name}: no such folder (and not a hub id like owner/name)")
    if cached(name):
        return
    local = "pass a local folder holding the checkpoint (config.json, weights, processor files)"
    if offline():
        raise FileNotFoundError(
            f"{option} {name}: not a local folder and not in the Hugging Face cache ({_cache_dir()}), and "
            f"HF_HUB_OFFLINE=1 forbids downloading it: {local}, or unset HF_HUB_OFFLINE on a machine with network")
    if not hub_reachable():
        raise ConnectionError(
            f"{option} {name}: not a local folder, not in the Hugging Face cache ({_cache_dir()}), and the hub "
            f"cannot be reached from here: {local}, or download it where there is network (HF_HUB_OFFLINE=1 then "
            "uses the cache only)")
