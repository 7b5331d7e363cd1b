"""Procedural scenes and questions for the vlprune testbed.

Every scene is a textured, cluttered background with a few coloured shapes on it
(a small one is one 8-pixel patch, a large one 2 x 2 patches) and one high-contrast
"distractor" pattern that is never asked about. The distractor and the large
shapes are what a saliency-only pruner tends to keep; the questions are often
about the small shapes elsewhere, so keeping the wrong ~11 % of patches costs
accuracy.

Everything is a pure function of an integer ``scene_id`` (and the image size), so
splits are reproducible on any machine:

* ``train`` uses scene ids ``[0, 1e9)``, ``val`` ``[1e9, 2e9)``, ``test`` ``[2e9, 3e9)``;
* ``load_split(split, seed=k)`` gives a fresh split in its own block of ids,
  disjoint from the canonical splits and from every other ``(split, seed)`` pair.

Question families (one-word answers):

``attribute``  "What color is the triangle ?"   (asked only when the shape is unique)
``identity``   "What shape is the red object ?"  (asked only when the colour is unique)
``existence``  "Is there a red triangle ?"       yes/no, 50/50; the negatives are
               adversarial (POPE-like): colour and shape both occur, not together
``counting``   "How many red objects are there ?" / "How many triangles are there ?"
               answers one..four, balanced
``spatial``    "Is the red triangle left or right of the circle ?" ->
               left/right (or above/below), asked only when the gap is clear
"""

from __future__ import annotations

import colorsys
import math
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "ANSWERS",
    "COLORS",
    "FAMILIES",
    "SHAPES",
    "Sample",
    "Scene",
    "SceneObject",
    "caption_for",
    "iter_train_samples",
    "load_split",
    "make_conversation",
    "make_sample",
    "make_scene",
    "prompt_for",
    "vocabulary",
]

FAMILIES: tuple[str, ...] = ("attribute", "identity", "existence", "counting", "spatial")

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 35),
    "purple": (145, 55, 190),
    "orange": (250, 135, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles",
          "cross": "crosses", "ring": "rings"}
COUNT_WORDS = ("zero", "one", "two", "three", "four")
CELLS = 12  # objects are aligned to a 12 x 12 grid of cells (= the 12 x 12 patches at 96 px)
SIZES: dict[str, int] = {"small": 1, "large": 2}  # side in cells: every patch of an object shows part of its outline
SIZE_WEIGHTS = {"small": 0.55, "large": 0.45}
LOCATIONS = (("top", "left"), ("top", ""), ("top", "right"),
             ("", "left"), ("center", ""), ("", "right"),
             ("bottom", "left"), ("bottom", ""), ("bottom", "right"))

ANSWERS: dict[str, tuple[str, ...]] = {
    "attribute": tuple(COLORS),
    "identity": SHAPES,
    "existence": ("yes", "no"),
    "counting": COUNT_WORDS[1:],
    "spatial": ("left", "right", "above", "below"),
}

_SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}
_BLOCK = 1_000_000_000
MIN_GAP = 0.16  # spatial questions need centres this far apart (fraction of side)


def prompt_for(question: str) -> str:
    """The exact prompt the testbed model was trained on (LLaVA-1.5 style)."""
    return f"USER: <image>\n{question} ASSISTANT:"


# --------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels (x1, y1 exclusive)

    @property
    def center(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)


@dataclass
class Scene:
    scene_id: int
    image_size: int
    objects: list[SceneObject]
    distractor_box: tuple[int, int, int, int]
    image: Image.Image = field(repr=False)


@dataclass
class Sample:
    """One benchmark item: an image and a question with a one-word answer.

    ``boxes`` are the pixel boxes (x0, y0, x1, y1, exclusive ends) of the objects
    the question is about; empty for a negative existence question.
    """

    image: Image.Image = field(repr=False)
    question: str
    answer: str
    family: str
    boxes: list[tuple[int, int, int, int]]
    scene_id: int
    objects: list[SceneObject] = field(default_factory=list, repr=False)

    @property
    def prompt(self) -> str:
        return prompt_for(self.question)


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int = 14) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]


