"""Run a model (full and pruned) over a benchmark in LLaVA's layout: resumable answers files, then scoring."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from .. import api
from .readers import BenchItem, canonical_bench, read
from .runconfig import describe, model_fingerprint, questions_sha256
from .score import NothingScored, score_items
from .store import AnswersFile, AnswersFileError, answer_key
from .video_readers import VIDEO_BENCHMARKS

# what a benchmark run refuses with a message (never a wrong number): see .store and .score
BenchRunError = (AnswersFileError, NothingScored)


def chat_prompt(processor: Any, prompt: str, with_image: bool | int = True, with_video: bool | int = False) -> str:
    """The model's own chat template around ``prompt`` (LLaVA-1.5 style "USER: <image>\\n... ASSISTANT:" if none);
    ``with_image`` / ``with_video``: whether one image (video) comes first, or how many."""
    content = [{"type": "image"}] * int(with_image) + [{"type": "video"}] * int(with_video) + \
        [{"type": "text", "text": prompt}]
    template = getattr(processor, "chat_template", None) or getattr(getattr(processor, "tokenizer", None), "chat_template", None)
    if template:
        return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    visuals = ("<image>" + chr(10)) * int(with_image) + ("<video>" + chr(10)) * int(with_video)
    return f"USER: {visuals}{prompt} ASSISTANT:"


@torch.no_grad()
def answer_items(
    model: Any, processor: Any, items: list[BenchItem], answers_path: Path, batch_size: int = 8,
    max_new_tokens: int = 128, progress: Callable[[int], None] | None = None, *,
    config: dict[str, Any] | None = None, recorded: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Answer every item, appending LLaVA-format lines to ``answers_path`` batch by batch; skip those already
    there.  ``config`` is the run configuration the file is bound to (see :mod:`.store`; a file written under
    another configuration is refused); by default the generation settings alone."""
    if config is None:
        config = {"generation": generation_settings(max_new_tokens)}
    keys = [answer_key(it.answer_record("")) for it in items]
    with AnswersFile(answers_path, config, recorded) as store:
        if store.repaired_bytes:
            warnings.warn(f"{answers_path}: removed a cut-off last line ({store.repaired_bytes} bytes); "
                          "its question is answered again", stacklevel=2)
        answers = store.match(keys)
        todo = [i for i, a in enumerate(answers) if a is None]
        if progress:
            progress(len(items) - len(todo))
        tok = getattr(processor, "tokenizer", processor)
        tok.padding_side = "left"
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            texts = _generate(model, processor, tok, [items[i] for i in chunk], max_new_tokens)
            stamped = store.append(items[i].answer_record(text) for i, text in zip(chunk, texts))
            for i, record in zip(chunk, stamped):
                answers[i] = record
            if progress:
                progress(len(chunk))
    return answers  # type: ignore[return-value]  (every slot is filled)


def generation_settings(max_new_tokens: int) -> dict[str, Any]:
    """The generation settings of :func:`answer_items` (greedy), as recorded in the run configuration."""
    return {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1}


def _generate(model: Any, processor: Any, tok: Any, chunk: list[BenchItem], max_new_tokens: int) -> list[str]:
    """Greedy answers of one batch (items with an image, a video or neither generated apart)."""
    images = [it.load_image() for it in chunk]
    videos = [it.load_video() if getattr(it, "video", None) is not None else None for it in chunk]
    groups: dict[str, list[int]] = {}
    for i, (img, vid) in enumerate(zip(images, videos)):
        groups.setdefault("video" if vid is not None else "image" if img is not None else "text", []).append(i)
    texts: dict[int, str] = {}
    for kind, idx in groups.items():
        prompts = [chat_prompt(processor, chunk[i].prompt, kind == "image", kind == "video") for i in idx]
        kwargs = dict(text=prompts, return_tensors="pt", padding=True)
        if kind == "image":
            kwargs["images"] = [images[i] for i in idx]
        if kind == "video":
            kwargs["videos"] = [videos[i] for i in idx]
        inputs = processor(**kwargs).to(model.device)
        out = model.generate(**inputs, **generation_settings(max_new_tokens))
        decoded = tok.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        texts.update({i: t.strip() for i, t in zip(idx, decoded)})
    return [texts[i] for i in range(len(chunk))]


def run_benchmark(
    loaded: Any, bench_spec: str, methods: list[str], keeps: list[int], out_dir: Path, limit: int | None = None,
    batch_size: int = 8, max_new_tokens: int = 128, progress: Callable[[str, int], None] | None = None,
    method_kwargs: Callable[[str], dict] = lambda m: {},
) -> dict[str, Any]:
    """``bench_spec`` is ``name:/path/to/data``. Full model first, then every (method, keep); % of full per row
    (video QA benchmarks: the answers files only, ``score`` None: their score needs the GPT judge)."""
    name, _, data_dir = bench_spec.partition(":")
    bench = canonical_bench(name)
    if not data_dir:
        raise ValueError(f"give the data folder as {name}:/path/to/{name}")
    all_items = list(read(bench, data_dir))
    items = all_items[:limit] if limit else all_items
    model, processor = loaded.model, loaded.processor
    tag = Path(str(loaded.name)).name.replace("/", "_")
    api.remove(model)
    base = run_config_base(loaded, bench, data_dir, all_items, max_new_tokens)
    recorded = run_recorded(model, batch_size)

    def run(label: str, method: str = "full", keep: int | None = None, options: dict | None = None) -> dict[str, Any]:
        path = out_dir / bench / tag / f"{label}.jsonl"
        config = {**base, "method": method, "keep": keep, "options": describe(options or {})}
        records = answer_items(model, processor, items, path, batch_size, max_new_tokens,
                               (lambda n: progress(label, n)) if progress else None, config=config, recorded=recorded)
        if bench in VIDEO_BENCHMARKS:  # scored by a GPT judge: `vlprune score --judge-url ...` on each file
            return {"answers_file": str(path), "n_answers": len(records), "score": None}
        result = score_items(bench, items, records)
        result["answers_file"] = str(path)
        return result

    full = run("full")
    report: dict[str, Any] = {"model": loaded.name, "bench": bench, "n": len(items), "full": full, "results": []}
    for method in methods:
        for keep in keeps:
            options = method_kwargs(method)
            api.apply(model, method, keep, **options)
            try:
                res = run(f"{method}-{keep}", method, keep, options)
            finally:
                api.remove(model)
            relative = None if res["score"] is None else res["score"] / full["score"] if full["score"] else float("nan")
            res.update(method=method, keep=keep, relative=relative)
            report["results"].append(res)
    return report


def run_config_base(loaded: Any, bench: str, data_dir: str, items: list[BenchItem], max_new_tokens: int) -> dict:
    """What every answers file of one ``run_benchmark`` call shares in its run configuration
    (the model must be unpatched: its weights are fingerprinted)."""
    return {
        "bench": bench,
        "data_dir": os.path.abspath(data_dir),
        "questions_sha256": questions_sha256(items),
        "model": model_fingerprint(loaded.model, str(loaded.name)),
        "dtype": str(getattr(loaded.model, "dtype", None)),
        "generation": generation_settings(max_new_tokens),
    }


def run_recorded(model: Any, batch_size: int) -> dict[str, Any]:
    """Recorded beside the configuration, never compared: a resume may change them."""
    import datetime
    import platform

    import transformers

    from .. import __version__

    return {
        "batch_size": batch_size, "device": str(getattr(model, "device", "")), "vlprune": __version__,
        "transformers": transformers.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
