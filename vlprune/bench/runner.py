"""Run a model (full and pruned) over a benchmark in LLaVA's layout: resumable answers files, then scoring."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from .. import api
from .readers import BenchItem, canonical_bench, read
from .score import score_items


def chat_prompt(processor: Any, prompt: str, with_image: bool = True) -> str:
    """The model's own chat template around ``prompt`` (LLaVA-1.5 style "USER: <image>\\n... ASSISTANT:" if none)."""
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": prompt}]
    template = getattr(processor, "chat_template", None) or getattr(getattr(processor, "tokenizer", None), "chat_template", None)
    if template:
        return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return f"USER: {'<image>' + chr(10) if with_image else ''}{prompt} ASSISTANT:"


def _key(record: dict[str, Any], extra: dict[str, Any]) -> str:
    return json.dumps([record.get("question_id"), record.get("prompt"), extra], sort_keys=True, default=str)


def _done(path: Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut off by an interrupted run
                continue
            done[rec["_key"]] = rec
    return done


@torch.no_grad()
def answer_items(
    model: Any, processor: Any, items: list[BenchItem], answers_path: Path, batch_size: int = 8,
    max_new_tokens: int = 128, progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Answer every item, appending LLaVA-format lines to ``answers_path`` as they come; skip those already there."""
    answers_path.parent.mkdir(parents=True, exist_ok=True)
    done = _done(answers_path)
    todo = [it for it in items if _key(it.answer_record(""), it.record_extra) not in done]
    if progress:
        progress(len(items) - len(todo))
    tok = getattr(processor, "tokenizer", processor)
    tok.padding_side = "left"
    with answers_path.open("a") as fh:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            images = [it.load_image() for it in chunk]
            groups: dict[bool, list[int]] = {}
            for i, img in enumerate(images):
                groups.setdefault(img is not None, []).append(i)
            texts: dict[int, str] = {}
            for has_image, idx in groups.items():
                prompts = [chat_prompt(processor, chunk[i].prompt, has_image) for i in idx]
                kwargs = dict(text=prompts, return_tensors="pt", padding=True)
                if has_image:
                    kwargs["images"] = [images[i] for i in idx]
                inputs = processor(**kwargs).to(model.device)
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
                decoded = tok.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
                texts.update({i: t.strip() for i, t in zip(idx, decoded)})
            for i, it in enumerate(chunk):
                rec = it.answer_record(texts[i])
                rec["_key"] = _key(it.answer_record(""), it.record_extra)
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                done[rec["_key"]] = rec
            if progress:
                progress(len(chunk))
    return [done[_key(it.answer_record(""), it.record_extra)] for it in items]


def run_benchmark(
    loaded: Any, bench_spec: str, methods: list[str], keeps: list[int], out_dir: Path, limit: int | None = None,
    batch_size: int = 8, max_new_tokens: int = 128, progress: Callable[[str, int], None] | None = None,
    method_kwargs: Callable[[str], dict] = lambda m: {},
) -> dict[str, Any]:
    """``bench_spec`` is ``name:/path/to/data``. Full model first, then every (method, keep); % of full per row."""
    name, _, data_dir = bench_spec.partition(":")
    bench = canonical_bench(name)
    if not data_dir:
        raise ValueError(f"give the data folder as {name}:/path/to/{name}")
    items = list(read(bench, data_dir))[:limit] if limit else list(read(bench, data_dir))
    model, processor = loaded.model, loaded.processor
    tag = Path(str(loaded.name)).name.replace("/", "_")

    def run(label: str) -> dict[str, Any]:
        path = out_dir / bench / tag / f"{label}.jsonl"
        records = answer_items(model, processor, items, path, batch_size, max_new_tokens,
                               (lambda n: progress(label, n)) if progress else None)
        result = score_items(bench, items, records)
        result["answers_file"] = str(path)
        return result

    api.remove(model)
    full = run("full")
    report: dict[str, Any] = {"model": loaded.name, "bench": bench, "n": len(items), "full": full, "results": []}
    for method in methods:
        for keep in keeps:
            api.apply(model, method, keep, **method_kwargs(method))
            try:
                res = run(f"{method}-{keep}")
            finally:
                api.remove(model)
            res.update(method=method, keep=keep, relative=res["score"] / full["score"] if full["score"] else float("nan"))
            report["results"].append(res)
    return report