def _muted(rng: random.Random, lo: float = 0.25, hi: float = 0.8) -> tuple[int, int, int]:
    """A desaturated colour: never mistaken for one of the named colours."""
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.18), rng.uniform(lo, hi))
    return int(r * 255), int(g * 255), int(b * 255)


def _background(rng: random.Random, nrng: np.random.Generator, s: int, c: float = 1.0) -> np.ndarray:
    grey = np.full(3, 128.0, dtype=np.float32)  # complexity 0: plain mid-grey
    base = grey + c * (np.array(_muted(rng, 0.35, 0.75), dtype=np.float32) - grey)
    kind = rng.randrange(4)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    if kind == 0:  # stripes
        ang = rng.uniform(0, math.pi)
        freq = rng.uniform(6, 14)
        pat = np.sin((xx * math.cos(ang) + yy * math.sin(ang)) * freq * 2 * math.pi)
    elif kind == 1:  # checker
        n = rng.randint(4, 10)
        pat = ((np.floor(xx * n) + np.floor(yy * n)) % 2) * 2 - 1
    elif kind == 2:  # smooth blotches
        coarse = nrng.standard_normal((6, 6)).astype(np.float32)
        img = Image.fromarray(((coarse - coarse.min()) / (np.ptp(coarse) + 1e-6) * 255).astype(np.uint8))
        pat = np.asarray(img.resize((s, s), Image.BICUBIC), dtype=np.float32) / 127.5 - 1
    else:  # flat
        pat = np.zeros((s, s), np.float32)
    amp = rng.uniform(6, 20) * c
    arr = base[None, None, :] + amp * pat[..., None]
    arr += nrng.normal(0, rng.uniform(2, 6) * c, size=(s, s, 3)).astype(np.float32)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0 - 1, y1 - y0 - 1
    cx, cy = x0 + w / 2, y0 + h / 2
    if shape == "circle":
        draw.ellipse((x0, y0, x0 + w, y0 + h), fill=fill)
    elif shape == "square":
        m = w * 0.08
        draw.rectangle((x0 + m, y0 + m, x0 + w - m, y0 + h - m), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x0 + w, y0 + h), (x0, y0 + h)], fill=fill)
    elif shape == "ring":
        draw.ellipse((x0, y0, x0 + w, y0 + h), outline=fill, width=max(2, round(w * 0.26)))
    elif shape == "cross":
        t = w * 0.36 / 2
        draw.rectangle((cx - t, y0, cx + t, y0 + h), fill=fill)
        draw.rectangle((x0, cy - t, x0 + w, cy + t), fill=fill)
    else:  # pragma: no cover - guarded by SHAPES
        raise ValueError(shape)


def _draw_distractor(draw: ImageDraw.ImageDraw, rng: random.Random, box) -> None:
    """High-contrast black/white pattern: salient, but never an answerable object."""
    x0, y0, x1, y1 = box
    kind = rng.randrange(3)
    dark, light = (rng.randint(0, 30),) * 3, (rng.randint(225, 255),) * 3
    if kind == 0:  # random binary blocks
        n = 5
        cw, ch = (x1 - x0) / n, (y1 - y0) / n
        for i in range(n):
            for j in range(n):
                draw.rectangle((x0 + i * cw, y0 + j * ch, x0 + (i + 1) * cw - 1, y0 + (j + 1) * ch - 1),
                               fill=dark if rng.random() < 0.5 else light)
    elif kind == 1:  # checker patch
        n = 4
        cw, ch = (x1 - x0) / n, (y1 - y0) / n
        for i in range(n):
            for j in range(n):
                draw.rectangle((x0 + i * cw, y0 + j * ch, x0 + (i + 1) * cw - 1, y0 + (j + 1) * ch - 1),
                               fill=dark if (i + j) % 2 else light)
    else:  # zig-zag bars
        n = 5
        bh = (y1 - y0) / n
        for j in range(n):
            draw.rectangle((x0, y0 + j * bh, x1 - 1, y0 + (j + 1) * bh - 1), fill=dark if j % 2 else light)


