"""Procedural video clips and temporal questions for the video testbed (``--bench testbed-video``).

A clip is ``FRAMES`` (4) frames of one static scene of the image testbed's kind (textured, cluttered background,
one high-contrast distractor, grid-aligned shapes of one or 2 x 2 patches) in which things happen:

* the *mover* changes place every frame (2 cells along one axis);
* the *appearer* is absent from the first frames and present from frame ``k`` (2..4) on;
* the *vanisher* is present in frames 1..``c`` (1..3) only;
* the *changer* changes colour at frame ``k`` (2..4);
* one or two *static* objects stay as they are.

Every object's (colour, shape) pair is unique in the clip (the changer's both colours included), so "the red
circle" names one object. Question families (one-word answers, each needing more than one frame):

``appeared``  "What shape appears ?"                      -> the appearer's shape (five shapes)
``moving``    "What color is the moving object ?"         -> the mover's colour (six colours)
``changed``   "What shape changes color ?"                -> the changer's shape
``frames``    "How many frames show the red circle ?"     -> one..four, balanced (the target is drawn per answer)
``when``      "When does the red circle appear ?"         -> second / third / fourth (the appearer), balanced

Splits by clip id as :mod:`.scenes` does: ``train`` ``[0, 1e9)``, ``val`` ``[1e9, 2e9)``, ``test``
``[2e9, 3e9)``, ``seed=k`` a block of its own. ``boxes`` of a sample are per frame: the boxes of the asked-about
object in that frame (empty where it is absent), for the object recall over all frames' patches.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from . import scenes

__all__ = ["ANSWERS", "FAMILIES", "FRAMES", "NEW_WORDS", "Track", "VideoSample", "load_video_split",
           "make_clip", "make_video_sample", "video_prompt_for"]

FRAMES = 4
FAMILIES: tuple[str, ...] = ("appeared", "moving", "changed", "frames", "when")
ORDINALS = ("first", "second", "third", "fourth")
ANSWERS: dict[str, tuple[str, ...]] = {
    "appeared": scenes.SHAPES,
    "moving": tuple(scenes.COLORS),
    "changed": scenes.SHAPES,
    "frames": scenes.COUNT_WORDS[1:],
    "when": ORDINALS[1:],
}
# words the video questions add to the image testbed's vocabulary (appended to its tokenizer, ids after its own)
NEW_WORDS: tuple[str, ...] = ("appears", "moving", "changes", "frames", "show", "when", "does", "appear",
                              "first", "second", "third", "fourth")
STEP = 2  # cells the mover moves per frame
DEFAULT_SIZES = {"train": 20000, "val": 500, "test": 1000}

Box = tuple[int, int, int, int]


def video_prompt_for(question: str) -> str:
    """The prompt the video testbed was trained on (Video-LLaVA style: ``<video>`` then the question)."""
    return f"USER: <video>\n{question} ASSISTANT:"


@dataclass(frozen=True)
class Track:
    """One object over the frames: its colour and pixel box per frame (None where absent)."""

    role: str  # mover | appearer | vanisher | changer | static
    shape: str
    size: str
    colors: tuple[str | None, ...]
    boxes: tuple[Box | None, ...]

    def present(self) -> list[int]:
        return [t for t, b in enumerate(self.boxes) if b is not None]

    def pairs(self) -> set[tuple[str, str]]:
        return {(c, self.shape) for c in self.colors if c is not None}


@dataclass
class VideoSample:
    """One benchmark item: a clip (``frames``, PIL images) and a question with a one-word answer.

    ``boxes[t]`` are the pixel boxes (x0, y0, x1, y1, exclusive ends) of the asked-about object in frame ``t``.
    """

    frames: list[Image.Image] = field(repr=False)
    question: str
    answer: str
    family: str
    boxes: list[list[Box]]
    scene_id: int
    tracks: list[Track] = field(default_factory=list, repr=False)

    @property
    def prompt(self) -> str:
        return video_prompt_for(self.question)


# --------------------------------------------------------------------------- worlds
class _Grid:
    """Cells taken on the 12 x 12 grid, with one free cell required between blocks (as :func:`scenes._place`)."""

    def __init__(self) -> None:
        self.taken: list[tuple[int, int, int]] = []

    def free(self, cx: int, cy: int, k: int) -> bool:
        return all(cx + k + 1 <= px or px + pk + 1 <= cx or cy + k + 1 <= py or py + pk + 1 <= cy
                   for px, py, pk in self.taken)

    def find(self, rng: random.Random, k: int, tries: int = 80) -> tuple[int, int] | None:
        for _ in range(tries):
            cx, cy = rng.randint(0, scenes.CELLS - k), rng.randint(0, scenes.CELLS - k)
            if self.free(cx, cy, k):
                return cx, cy
        return None


def _box(cx: int, cy: int, k: int, s: int) -> Box:
    cell = s / scenes.CELLS
    return (round(cx * cell), round(cy * cell), round((cx + k) * cell), round((cy + k) * cell))


def _mover_path(rng: random.Random, grid: _Grid, k: int) -> list[tuple[int, int]] | None:
    span = STEP * (FRAMES - 1)
    for _ in range(80):
        dx, dy = rng.choice(((1, 0), (-1, 0), (0, 1), (0, -1)))
        lo_x, hi_x = (0, scenes.CELLS - k - span) if dx > 0 else (span, scenes.CELLS - k) if dx < 0 else \
            (0, scenes.CELLS - k)
        lo_y, hi_y = (0, scenes.CELLS - k - span) if dy > 0 else (span, scenes.CELLS - k) if dy < 0 else \
            (0, scenes.CELLS - k)
        x0, y0 = rng.randint(lo_x, hi_x), rng.randint(lo_y, hi_y)
        path = [(x0 + dx * STEP * t, y0 + dy * STEP * t) for t in range(FRAMES)]
        if all(grid.free(x, y, k) for x, y in path):
            return path
    return None


def _attributes(rng: random.Random, used: set[tuple[str, str]], n_colors: int, shape: str | None = None,
                color: str | None = None) -> tuple[str, list[str]]:
    """A shape and ``n_colors`` distinct colours whose pairs are all unused (``shape``/``color`` forced if given)."""
    for _ in range(200):
        s = shape or rng.choice(scenes.SHAPES)
        cols = rng.sample(list(scenes.COLORS), n_colors)
        if color is not None:
            cols[0] = color
        if len(set(cols)) == n_colors and not any((c, s) in used for c in cols):
            return s, cols
    raise RuntimeError("no free colour/shape pair")  # pragma: no cover - 30 pairs, at most 7 used


def _plan(rng: random.Random, family: str | None) -> dict:
    """Event frames of the clip; for ``frames`` and ``when`` the asked answer is drawn first (balanced)."""
    plan = {"appear_at": rng.randint(2, FRAMES), "vanish_after": rng.randint(1, FRAMES - 1),
            "change_at": rng.randint(2, FRAMES), "statics": rng.randint(1, 2)}
    if family == "frames":
        count = rng.randint(1, FRAMES)
        if count == FRAMES:
            plan["target"] = rng.choice(("static", "mover"))
        else:
            plan["target"] = rng.choice(("appearer", "vanisher"))
            if plan["target"] == "appearer":
                plan["appear_at"] = FRAMES + 1 - count
            else:
                plan["vanish_after"] = count
        plan["count"] = count
    return plan


def _world(rng: random.Random, plan: dict, s: int) -> tuple[list[Track], Box]:
    for _ in range(50):
        grid = _Grid()
        dk = rng.choice((2, 3))
        dx, dy = rng.randint(0, scenes.CELLS - dk), rng.randint(0, scenes.CELLS - dk)
        grid.taken.append((dx, dy, dk))
        used: set[tuple[str, str]] = set()
        tracks: list[Track] = []
        k = scenes.SIZES[scenes._random_size(rng)]
        path = _mover_path(rng, grid, k)
        if path is None:
            continue
        grid.taken += [(x, y, k) for x, y in path]
        shape, cols = _attributes(rng, used, 1)
        used.add((cols[0], shape))
        size = "large" if k == 2 else "small"
        tracks.append(Track("mover", shape, size, (cols[0],) * FRAMES, tuple(_box(x, y, k, s) for x, y in path)))
        roles = ["appearer", "changer", "vanisher"] + ["static"] * plan["statics"]
        ok = True
        for role in roles:
            size = scenes._random_size(rng)
            k = scenes.SIZES[size]
            at = grid.find(rng, k)
            if at is None:  # crowded: a small one
                size, k = "small", 1
                at = grid.find(rng, k)
            if at is None:
                ok = False
                break
            grid.taken.append((*at, k))
            box = _box(*at, k, s)
            shape, cols = _attributes(rng, used, 2 if role == "changer" else 1)
            used |= {(c, shape) for c in cols}
            if role == "appearer":
                a = plan["appear_at"] - 1
                present = [t >= a for t in range(FRAMES)]
                colors = tuple(cols[0] if p else None for p in present)
            elif role == "vanisher":
                present = [t < plan["vanish_after"] for t in range(FRAMES)]
                colors = tuple(cols[0] if p else None for p in present)
            elif role == "changer":
                present = [True] * FRAMES
                colors = tuple(cols[0] if t < plan["change_at"] - 1 else cols[1] for t in range(FRAMES))
            else:
                present = [True] * FRAMES
                colors = (cols[0],) * FRAMES
            tracks.append(Track(role, shape, size, colors, tuple(box if p else None for p in present)))
        if ok:
            return tracks, _box(dx, dy, dk, s)
    raise RuntimeError("could not place a clip")  # pragma: no cover


def _render(clip_id: int, rng: random.Random, tracks: list[Track], distractor: Box, s: int) -> list[Image.Image]:
    """The static background (texture, clutter, distractor) once, then every frame's objects on a copy of it."""
    nrng = np.random.default_rng(clip_id)
    base = Image.fromarray(scenes._background(rng, nrng, s))
    draw = ImageDraw.Draw(base)
    scenes._clutter(draw, rng, s)
    scenes._draw_distractor(draw, rng, distractor)
    shades = {(i, c): scenes._jitter(scenes.COLORS[c], rng)
              for i, tr in enumerate(tracks) for c in dict.fromkeys(c for c in tr.colors if c)}
    frames = []
    for t in range(FRAMES):
        img = base.copy()
        d = ImageDraw.Draw(img)
        for i, tr in enumerate(tracks):
            if tr.boxes[t] is not None:
                scenes._draw_shape(d, tr.shape, tr.boxes[t], shades[(i, tr.colors[t])])
        frames.append(img)
    return frames


