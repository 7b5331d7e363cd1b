"""Fixtures that drive the real lmms-eval (its CLI, in subprocesses) on a tiny LLaVA and a local task pair.

The reference answers come from plain transformers (no vlprune, no lmms-eval); the task's targets are chosen
from them so that the expected scores are known before lmms-eval runs: 3 of 5 right on each task.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import toy_task  # noqa: E402

from toy_task import KEEP, RIGHT  # noqa: E402

BIN = Path(sys.executable).parent


@dataclass
class Reference:
    answers: list[str]  # greedy answers of the unpruned model, cut at the task's stop string
    nll: list[list[float]]  # mean NLL of every choice's tokens, per doc


@dataclass
class Run:
    results: dict
    samples: dict[str, dict[int, dict]]  # task -> doc_id -> logged sample
    kept: list[dict]  # the plugin's kept_log lines, all ranks
    kept_files: list[Path]
    log: str

    def score(self, task: str, metric: str) -> float:
        return self.results["results"][task][f"{metric},none"]


def _reference(model_dir: Path, images: list[Path]) -> Reference:
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    proc = AutoProcessor.from_pretrained(model_dir)
    tok = proc.tokenizer
    answers, nll = [], []
    with torch.no_grad():
        for path, q in zip(images, toy_task.QUESTIONS):
            img = Image.open(path).convert("RGB")
            prompt = f"USER: <image>\n{q} ASSISTANT:"  # LLaVA-1.5's format (the tiny processor has no template)
            inputs = proc(text=[prompt], images=[img], return_tensors="pt")
            ids = model.generate(**inputs, max_new_tokens=toy_task.MAX_NEW_TOKENS, do_sample=False)
            text = tok.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for stop in toy_task.UNTIL:
                text = text.split(stop)[0]
            answers.append(text.strip())
            row = []
            for choice in toy_task.CHOICES:
                full = proc(text=[f"{prompt} {choice}"], images=[img], return_tensors="pt")
                n = len(tok(f"{prompt} {choice}")["input_ids"]) - len(tok(prompt)["input_ids"])
                logp = model(**full).logits[0, -n - 1 : -1].log_softmax(-1)
                target = full["input_ids"][0, -n:]
                row.append(float(-logp.gather(-1, target[:, None]).mean()))
            nll.append(row)
    return Reference(answers, nll)


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    """(model dir, include path, reference): the tiny LLaVA on disk and the two local tasks."""
    root = tmp_path_factory.mktemp("lmms")
    model_dir = toy_task.save_tiny_llava(root / "model")
    images = toy_task.write_images(root / "data")
    ref = _reference(model_dir, images)
    gen_targets = [a if i in RIGHT else "no such answer" for i, a in enumerate(ref.answers)]
    best = [min(range(len(r)), key=r.__getitem__) for r in ref.nll]
    labels = [b if i in RIGHT else (b + 1) % len(toy_task.CHOICES) for i, b in enumerate(best)]
    include = toy_task.write_task(root, images, gen_targets, labels)
    return model_dir, include, ref


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(root / "hf"),
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return env


def lmms_eval_command(model_dir: Path, include: Path, out: Path, method: str, batch_size: int,
                      processes: int = 1) -> list[str]:
    """The command as a user types it (README): ``python -m lmms_eval`` or ``accelerate launch ... -m lmms_eval``."""
    args = f"pretrained={model_dir},method={method},keep={KEEP},device=cpu,dtype=float32,kept_log={out / 'kept.jsonl'}"
    launcher = [str(BIN / "python")] if processes == 1 else \
        [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(processes)]
    return launcher + ["-m", "lmms_eval", "--model", "vlprune", "--model_args", args,
                       "--tasks", "vlprune_toy_gen,vlprune_toy_mc", "--include_path", str(include),
                       "--batch_size", str(batch_size), "--output_path", str(out), "--log_samples"]


@pytest.fixture(scope="session")
def run_lmms_eval(toy, tmp_path_factory):
    """run(method, batch_size, processes) -> Run; each distinct run happens once per session."""
    model_dir, include, _ = toy
    done: dict[tuple, Run] = {}

    def run(method: str, batch_size: int, processes: int = 1) -> Run:
        key = (method, batch_size, processes)
        if key not in done:
            out = tmp_path_factory.mktemp(f"out-{method}-b{batch_size}-p{processes}")
            cmd = lmms_eval_command(model_dir, include, out, method, batch_size, processes)
            proc = subprocess.run(cmd, env=_env(out), capture_output=True, text=True, timeout=600)
            log = proc.stdout + proc.stderr
            assert proc.returncode == 0, f"lmms-eval failed ({' '.join(cmd)}):\n{log[-6000:]}"
            results = json.loads(Path(glob.glob(str(out / "*" / "*_results.json"))[0]).read_text())
            samples = {}
            for task in ("vlprune_toy_gen", "vlprune_toy_mc"):
                path = glob.glob(str(out / "*" / f"*_samples_{task}.jsonl"))[0]
                rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
                samples[task] = {r["doc_id"]: r for r in rows}
            files = sorted(out.glob("kept.jsonl*"))
            kept = [json.loads(line) for f in files for line in f.read_text().splitlines()]
            done[key] = Run(results, samples, kept, files, log)
        return done[key]

    return run