def _clutter(draw: ImageDraw.ImageDraw, rng: random.Random, s: int, c: float = 1.0) -> None:
    for _ in range(round(rng.randint(8, 22) * c)):
        x, y = rng.uniform(0, s), rng.uniform(0, s)
        ang, length = rng.uniform(0, math.pi), rng.uniform(0.05, 0.25) * s
        draw.line((x, y, x + length * math.cos(ang), y + length * math.sin(ang)),
                  fill=_muted(rng, 0.1, 0.95), width=rng.randint(1, 2))
    for _ in range(round(rng.randint(5, 15) * c)):
        x, y, r = rng.uniform(0, s), rng.uniform(0, s), rng.uniform(0.5, 2.0)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_muted(rng, 0.05, 0.95))


def _overlaps(a, b, margin: int) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


@dataclass(frozen=True)
class _Spec:
    shape: str
    color: str
    size: str


def _place(rng: random.Random, specs: list[_Spec], s: int) -> tuple[list[SceneObject], tuple] | None:
    """Grid-aligned placement: every object fills a k x k block of cells (cell = s / CELLS),
    with at least one empty cell between any two objects and around the distractor."""
    cell = s / CELLS

    def block(cx: int, cy: int, k: int) -> tuple[int, int, int, int]:
        return (round(cx * cell), round(cy * cell), round((cx + k) * cell), round((cy + k) * cell))

    def free(cx: int, cy: int, k: int) -> bool:
        return all(cx + k + 1 <= px or px + pk + 1 <= cx or cy + k + 1 <= py or py + pk + 1 <= cy
                   for px, py, pk in taken)

    dk = rng.choice((2, 3))
    dx, dy = rng.randint(0, CELLS - dk), rng.randint(0, CELLS - dk)
    taken = [(dx, dy, dk)]
    objects = []
    for spec in specs:
        k = SIZES[spec.size]
        for _ in range(80):
            cx, cy = rng.randint(0, CELLS - k), rng.randint(0, CELLS - k)
            if free(cx, cy, k):
                break
        else:
            return None
        taken.append((cx, cy, k))
        objects.append(SceneObject(spec.shape, spec.color, spec.size, block(cx, cy, k)))
    return objects, block(dx, dy, dk)


def _random_size(rng: random.Random) -> str:
    return rng.choices(list(SIZE_WEIGHTS), weights=list(SIZE_WEIGHTS.values()))[0]


def _render(scene_id: int, rng: random.Random, objects, distractor, s: int, c: float = 1.0) -> Image.Image:
    nrng = np.random.default_rng(scene_id)
    img = Image.fromarray(_background(rng, nrng, s, c))
    draw = ImageDraw.Draw(img)
    _clutter(draw, rng, s, c)
    if rng.random() < c:
        _draw_distractor(draw, rng, distractor)
    for ob in objects:
        _draw_shape(draw, ob.shape, ob.box, _jitter(COLORS[ob.color], rng))
    return img


def _n_range(c: float) -> tuple[int, int]:
    """Object count range at complexity ``c``: 1..2 at 0, 3..6 at 1 (the benchmark)."""
    return 1 + round(2 * c), 2 + round(4 * c)


