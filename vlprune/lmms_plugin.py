"""lmms-eval model plugin: ``--model vlprune --model_args pretrained=...,method=desap,keep=64``.

Discovery: the ``lmms_eval.models`` entry point (pyproject -> ``lmms_plugin_entry.manifest``) and, for lmms-eval
versions that read ``LMMS_EVAL_PLUGINS=vlprune``, ``vlprune.models.AVAILABLE_MODELS``. Works for every family vlprune
supports (LLaVA-1.5, LLaVA-NeXT, Qwen2.5-VL) through their transformers classes. Under ``accelerate launch`` each
process takes its own GPU (``cuda:LOCAL_RANK``; the CPU where there is none) and answers the share of the requests
that lmms-eval hands it; lmms-eval gathers the scores. Tested with lmms-eval 0.7.3 (tests_lmms/).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.model import lmms

from .lmms_plugin_args import coerce, parse_dtype, parse_int, parse_options
from .lmms_plugin_batch import (
    batches,
    cut_at_stops,
    group_key,
    is_video,
    kept_per_request,
    stop_strings,
    visuals_of,
)

try:  # lmms-eval >= 0.6: per-request token counts in the sample logs
    from lmms_eval.api.instance import GenerationResult, TokenCounts
except ImportError:  # pragma: no cover
    GenerationResult = TokenCounts = None

NO_PRUNING = ("none", "full")


class VlpruneLMM(lmms):
    """A transformers VLM pruned by vlprune (method ``none`` evaluates the full model).

    ``loglikelihood`` returns, per request, the mean negative log-likelihood of the continuation's tokens and
    whether greedy decoding would produce it: the loss that lmms-eval's own LLaVA models return, and which its
    ``multiple_choice`` scoring minimises. ``kept_log=PATH`` gets one JSON line per request with the visual
    tokens kept per image (``PATH.rankN`` for rank N > 0 under several processes).
    """

    is_simple = True

    def __init__(self, pretrained: str = "llava-hf/llava-1.5-7b-hf", method: str = "desap", keep: int = 64,
                 clip: str | None = None, device: str | None = None, dtype: str = "bfloat16", batch_size: int = 1,
                 max_new_tokens: int = 128, kept_log: str | None = None, max_batch_size: int | None = None,
                 num_frames: int = 8, **method_options: Any) -> None:
        super().__init__()
        from .evaluation import load_model, method_kwargs

        # the launcher's environment, as lmms-eval's evaluator reads it (Accelerator() sees 1 process on CPUs;
        # lmms-eval makes its own accelerator where it needs one)
        self._rank, self._world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        self._local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self._device = torch.device(self._pick_device(device))
        # every argument is checked before the checkpoint loads
        torch_dtype = "auto" if str(dtype).strip().lower() == "auto" else parse_dtype(dtype)
        if str(batch_size).strip().lower().startswith("auto"):
            raise ValueError("batch_size=auto is not supported by the vlprune plugin: pass --batch_size N")
        self.batch_size_per_gpu = parse_int(batch_size, "batch_size", minimum=1)
        self.max_new_tokens = parse_int(max_new_tokens, "max_new_tokens", minimum=1)
        self.num_frames = parse_int(num_frames, "num_frames", minimum=1)  # frames sampled per video (Video-LLaVA: 8)
        self.method, self.keep = str(method).lower(), parse_int(keep, "keep", minimum=1)
        del max_batch_size  # lmms-eval passes it along; it only matters for batch_size=auto, refused above
        if self.method in NO_PRUNING and method_options:
            raise ValueError(f"method={self.method} takes no method options, got {sorted(method_options)}")
        options = parse_options(self.method, method_options) if self.method not in NO_PRUNING else {}
        self.loaded = load_model(str(pretrained), coerce(clip), torch_dtype, str(self._device))
        if self.method not in NO_PRUNING:  # the checkpoint's method_options.json fills what is not given
            from . import api

            api.apply(self.loaded.model, self.method, self.keep, **method_kwargs(self.method, self.loaded), **options)
        self.kept_log = _rank_path(Path(kept_log), self._rank) if kept_log else None
        if self.kept_log is not None:  # this run's own log, not appended to an earlier run's
            self.kept_log.parent.mkdir(parents=True, exist_ok=True)
            self.kept_log.write_text("")
        self.kept_records: list[dict[str, Any]] = []

    def _pick_device(self, device: str | None) -> str:
        if self._world_size > 1:  # one process per GPU, as lmms-eval's own models do
            return f"cuda:{self._local_rank}" if torch.cuda.is_available() else "cpu"
        if device is None:
            return "cuda" if torch.cuda.is_available() else "cpu"
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={device} but this torch sees no CUDA device: pass device=cpu")
        return str(device)

    # -- what lmms-eval reads ---------------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        return getattr(self.loaded.processor, "tokenizer", self.loaded.processor)

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    def generate_until_multi_round(self, requests: list) -> list:
        raise NotImplementedError("multi-round generation is not supported by the vlprune plugin")

    # -- requests ---------------------------------------------------------------------------------------------
    def _doc(self, task: str, split: str, doc_id: int) -> Any:
        return self.task_dict[task][split][doc_id]

    def _inputs(self, contexts: list[str], visuals: list[list[Any]], suffixes: list[str] | None = None) -> Any:
        """Left-padded model inputs: each context in the model's chat template, its images then its videos first."""
        from .bench.runner import chat_prompt

        proc = self.loaded.processor
        self.tokenizer.padding_side = "left"
        texts = [chat_prompt(proc, _bare(c), sum(not is_video(x) for x in v), sum(is_video(x) for x in v))
                 for c, v in zip(contexts, visuals)]
        if suffixes is not None:
            texts = [t + s for t, s in zip(texts, suffixes)]
        images = [x for v in visuals for x in v if not is_video(x)]
        videos = [x for v in visuals for x in v if is_video(x)]
        kwargs = {**({"images": images} if images else {}), **({"videos": videos} if videos else {})}
        inputs = proc(text=texts, return_tensors="pt", padding=True, **kwargs).to(self._device)
        for key in ("pixel_values", "pixel_values_videos"):
            if key in inputs and inputs[key].is_floating_point():
                inputs[key] = inputs[key].to(self.loaded.model.dtype)
        return inputs

    def _record(self, reqs: list[tuple], visuals: list[list[Any]]) -> None:
        """Keep (and log) what the last batch kept, one record per request."""
        if self.method in NO_PRUNING:
            return
        import vlprune

        counts = [len(v) for v in visuals]  # images and videos: one kept entry each
        per_req = kept_per_request(vlprune.last_selection(self.loaded.model), counts) if sum(counts) else \
            [[] for _ in visuals]  # a text-only batch: nothing was selected (the last selection is an older batch's)
        rows = [{"task": r[-2], "doc_id": r[-3], "method": self.method, "keep": self.keep,
                 "kept": [k for k, _ in pairs], "of": [n for _, n in pairs]} for r, pairs in zip(reqs, per_req)]
        self.kept_records.extend(rows)
        if self.kept_log is not None:
            with self.kept_log.open("a") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)

    def _summary(self, kind: str, start: int) -> None:
        rows = [r for r in self.kept_records[start:] if r["kept"]]
        if rows:
            from loguru import logger  # lmms-eval's logger

            kept = sum(sum(r["kept"]) for r in rows)
            of = sum(sum(r["of"]) for r in rows)
            n = sum(len(r["kept"]) for r in rows)
            logger.info(f"vlprune [{kind}, rank {self._rank}]: {self.method} kept {kept} of {of} visual tokens "
                        f"over {n} images or videos ({kept / n:.1f} each)")

    @torch.no_grad()
    def generate_until(self, requests: list) -> list:
        args = [r.args for r in requests]
        gens = [dict(a[1] or {}) for a in args]
        out: list[Any] = [None] * len(args)
        start = len(self.kept_records)
        for batch in batches([(group_key(g), len(str(a[0]))) for a, g in zip(args, gens)], self.batch_size):
            reqs = [args[i] for i in batch]
            visuals = [visuals_of(a[2], self._doc(a[4], a[5], a[3]), self.num_frames) for a in reqs]
            gen = dict(gens[batch[0]])
            until = stop_strings(gen.pop("until", None))
            texts, counts = self._generate([a[0] for a in reqs], visuals, gen)
            self._record(reqs, visuals)
            for i, text, (n_in, n_out) in zip(batch, texts, counts):
                text = cut_at_stops(text, until).strip()
                out[i] = text if GenerationResult is None else \
                    GenerationResult(text, TokenCounts(input_tokens=n_in, output_tokens=n_out))
        self._summary("generate_until", start)
        return out

    def _generate(self, contexts: list[str], visuals: list[list[Any]], gen: dict[str, Any]) -> tuple[list, list]:
        inputs = self._inputs(contexts, visuals)
        max_new = int(gen.pop("max_new_tokens", self.max_new_tokens))
        temperature = float(gen.pop("temperature", 0) or 0)
        top_p = gen.pop("top_p", None)
        num_beams = int(gen.pop("num_beams", 1) or 1)
        do_sample = bool(gen.pop("do_sample", False)) or temperature > 0
        sampling = {"temperature": temperature or 1.0, **({"top_p": float(top_p)} if top_p is not None else {})}
        tok = self.tokenizer
        ids = self.loaded.model.generate(**inputs, max_new_tokens=max_new, do_sample=do_sample, num_beams=num_beams,
                                         pad_token_id=tok.pad_token_id if tok.pad_token_id is not None
                                         else tok.eos_token_id, **(sampling if do_sample else {}))
        new = ids[:, inputs["input_ids"].shape[1] :]
        texts = tok.batch_decode(new, skip_special_tokens=True)
        counts = [(int(m.sum()), _generated_length(row, tok.eos_token_id))
                  for m, row in zip(inputs["attention_mask"], new)]
        return texts, counts

    @torch.no_grad()
    def loglikelihood(self, requests: list) -> list[tuple[float, bool]]:
        args = [_loglikelihood_args(r.args) for r in requests]
        conts = []
        for context, target, doc_to_visual, doc_id, task, split in args:
            cont = target(self._doc(task, split, doc_id)) if callable(target) else target
            if not isinstance(cont, str):
                raise TypeError(f"a loglikelihood continuation must be a string, got {cont!r} ({task}, doc {doc_id})")
            conts.append(cont)
        out: list[Any] = [None] * len(args)
        start = len(self.kept_records)
        for batch in batches([("", len(str(args[i][0])) + len(conts[i])) for i in range(len(args))], self.batch_size):
            reqs = [args[i] for i in batch]
            visuals = [visuals_of(a[2], self._doc(a[4], a[5], a[3]), self.num_frames) if a[2] is not None else []
                       for a in reqs]
            scored = self._score([a[0] for a in reqs], [conts[i] for i in batch], visuals)
            self._record(reqs, visuals)
            for i, s in zip(batch, scored):
                # lmms-eval 0.7 turns any reply that is neither a string nor a GenerationResult into its str(),
                # which its multiple_choice scoring cannot unpack; a GenerationResult's text passes untouched
                out[i] = s if GenerationResult is None else GenerationResult(s)
        self._summary("loglikelihood", start)
        return out

    def _score(self, contexts: list[str], conts: list[str], visuals: list[list[Any]]) -> list[tuple[float, bool]]:
        """Mean NLL of each continuation's tokens after its context (with images), and whether it is greedy."""
        from .bench.runner import chat_prompt

        tok = self.tokenizer
        lengths = []
        for c, cont, v in zip(contexts, conts, visuals):
            prompt = chat_prompt(self.loaded.processor, _bare(c), sum(not is_video(x) for x in v),
                                 sum(is_video(x) for x in v))
            n = len(tok(prompt + cont)["input_ids"]) - len(tok(prompt)["input_ids"])
            if n < 1:
                raise ValueError(f"the continuation {cont!r} adds no token to its context")
            lengths.append(n)
        inputs = self._inputs(contexts, visuals, suffixes=conts)
        logits = self.loaded.model(**inputs).logits.float()
        ids = inputs["input_ids"]
        out = []
        for row, n in enumerate(lengths):  # left padding: every continuation ends the row
            pred = logits[row, -n - 1 : -1].log_softmax(-1)
            target = ids[row, -n:]
            nll = -pred.gather(-1, target[:, None]).squeeze(-1)
            out.append((float(nll.mean()), bool((pred.argmax(-1) == target).all())))
        return out


def _bare(context: Any) -> str:
    """A task's context without the image / video placeholders some tasks write into it (the chat template
    places the visuals)."""
    return str(context).replace("<image>", "").replace("<video>", "").strip()


def _loglikelihood_args(args: tuple) -> tuple:
    """(context, continuation, doc_to_visual, doc_id, task, split); lmms-eval's unconditional requests
    (``acc_mutual_info``) carry only (context, continuation)."""
    if len(args) == 2:
        return (args[0], args[1], None, None, None, None)
    return tuple(args[:6])


def _generated_length(row: torch.Tensor, eos: int | None) -> int:
    if eos is None:
        return int(row.numel())
    hits = (row == eos).nonzero()
    return int(hits[0, 0]) + 1 if len(hits) else int(row.numel())


def _rank_path(path: Path, rank: int) -> Path:
    return path if rank == 0 else path.with_name(f"{path.name}.rank{rank}")
