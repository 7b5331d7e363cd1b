"""Videos for every encoder-side method: the frames of one video as ONE ranked set, and prompts of mixed items.

A video of T frames with N patches each is shown to a method as one image of T x N patches (``FrameStack``):
every per-patch signal (features, [CLS] attention, keys, DeSAP's decoupled attention, PruMerge's full-width
attention) is each frame's OWN signal, laid end to end in frame-major order (raster order inside a frame), so the
method's selection ranks the patches of all frames against each other and ``keep`` counts per video. The grid is
the frames stacked vertically, ``(T * h, w)``: patch index ``t * N + r * w + c`` is row r, column c of frame t.
With a per-frame budget the adapter builds one ``FrameStack`` per frame instead (``frames=slice(t, t + 1)``).

Global rows that a method reads once per image stand for the whole video: DeSAP's decoupled [CLS] ``v_s`` is the
mean of the frames' decoupled [CLS] rows; there is no single [CLS] feature (``cls_feature`` is None: VisionZip then
counts no [CLS] token, and Video-LLaVA keeps every frame's own [CLS] token outside the pruned set anyway).
"""
from __future__ import annotations

import zlib
from typing import Any

import torch


class FrameStack:
    """``SignalSource`` (B = 1) over frames ``frames`` of a per-frame source whose batch rows are frames."""

    def __init__(self, per_frame: Any, frames: slice, item: int, questions: Any, cache: dict) -> None:
        self.src, self.frames, self.item, self.questions, self._cache = per_frame, frames, item, questions, cache
        h, w = per_frame.grid
        self.n_frames = frames.stop - frames.start
        self.grid = (self.n_frames * h, w)

    def _stack(self, x: torch.Tensor) -> torch.Tensor:
        """(frames, N, ...) rows of the per-frame source -> (1, T * N, ...)."""
        x = x[self.frames]
        return x.reshape(1, x.shape[0] * x.shape[1], *x.shape[2:])

    def features(self) -> torch.Tensor:
        return self._stack(self.src.features())

    def cls_attention(self) -> torch.Tensor:
        return self._stack(self.src.cls_attention())

    def last_cls_attention(self) -> torch.Tensor:
        return self._stack(self.src.last_cls_attention())

    def projected_features(self) -> torch.Tensor:
        return self._stack(self.src.projected_features())

    def keys(self) -> torch.Tensor:
        return self._stack(self.src.keys())

    def last_block_full_width(self) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(self._stack(x) for x in self.src.last_block_full_width())

    def cls_feature(self) -> None:
        return None

    def decoupled(self, mode: str) -> torch.Tensor:
        """(1, 1 + T * N, e): the mean of the frames' decoupled [CLS] rows, then every frame's patch rows."""
        if mode not in self._cache:
            self._cache[mode] = self.src.decoupled(mode)  # (all frames, 1 + N, e), shared by every FrameStack
        d = self._cache[mode][self.frames]
        return torch.cat([d[:, 0].mean(0, keepdim=True), d[:, 1:].reshape(-1, d.shape[-1])], 0).unsqueeze(0)

    def question(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.questions is None:
            raise ValueError("no question encoder: pass clip=... (and processor=...) to vlprune.apply")
        device = self.src.pixel_values.device
        return self.questions.rows(slice(self.item, self.item + 1), device)

    def has_question(self) -> bool:
        return self.questions is not None and self.questions.any_present(slice(self.item, self.item + 1))

    def image_keys(self) -> list[int]:
        """One seed key for these frames (a hash of their pixel hashes), computed only if a seeded method asks."""
        keys = self.src.image_keys()[self.frames]
        return [zlib.crc32(str(keys).encode())]


class ItemQuestions:
    """The ``QuestionBatch`` rows of some items of a call (e.g. its images, when videos are interleaved)."""

    def __init__(self, questions: Any, items: list[int]) -> None:
        self.questions, self.items = questions, list(items)

    def rows(self, images: slice, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        picked = torch.tensor(self.items[images], dtype=torch.long)
        return tuple(t[picked.to(t.device)] for t in self.questions.rows(slice(None), device))

    def any_present(self, images: slice) -> bool:
        return any(self.questions.present[i] for i in self.items[images])


def walk_items(input_ids: torch.Tensor, sizes: dict[int, list[int]]) -> list[list[tuple[int, int]]] | None:
    """Per row, the visual items in prompt order as ``(placeholder id, index among that id's items)``.

    ``sizes[token_id]``: the placeholders of each item of that kind, in order over the whole batch (row-major).
    Items of one kind may follow each other without a separator: a run is cut by the sizes. None when the
    placeholders do not add up to the sizes (e.g. a prompt that encoder-side pruning already shortened).
    """
    ids = input_ids.cpu()
    kinds = torch.tensor(list(sizes), dtype=ids.dtype)
    used = dict.fromkeys(sizes, 0)
    out = []
    for row in ids:
        tokens = row[torch.isin(row, kinds)].tolist()
        items, p = [], 0
        while p < len(tokens):
            kind = tokens[p]
            i = used[kind]
            if i >= len(sizes[kind]):
                return None
            n = sizes[kind][i]
            if tokens[p: p + n].count(kind) != n:
                return None
            items.append((kind, i))
            used[kind], p = i + 1, p + n
        out.append(items)
    return out


def pack_frames(pieces: list[dict], n_frames: int, n: int, frame_tokens: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lay out the selections of one video: per frame, its fixed token (Video-LLaVA's [CLS], if ``frame_tokens``
    (T, D) is given) then its kept patches in raster order; then the tokens that stand for no single patch in
    order (rows before a selection's ``indices`` or after their increasing run: VisionZip's contextual tokens,
    PruMerge's extra token), as LLaVA-NeXT's packing does.

    pieces: per selection call, ``feats`` (k, D) LLM-space tokens, ``index`` (m,) stacked patch indices aligned
    with the last m rows, ``assign`` (M,) slot of each member patch or None, ``members`` (M,) their stacked indices.
    Returns (tokens (L, D), kept patch indices (sorted), assign (T * N,): the token each patch stands in, counted
    among the prunable tokens (fixed ones skipped), -1 if dropped; fixed (L,) bool: the frame tokens).
    """
    placed, tail = [], []  # (patch, piece, row) in a frame / (piece, row) after the frames
    for p_i, piece in enumerate(pieces):
        k, v = piece["feats"].shape[0], piece["index"].tolist()
        m = len(v)
        run = next((j + 1 for j in range(m - 1) if v[j + 1] <= v[j]), m)
        tail += [(p_i, j) for j in range(k - m)]
        placed += [(v[j], p_i, k - m + j) for j in range(run)]
        tail += [(p_i, k - m + j) for j in range(run, m)]
    placed.sort()
    rows, fixed, slot = [], [], {}
    i = 0
    for t in range(n_frames):
        if frame_tokens is not None:
            rows.append(frame_tokens[t])
            fixed.append(True)
        while i < len(placed) and placed[i][0] // n == t:
            _, p_i, j = placed[i]
            slot[(p_i, j)] = len(slot)
            rows.append(pieces[p_i]["feats"][j])
            fixed.append(False)
            i += 1
    for p_i, j in tail:
        slot[(p_i, j)] = len(slot)
        rows.append(pieces[p_i]["feats"][j])
        fixed.append(False)
    assign = torch.full((n_frames * n,), -1, dtype=torch.long)
    for p_i, piece in enumerate(pieces):
        k, m = piece["feats"].shape[0], piece["index"].shape[0]
        slots = torch.tensor([slot[(p_i, j)] for j in range(k)], dtype=torch.long)
        if piece["assign"] is not None:
            a = piece["assign"].cpu()
            assign[piece["members"]] = torch.where(a >= 0, slots[a.clamp(min=0)], torch.full_like(a, -1))
        else:
            assign[piece["index"].cpu()] = slots[k - m:]
    kept = torch.unique(torch.cat([piece["index"].cpu() for piece in pieces]))
    return torch.stack(rows), kept, assign, torch.tensor(fixed, dtype=torch.bool)