def make_scene(scene_id: int, image_size: int = 96, specs: list[_Spec] | None = None,
               rng: random.Random | None = None, complexity: float = 1.0) -> Scene:
    """Build and render one scene. ``specs`` forces the object list (in order).

    ``complexity`` < 1 (training curricula only) means fewer objects, less
    clutter and texture and sometimes no distractor; benchmarks use 1.
    """
    rng = rng or random.Random(scene_id)
    if specs is None:
        n = rng.randint(*_n_range(complexity))
        specs = [_Spec(rng.choice(SHAPES), rng.choice(list(COLORS)), _random_size(rng)) for _ in range(n)]
    for _ in range(50):
        res = _place(rng, specs, image_size)
        if res is not None:
            break
        # too crowded: shrink the largest object and retry
        big = max(range(len(specs)), key=lambda i: SIZES[specs[i].size])
        specs = list(specs)
        specs[big] = _Spec(specs[big].shape, specs[big].color, "small")
    else:  # pragma: no cover - 6 small objects always fit
        raise RuntimeError(f"could not place scene {scene_id}")
    objects, distractor = res
    img = _render(scene_id, rng, objects, distractor, image_size, complexity)
    return Scene(scene_id, image_size, objects, distractor, img)


# ------------------------------------------------------------------------ language
def _location(ob: SceneObject, s: int) -> str:
    cx, cy = ob.center
    col = min(2, int(cx / s * 3))
    row = min(2, int(cy / s * 3))
    v, h = LOCATIONS[row * 3 + col]
    return " ".join(w for w in (v, h) if w)


def caption_for(scene: Scene, rng: random.Random | None = None) -> str:
    """A full description of the scene (objects in random order if ``rng`` given)."""
    obs = list(scene.objects)
    if rng is not None:
        rng.shuffle(obs)
    return _list_objects(obs, scene.image_size)


def _list_objects(objects: list[SceneObject], s: int) -> str:
    """'a small red triangle at top left and a large blue ring at center' (in the given order)."""
    return " and ".join(f"a {o.size} {o.color} {o.shape} at {_location(o, s)}" for o in objects)


DESCRIBE = "Describe the image ."


def describe(scene: Scene) -> str:
    """Caption with the objects in reading order (top-to-bottom, left-to-right)."""
    return _list_objects(sorted(scene.objects, key=lambda o: (o.box[1], o.box[0])), scene.image_size)


def _ref(ob: SceneObject, objects: list[SceneObject]) -> str | None:
    """Shortest unambiguous name for ``ob``: 'triangle', 'red object' or 'red triangle'."""
    if sum(o.shape == ob.shape for o in objects) == 1:
        return ob.shape
    if sum(o.color == ob.color for o in objects) == 1:
        return f"{ob.color} object"
    if sum(o.shape == ob.shape and o.color == ob.color for o in objects) == 1:
        return f"{ob.color} {ob.shape}"
    return None


def _other(rng: random.Random, pool, exclude) -> str:
    return rng.choice([p for p in pool if p not in exclude])


def _scene_specs(rng: random.Random, family: str, c: float = 1.0) -> tuple[list[_Spec], dict]:
    """Object specs designed so that ``family`` has a question with a balanced answer."""
    lo, hi = _n_range(c)
    colors, n = list(COLORS), rng.randint(lo, hi)
    specs = [_Spec(rng.choice(SHAPES), rng.choice(colors), _random_size(rng)) for _ in range(n)]
    plan: dict = {}
    if family == "counting":
        count = rng.randint(1, min(4, hi))
        kind = rng.choice(("color", "shape"))
        value = rng.choice(colors) if kind == "color" else rng.choice(SHAPES)
        others = rng.randint(max(1 if hi > count else 0, lo - count), hi - count)
        specs = []
        for _ in range(count):
            c = value if kind == "color" else rng.choice(colors)
            s = value if kind == "shape" else rng.choice(SHAPES)
            specs.append(_Spec(s, c, _random_size(rng)))
        for _ in range(others):
            c = _other(rng, colors, [value]) if kind == "color" else rng.choice(colors)
            s = _other(rng, SHAPES, [value]) if kind == "shape" else rng.choice(SHAPES)
            specs.append(_Spec(s, c, _random_size(rng)))
        rng.shuffle(specs)
        plan = {"kind": kind, "value": value, "count": count}
    elif family == "existence":
        plan = {"answer": rng.choice(("yes", "no"))}
    return specs, plan