def make_clip(clip_id: int, family: str | None = None, image_size: int = 96,
              rng: random.Random | None = None) -> tuple[list[Image.Image], list[Track], dict, random.Random]:
    """Frames, tracks and plan of clip ``clip_id`` built for asking ``family`` (deterministic)."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    rng = rng or random.Random(clip_id * 7919 + (FAMILIES.index(family) if family else 17))
    plan = _plan(rng, family)
    tracks, distractor = _world(rng, plan, image_size)
    return _render(clip_id, rng, tracks, distractor, image_size), tracks, plan, rng


# ------------------------------------------------------------------------ questions
def _name(tr: Track) -> str:
    return f"{next(c for c in tr.colors if c)} {tr.shape}"


def _per_frame(tr: Track) -> list[list[Box]]:
    return [[b] if b is not None else [] for b in tr.boxes]


def _role(tracks: list[Track], role: str) -> Track:
    return next(t for t in tracks if t.role == role)


def question(tracks: list[Track], family: str, plan: dict | None = None,
             rng: random.Random | None = None) -> tuple[str, str, list[list[Box]]]:
    """(question, answer, per-frame boxes) of ``family`` about a clip; ``plan`` picks the ``frames`` target."""
    rng = rng or random.Random(0)
    if family == "appeared":
        tr = _role(tracks, "appearer")
        return "What shape appears ?", tr.shape, _per_frame(tr)
    if family == "moving":
        tr = _role(tracks, "mover")
        return "What color is the moving object ?", tr.colors[0], _per_frame(tr)
    if family == "changed":
        tr = _role(tracks, "changer")
        return "What shape changes color ?", tr.shape, _per_frame(tr)
    if family == "when":
        tr = _role(tracks, "appearer")
        return f"When does the {_name(tr)} appear ?", ORDINALS[tr.present()[0]], _per_frame(tr)
    if family == "frames":
        if plan is not None and "target" in plan:
            cands = [t for t in tracks if t.role == plan["target"]]
        else:
            cands = [t for t in tracks if t.role != "changer"]
        tr = rng.choice(cands)
        return (f"How many frames show the {_name(tr)} ?", scenes.COUNT_WORDS[len(tr.present())],
                _per_frame(tr))
    raise ValueError(f"unknown family {family!r}")


def all_questions(tracks: list[Track]) -> list[tuple[str, str]]:
    """Every (question, answer) a clip supports: one per family and ``frames`` about every nameable object."""
    out = [question(tracks, f)[:2] for f in FAMILIES if f != "frames"]
    out += [(f"How many frames show the {_name(t)} ?", scenes.COUNT_WORDS[len(t.present())])
            for t in tracks if t.role != "changer"]
    return out


def make_video_sample(clip_id: int, family: str, image_size: int = 96) -> VideoSample:
    """The sample of ``family`` for ``clip_id`` (deterministic)."""
    frames, tracks, plan, rng = make_clip(clip_id, family, image_size)
    q, a, boxes = question(tracks, family, plan, rng)
    return VideoSample(frames, q, a, family, boxes, clip_id, tracks)


def load_video_split(split: str = "test", n: int | None = None, seed: int | None = None,
                     image_size: int = 96) -> list[VideoSample]:
    """Deterministic list of ``n`` clips with one question each (families cycle in ``FAMILIES`` order);
    ``seed=k`` a split of its own, disjoint from the canonical ones and from every other ``(split, seed)``."""
    n = DEFAULT_SIZES[split] if n is None else n
    base = scenes._base(split, seed)  # the image testbed's blocks of ids per (split, seed)
    return [make_video_sample(base + i, FAMILIES[i % len(FAMILIES)], image_size) for i in range(n)]


def video_vocabulary() -> list[str]:
    """Every word the video questions use beyond the image testbed's vocabulary."""
    return [w for w in NEW_WORDS if w not in scenes.vocabulary()]
