"""The ``--json`` file of ``vlprune eval``: rewritten (atomically) after every finished row, so a run that dies
keeps what it measured, and read back by the next run with the same configuration to skip those rows."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def fingerprint(path: str | Path) -> str:
    """Identity of a checkpoint: a hash of its config.json and of its weight files' names and sizes (a hub id
    that is not a local folder is its own identity)."""
    folder = Path(path)
    if not folder.is_dir():
        return str(path)
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.name == "config.json":
            h.update(f.read_bytes())
        elif f.suffix in (".safetensors", ".bin"):
            h.update(f"{f.relative_to(folder)}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} in the file, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)]


class ReportFile:
    """One run's results file. ``previous`` holds the rows a compatible earlier run finished."""

    def __init__(self, path: Path | None, config: dict[str, Any], fresh: bool = False) -> None:
        self.path, self.config = path, config
        self.previous: dict[str, Any] = {}
        if path is None or fresh or not path.exists():
            return
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"--json {path} exists but is not a readable results file ({e}); "
                             "pass --fresh to overwrite it or another --json path") from None
        if not isinstance(old, dict) or "config" not in old:
            raise ValueError(f"--json {path} holds results without a run configuration (not written by a resumable "
                             "vlprune eval); pass --fresh to overwrite it or another --json path")
        diff = _differences(old["config"], config)
        if diff:
            raise ValueError(f"--json {path} holds results of another configuration ({'; '.join(diff)}); "
                             "pass --fresh to overwrite it or another --json path to keep both")
        self.previous = old

    def done_full(self) -> dict | None:
        """The finished unpruned row of the earlier run, if any."""
        return self.previous.get("full")

    def done_row(self, method: str, keep: int, options: dict) -> dict | None:
        """The earlier run's row for (method, keep) if it ran with the same options."""
        for row in self.previous.get("results", []):
            if row["method"] == method and row["keep"] == keep and row.get("options", {}) == options:
                return row
        return None

    def write(self, report: dict[str, Any], complete: bool) -> None:
        """Replace the file with ``report`` (+ config, complete flag) in one rename: never half a file."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**report, "config": self.config, "complete": complete}, indent=2))
        os.replace(tmp, self.path)