def _question(scene: Scene, family: str, plan: dict, rng: random.Random):
    """(question, answer, boxes) for ``family`` on ``scene``; None if not askable."""
    obs, s = scene.objects, scene.image_size
    if family == "attribute":
        cands = [o for o in obs if sum(p.shape == o.shape for p in obs) == 1]
        if not cands:
            return None
        o = rng.choice(cands)
        return f"What color is the {o.shape} ?", o.color, [o.box]
    if family == "identity":
        cands = [o for o in obs if sum(p.color == o.color for p in obs) == 1]
        if not cands:
            return None
        o = rng.choice(cands)
        return f"What shape is the {o.color} object ?", o.shape, [o.box]
    if family == "existence":
        if plan.get("answer", "yes") == "yes":
            o = rng.choice(obs)
            return f"Is there a {o.color} {o.shape} ?", "yes", [o.box]
        present = {(o.color, o.shape) for o in obs}
        cols, shps = {o.color for o in obs}, {o.shape for o in obs}
        hard = [(c, sh) for c in cols for sh in shps if (c, sh) not in present]
        if not hard:  # fall back to a half-hard negative: one attribute present
            hard = [(c, sh) for c in COLORS for sh in SHAPES
                    if (c, sh) not in present and (c in cols or sh in shps)]
        c, sh = rng.choice(sorted(hard))
        return f"Is there a {c} {sh} ?", "no", []
    if family == "counting":
        kind, value, count = plan["kind"], plan["value"], plan["count"]
        if kind == "color":
            hits = [o for o in obs if o.color == value]
            q = f"How many {value} objects are there ?"
        else:
            hits = [o for o in obs if o.shape == value]
            q = f"How many {PLURAL[value]} are there ?"
        assert len(hits) == count
        return q, COUNT_WORDS[count], [o.box for o in hits]
    if family == "spatial":
        named = [(o, _ref(o, obs)) for o in obs]
        named = [(o, r) for o, r in named if r is not None]
        pairs = []
        gap = MIN_GAP * s
        for a, ra in named:
            for b, rb in named:
                if a is b:
                    continue
                (ax, ay), (bx, by) = a.center, b.center
                if abs(ax - bx) >= gap:
                    pairs.append((a, ra, b, rb, "x"))
                if abs(ay - by) >= gap:
                    pairs.append((a, ra, b, rb, "y"))
        if not pairs:
            return None
        a, ra, b, rb, axis = rng.choice(pairs)
        if axis == "x":
            ans = "left" if a.center[0] < b.center[0] else "right"
            q = f"Is the {ra} left or right of the {rb} ?"
        else:
            ans = "above" if a.center[1] < b.center[1] else "below"
            q = f"Is the {ra} above or below the {rb} ?"
        return q, ans, [a.box, b.box]
    raise ValueError(f"unknown family {family!r}")


def _make(scene_id: int, family: str, image_size: int, complexity: float = 1.0):
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    rng = random.Random(scene_id * 7919 + FAMILIES.index(family))
    for _ in range(100):
        specs, plan = _scene_specs(rng, family, complexity)
        scene = make_scene(scene_id, image_size, specs=specs, rng=rng, complexity=complexity)
        q = _question(scene, family, plan, rng)
        if q is not None:
            return scene, q, rng
    raise RuntimeError(f"no {family} question for scene {scene_id}")  # pragma: no cover


def make_sample(scene_id: int, family: str, image_size: int = 96) -> Sample:
    """The sample of ``family`` for ``scene_id`` (deterministic)."""
    scene, (question, answer, boxes), _ = _make(scene_id, family, image_size)
    return Sample(scene.image, question, answer, family, boxes, scene_id, scene.objects)


