"""The question DeSAP aligns with: found in ``input_ids`` and encoded by a CLIP text tower."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .cuda_graph import GraphedCall, graphs_enabled
from .ops import copy_to_device, visual_mask

# Role markers and answer-format boilerplate of common chat templates (LLaVA-1.5 "USER: ... ASSISTANT:",
# Vicuna, Llama-2 [INST], ChatML, Qwen, Mistral) and of the LLaVA evaluation prompts.
_TEMPLATE_PATTERNS = [
    r"<\|im_end\|>", r"<\|im_start\|>\s*(assistant|user|system)", r"<\|vision_(start|end)\|>",
    r"<\|endoftext\|>", r"\[/?INST\]", r"</?s>", r"<<SYS>>.*?<</SYS>>",
    r"(^|\s)(###\s*)?(ASSISTANT|Assistant|assistant|USER|User|user|GPT|Human)\s*:",
    r"\n(assistant|user)\s*$",
]
_BOILERPLATE = [
    "Answer the question using a single word or phrase.",
    "Answer with the option's letter from the given choices directly.",
    "Please answer yes or no.",
    "Answer the question directly.",
]
_OPTION_LINE = re.compile(r"^\s*[A-H][\.\):]\s.*$", re.MULTILINE)


def strip_chat_template(text: str) -> str:
    """Remove chat-template role markers, multiple-choice option lines and answer-format boilerplate.

    Long prompts (MMBench/ScienceQA): DeSAP keeps only informative tokens (the paper uses CalibCLIP); our
    rule is simpler and documented: option lines ("A. ...") and format instructions are dropped, then
    the CLIP tokenizer truncates to its context length.
    """
    for pat in _TEMPLATE_PATTERNS:
        text = re.sub(pat, " ", text, flags=re.DOTALL)
    for phrase in _BOILERPLATE:
        text = text.replace(phrase, " ")
    text = _OPTION_LINE.sub(" ", text)
    return re.sub(r"\s+", " ", text).strip()


def questions_from_ids(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, image_token_id: int | tuple[int, ...], tokenizer: Any
) -> list[str]:
    """Per sample: the text after its last image (or video: ``image_token_id`` may name several ids) token, decoded,
    chat template removed ('' if none).

    The ids come to the host once (one device sync for the batch, not four per sample)."""
    input_ids = input_ids.cpu()
    attention_mask = attention_mask.cpu() if attention_mask is not None else None
    out = []
    for b in range(input_ids.shape[0]):
        ids = input_ids[b] if attention_mask is None else input_ids[b][attention_mask[b].bool()]
        img = torch.nonzero(visual_mask(ids, image_token_id))
        after = ids[int(img[-1]) + 1 :] if len(img) else ids
        out.append(strip_chat_template(tokenizer.decode(after.tolist(), skip_special_tokens=True)))
    return out


@dataclass
class ClipText:
    """CLIP text tower + projections (the parts DeSAP needs beyond the LVLM's own vision tower)."""

    text_model: nn.Module
    text_projection: nn.Module
    visual_projection: nn.Module
    tokenizer: Any
    max_length: int = 77
    _graphed: GraphedCall | None = field(default=None, init=False, repr=False)

    @torch.no_grad()
    def encode(self, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token embeddings S_q (B, T, e) = text_projection(last_hidden_state), mask (B, T), EOS row q_t (B, e).

        An empty question gets an all-False mask (DeSAP then falls back to the visual cue). The mask is built on
        the host, so nothing here waits for work already queued on the device.
        """
        device = self.text_projection.weight.device
        batch = self.tokenizer(
            [q if q else "." for q in questions], padding=True, truncation=True,
            max_length=self.max_length, return_tensors="pt",
        )
        empty = torch.tensor([not q for q in questions])
        mask = batch["attention_mask"].bool() & ~empty.unsqueeze(-1)
        ids = batch["input_ids"]
        # the graphed path relies on padding after the question (CLIP tokenizers pad on the right)
        if device.type == "cuda" and graphs_enabled() and getattr(self.tokenizer, "padding_side", "right") == "right":
            tokens, eos = self._encode_graphed(ids, device)
        else:
            tokens, eos = self._project_text(copy_to_device(ids, device), copy_to_device(batch["attention_mask"], device))
        return tokens, copy_to_device(mask, device), eos

    def _project_text(
        self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(text_projection of every position, of the pooled [EOS] row); without a mask, the causal one alone."""
        out = self.text_model(input_ids=ids, attention_mask=attention_mask)
        return self.text_projection(out.last_hidden_state), self.text_projection(out.pooler_output)

    def _encode_graphed(self, ids: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The text tower replayed from a CUDA graph (its ~200 small kernels cost more host time to launch than
        GPU time to run). Ids are right-padded to a multiple of 16 so few shapes occur, and no padding mask is
        passed: under CLIP's causal mask a real token never sees the padding after it, so the rows of real tokens
        and the pooled [EOS] row (found from the ids) are those of the masked call."""
        if self._graphed is None:
            self._graphed = GraphedCall(self._project_text)
        b, t = ids.shape
        width = min(max(self.max_length, t), -(-t // 16) * 16)
        if width > t:
            pad = getattr(self.tokenizer, "pad_token_id", None) or 0
            ids = torch.cat([ids, ids.new_full((b, width - t), pad)], 1)
        weights = (self.text_projection.weight.data_ptr(), next(self.text_model.parameters()).data_ptr())
        tokens, eos = self._graphed(copy_to_device(ids, device), key=weights)
        return tokens[:, :t], eos


_SIDE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """One long-lived side stream per GPU: the caching allocator keeps blocks per stream, so a fresh stream per
    call would find none cached and call cudaMalloc."""
    device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device)
    return _SIDE_STREAMS[device]


class QuestionBatch:
    """The questions of one call's images (prompt order), encoded once, batched, when a signal source first asks.

    On a GPU the encoding runs on a side stream: it is asked for after the vision tower has been queued, and the
    host-to-device copies of the token ids (synchronising copies) then wait only for the side stream, so the text
    tower's kernels are launched while the tower still runs and overlap with it; the main stream waits for the
    side stream only where the embeddings are used. ``present`` is known on the host without any device sync.
    """

    def __init__(self, encoder: Any, questions: list[str]) -> None:
        self.encoder = encoder
        self.questions = list(questions)
        self.present = [bool(q) for q in self.questions]
        self._encoded: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _encode(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        def encode() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return tuple(t.to(device) for t in self.encoder.encode(self.questions))

        if device.type != "cuda":
            return encode()
        main = torch.cuda.current_stream(device)
        side = _side_stream(device)
        with torch.cuda.stream(side):
            encoded = encode()
        main.wait_stream(side)
        for t in encoded:
            t.record_stream(main)  # made on the side stream, read on the main one
        return encoded

    def rows(self, images: slice, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens (I, T, e), mask (I, T), global text row (I, e)) of the images in ``images``, on ``device``."""
        if self._encoded is None:
            self._encoded = self._encode(device)
        return tuple(t[images] for t in self._encoded)

    def any_present(self, images: slice) -> bool:
        return any(self.present[images])


def load_clip_text(clip: Any, tokenizer: Any = None) -> ClipText:
    """Accept a hub id / local path, a loaded ``CLIPModel`` (+ ``clip_tokenizer``), or a ``ClipText``."""
    if isinstance(clip, ClipText):
        return clip
    if isinstance(clip, (str, Path)):
        from transformers import AutoTokenizer, CLIPModel

        model = CLIPModel.from_pretrained(str(clip))
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(clip))
    elif type(clip).__name__ == "CLIPModel":
        model = clip
        if tokenizer is None:
            raise ValueError("a loaded CLIPModel needs its tokenizer too: pass clip_tokenizer=CLIPTokenizer(...)")
    else:
        raise TypeError(f"clip must be a hub id, a path, a CLIPModel or a ClipText, got {type(clip).__name__}")
    model.eval()
    limit = getattr(model.config.text_config, "max_position_embeddings", 77)
    return ClipText(model.text_model, model.text_projection, model.visual_projection, tokenizer, limit)
