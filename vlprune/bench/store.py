"""Resumable answers files that never mix two runs, never lose an answer and have one writer.

``answers.jsonl`` stays a LLaVA answers file (the official scripts read it);
beside it:

* ``answers.jsonl.run.json`` -- the run configuration the file is bound to
  (:mod:`.runconfig`), written before the first answer; every answer line
  carries its hash as ``_run``.  Opening the file with another configuration
  raises :class:`RunConfigMismatch` listing what differs;
* ``answers.jsonl.lock`` -- an ``fcntl`` lock held while a run writes; a
  second writer gets :class:`AnswersFileLocked` (the kernel drops the lock when
  its holder dies, even by ``kill -9``).

Each batch of answers is appended with one ``write`` on an ``O_APPEND``
descriptor and ``fsync``-ed.  A last line cut off by a crash is removed on
open (its question is simply answered again); a damaged line anywhere else
stops the run with its line number rather than guess.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .answers import check_record
from .runconfig import config_diff, config_sha256

__all__ = [
    "AnswersFile",
    "AnswersFileError",
    "AnswersFileLocked",
    "RunConfigMismatch",
    "answer_key",
    "lock_path",
    "sidecar_path",
]

FORMAT = 1
RUN_FIELD = "_run"
EXTRA_FIELDS = ("round_id", "options", "option_char")  # fields that tell two passes of a question apart


class AnswersFileError(RuntimeError):
    """An answers file cannot be resumed safely; the message says how to fix it."""


class RunConfigMismatch(AnswersFileError):
    """The answers file belongs to another run configuration."""


class AnswersFileLocked(AnswersFileError):
    """Another process is writing this answers file."""


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".run.json")


def lock_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".lock")


def answer_key(record: Mapping[str, Any]) -> str:
    """Which question an answer line answers: ``question_id``, ``prompt`` and the
    pass fields (MMBench rounds).  Repeated questions are told apart by order."""
    extra = {k: record[k] for k in EXTRA_FIELDS if k in record}
    return json.dumps([record.get("question_id"), record.get("prompt", ""), extra], sort_keys=True, default=str)


class AnswersFile:
    """One run's answers file, opened for resuming and appending (a context manager)."""

    def __init__(self, path: str | Path, config: Mapping[str, Any], recorded: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.config = json.loads(json.dumps(dict(config), default=str))
        self.run_id = config_sha256(self.config)
        self.recorded = dict(recorded or {})
        self.records: list[dict[str, Any]] = []
        self.repaired_bytes = 0  # size of the cut-off last line removed on open
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ open / close

    def __enter__(self) -> AnswersFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._bind()
            self._repair_and_read()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _lock(self) -> None:
        import fcntl

        fd = os.open(lock_path(self.path), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise AnswersFileLocked(
                f"{self.path} is being written by another run (pid {holder}, lock {lock_path(self.path)}); "
                "wait for it to finish, or give this run another --out-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _bind(self) -> None:
        """Check the file's run configuration against ours, or record ours."""
        has_answers = self.path.exists() and self.path.stat().st_size > 0
        sidecar = sidecar_path(self.path)
        stored = None
        if sidecar.exists():
            try:
                stored = json.loads(sidecar.read_text(encoding="utf-8"))
            except (ValueError, OSError):
                stored = None
        if has_answers and not isinstance(stored, dict):
            raise AnswersFileError(
                f"{self.path} holds answers but no readable run configuration ({sidecar.name} is "
                f"{'unreadable' if sidecar.exists() else 'missing'}), so nobody can tell which run wrote them; "
                "move the file away (or give this run another --out-dir) to answer afresh"
            )
        if has_answers and stored.get("config_sha256") != self.run_id:
            differences = config_diff(stored.get("config", {}), self.config) or ["(the stored hash does not match)"]
            raise RunConfigMismatch(
                f"{self.path} was written by another run configuration; resuming would mix answers. "
                "What differs:\n  " + "\n  ".join(differences)
                + "\nRerun with the file's settings, or give this run another --out-dir (or move the file away)"
            )
        if not has_answers:
            self._write_sidecar()

    def _write_sidecar(self) -> None:
        payload = {"format": FORMAT, "config_sha256": self.run_id, "config": self.config, "recorded": self.recorded}
        sidecar = sidecar_path(self.path)
        tmp = sidecar.with_name(sidecar.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True, default=str)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, sidecar)

    def _repair_and_read(self) -> None:
        if not self.path.exists():
            self.path.touch()
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):  # a write cut off mid-line: drop the fragment
            keep = data.rfind(b"\n") + 1
            self.repaired_bytes = len(data) - keep
            os.truncate(self.path, keep)
            data = data[:keep]
        for number, raw in enumerate(data.splitlines(), start=1):
            if not raw.strip():
                continue
            self.records.append(self._parse(number, raw))

    def _parse(self, number: int, raw: bytes) -> dict[str, Any]:
        fix = f"; delete line {number} of {self.path} (its question is then answered again) and rerun"
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise AnswersFileError(f"line {number} of {self.path} is not JSON{fix}") from None
        reason = check_record(record)
        if reason is not None:
            raise AnswersFileError(f"line {number} of {self.path} is not an answer line ({reason}){fix}")
        if record.get(RUN_FIELD) != self.run_id:
            raise AnswersFileError(
                f"line {number} of {self.path} was not written by this run configuration "
                f"({RUN_FIELD}={record.get(RUN_FIELD)!r}, expected {self.run_id!r}){fix}"
            )
        return record

    # ------------------------------------------------------------------ resume / append

    def match(self, keys: Iterable[str]) -> list[dict[str, Any] | None]:
        """The stored answer of each question key (in question order; the k-th
        repeat of a key gets the k-th line with that key), ``None`` if unanswered."""
        by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in self.records:
            by_key[answer_key(record)].append(record)
        seen: dict[str, int] = defaultdict(int)
        out: list[dict[str, Any] | None] = []
        for key in keys:
            stored = by_key.get(key, [])
            out.append(stored[seen[key]] if seen[key] < len(stored) else None)
            seen[key] += 1
        return out

    def append(self, records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Append answer lines (stamped with ``_run``) in one write, then fsync."""
        if self._lock_fd is None:
            raise AnswersFileError(f"{self.path} is not open; use `with AnswersFile(...) as f:`")
        stamped = [{**record, RUN_FIELD: self.run_id} for record in records]
        payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in stamped).encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        self.records.extend(stamped)
        return stamped