def _free_plan(scene: Scene, family: str, rng: random.Random) -> dict | None:
    """A plan for asking ``family`` about a scene that was not built for it."""
    if family == "existence":
        return {"answer": rng.choice(("yes", "no"))}
    if family == "counting":
        o = rng.choice(scene.objects)
        kind = rng.choice(("color", "shape"))
        value = o.color if kind == "color" else o.shape
        count = sum((p.color if kind == "color" else p.shape) == value for p in scene.objects)
        return {"kind": kind, "value": value, "count": count} if count < len(COUNT_WORDS) else None
    return {}


def make_conversation(scene_id: int, family: str, image_size: int = 96, extra_turns: int = 0,
                      complexity: float = 1.0, describe_turn: bool = False) -> tuple[Sample, list[tuple[str, str]]]:
    """``make_sample`` plus up to ``extra_turns`` more (question, answer) pairs about the
    same image (other families, no repeats): multi-turn training data, LLaVA style."""
    scene, (question, answer, boxes), rng = _make(scene_id, family, image_size, complexity)
    sample = Sample(scene.image, question, answer, family, boxes, scene_id, scene.objects)
    turns = [(question, answer)] + more_turns(scene, rng, extra_turns, {question})
    if describe_turn:  # a dense "describe the image" turn somewhere in the conversation
        turns.insert(rng.randint(1, len(turns)), (DESCRIBE, describe(scene)))
    return sample, turns


def more_turns(scene: Scene, rng: random.Random, n: int, seen: set[str] | None = None) -> list[tuple[str, str]]:
    """Up to ``n`` new (question, answer) pairs about ``scene`` (random families, no repeats)."""
    seen = set() if seen is None else seen
    turns: list[tuple[str, str]] = []
    for _ in range(3 * n):
        if len(turns) >= n:
            break
        fam = rng.choice(FAMILIES)
        plan = _free_plan(scene, fam, rng)
        q = None if plan is None else _question(scene, fam, plan, rng)
        if q is not None and q[0] not in seen:
            seen.add(q[0])
            turns.append((q[0], q[1]))
    return turns


def _base(split: str, seed: int | None) -> int:
    if split not in _SPLIT_INDEX:
        raise ValueError(f"split must be one of {tuple(_SPLIT_INDEX)}, got {split!r}")
    if seed is None:
        return _SPLIT_INDEX[split] * _BLOCK
    if seed < 0:
        raise ValueError("seed must be >= 0")
    return (3 + 3 * seed + _SPLIT_INDEX[split]) * _BLOCK


DEFAULT_SIZES = {"train": 20000, "val": 500, "test": 1000}


def load_split(split: str = "test", n: int | None = None, seed: int | None = None,
               image_size: int = 96) -> list[Sample]:
    """Deterministic list of ``n`` samples (families cycle in ``FAMILIES`` order).

    ``seed=None`` gives the canonical split; any integer ``seed >= 0`` gives a new
    split of the same kind whose scenes are disjoint from all others.
    """
    n = DEFAULT_SIZES[split] if n is None else n
    base = _base(split, seed)
    return [make_sample(base + i, FAMILIES[i % len(FAMILIES)], image_size) for i in range(n)]


def iter_train_samples(start: int = 0, image_size: int = 96, seed: int | None = None):
    """Endless stream of training samples (scene ids ``start, start+1, ...``)."""
    base, i = _base("train", seed), start
    while True:
        yield make_sample(base + i, FAMILIES[i % len(FAMILIES)], image_size)
        i += 1


def vocabulary() -> list[str]:
    """Every word the generator can emit (captions, questions, answers, prompt)."""
    words = {"user", "assistant", ":", "?", ".", "describe", "image", "a", "at", "and", "what", "color", "is", "the",
             "shape", "object", "objects", "there", "how", "many", "are", "left", "or", "right",
             "of", "above", "below", "top", "bottom", "center", "yes", "no"}
    words |= set(COLORS) | set(SHAPES) | set(PLURAL.values()) | set(COUNT_WORDS) | set(SIZES)
    return sorted(words)
