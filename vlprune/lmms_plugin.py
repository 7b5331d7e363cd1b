"""lmms-eval model plugin: ``--model vlprune --model_args pretrained=...,method=desap,keep=64``.

Discovery: the ``lmms_eval.models`` entry point (pyproject) and, for lmms-eval versions that read
``LMMS_EVAL_PLUGINS=vlprune``, ``vlprune.models.AVAILABLE_MODELS``. Works for every family vlprune supports
(LLaVA-1.5, LLaVA-NeXT, Qwen2.5-VL) through their transformers classes. Under ``accelerate launch`` each
process takes its own GPU; lmms-eval shards the requests.
"""
from __future__ import annotations

from typing import Any

import torch
from lmms_eval.api.model import lmms

from .lmms_plugin_args import coerce, parse_dtype, parse_int, parse_options

try:  # lmms-eval >= 0.2 has a registry decorator
    from lmms_eval.api.registry import register_model
except ImportError:  # pragma: no cover
    def register_model(*names):
        return lambda cls: cls


@register_model("vlprune")
class VlpruneLMM(lmms):
    """A transformers VLM pruned by vlprune (method ``none`` evaluates the full model)."""

    def __init__(self, pretrained: str = "llava-hf/llava-1.5-7b-hf", method: str = "desap", keep: int = 64,
                 clip: str | None = None, device: str = "cuda", dtype: str = "bfloat16", batch_size: int = 1,
                 max_new_tokens: int = 128, **method_options: Any) -> None:
        super().__init__()
        from .evaluation import load_model, method_kwargs

        self._rank, self._world_size = 0, 1
        try:
            from accelerate import Accelerator

            acc = Accelerator()
            if acc.num_processes > 1:
                device = f"cuda:{acc.local_process_index}"
                self._rank, self._world_size = acc.process_index, acc.num_processes
        except ImportError:  # pragma: no cover
            pass
        if device.startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"
        torch_dtype = parse_dtype(dtype)  # every argument is checked before the model loads
        self.method, self.keep = str(method), parse_int(keep, "keep", minimum=1)
        self.batch_size_per_gpu = parse_int(batch_size, "batch_size", minimum=1)
        self.max_new_tokens = parse_int(max_new_tokens, "max_new_tokens", minimum=1)
        options = parse_options(self.method, method_options) if self.method not in ("none", "full") else {}
        self.loaded = load_model(str(pretrained), coerce(clip), torch_dtype, device)
        if self.method not in ("none", "full"):
            from . import api

            api.apply(self.loaded.model, self.method, self.keep, **method_kwargs(self.method, self.loaded), **options)

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
    def tokenizer(self) -> Any:
        return getattr(self.loaded.processor, "tokenizer", self.loaded.processor)

    def loglikelihood(self, requests: list) -> list:
        raise NotImplementedError("vlprune's lmms-eval plugin answers generation tasks only (generate_until)")

    def generate_until_multi_round(self, requests: list) -> list:
        raise NotImplementedError("multi-round generation is not supported by the vlprune plugin")

    @torch.no_grad()
    def generate_until(self, requests: list) -> list[str]:
        from .bench.runner import chat_prompt

        model, proc = self.loaded.model, self.loaded.processor
        tok = self.tokenizer
        tok.padding_side = "left"
        out: list[str] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = [r.args for r in requests[start : start + self.batch_size]]
            for context, gen_kwargs, doc_to_visual, doc_id, task, split in chunk:
                visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
                visuals = [v for v in visuals if v is not None]
                text = chat_prompt(proc, str(context).replace("<image>", "").strip(), with_image=False)
                if visuals:
                    content = [{"type": "image"} for _ in visuals] + [{"type": "text", "text": str(context).replace("<image>", "").strip()}]
                    text = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True) \
                        if getattr(proc, "chat_template", None) else chat_prompt(proc, str(context).replace("<image>", "").strip())
                kwargs = dict(text=[text], return_tensors="pt")
                if visuals:
                    kwargs["images"] = [v.convert("RGB") if hasattr(v, "convert") else v for v in visuals]
                inputs = proc(**kwargs).to(model.device)
                gen = dict(gen_kwargs or {})
                until = gen.pop("until", None) or []
                until = [until] if isinstance(until, str) else list(until)
                max_new = int(gen.pop("max_new_tokens", self.max_new_tokens))
                temperature = float(gen.pop("temperature", 0) or 0)
                ids = model.generate(**inputs, max_new_tokens=max_new, do_sample=temperature > 0,
                                     **({"temperature": temperature} if temperature > 0 else {}))
                answer = tok.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
                for stop in until:
                    if stop:
                        answer = answer.split(stop)[0]
                out.append(answer.strip())
        return out
