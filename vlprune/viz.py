"""Pictures of what was kept: dropped patches greyed out, the asked-about object boxed in red, question and
answer written underneath, and a legend saying so."""
from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont


def kept_overlay(image: Image.Image, indices: torch.Tensor, grid: tuple[int, int], size: int = 384,
                 boxes: Sequence[Sequence[int]] = (), box_scale: float = 1.0) -> Image.Image:
    """The image resized to ``size``, each dropped patch blended to grey, kept patches outlined.

    ``boxes`` (pixel boxes of the asked-about objects in the original image) are drawn in red.
    """
    img = image.convert("RGB").resize((size, size), Image.NEAREST)
    rows, cols = grid
    ph, pw = size / rows, size / cols
    grey = Image.new("RGB", img.size, (128, 128, 128))
    faded = Image.blend(img, grey, 0.8)
    mask = Image.new("L", img.size, 0)
    draw_mask = ImageDraw.Draw(mask)
    kept = set(int(i) for i in indices.tolist() if i >= 0)
    for i in kept:
        r, c = divmod(i, cols)
        draw_mask.rectangle([c * pw, r * ph, (c + 1) * pw - 1, (r + 1) * ph - 1], fill=255)
    out = Image.composite(img, faded, mask)
    draw = ImageDraw.Draw(out)
    for i in kept:
        r, c = divmod(i, cols)
        draw.rectangle([c * pw, r * ph, (c + 1) * pw - 1, (r + 1) * ph - 1], outline=(255, 255, 255))
    s = size / (image.width * box_scale) if box_scale else 1.0
    for x0, y0, x1, y1 in boxes:
        draw.rectangle([x0 * s, y0 * s, x1 * s - 1, y1 * s - 1], outline=(230, 30, 30), width=2)
    return out


def captioned(panel: Image.Image, lines: Sequence[str], height: int = 64) -> Image.Image:
    """``panel`` with a white strip of text lines below it."""
    out = Image.new("RGB", (panel.width, panel.height + height), (255, 255, 255))
    out.paste(panel, (0, 0))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    for k, line in enumerate(lines):
        draw.text((6, panel.height + 4 + 15 * k), line, fill=(0, 0, 0), font=font)
    return out


def side_by_side(panels: Sequence[Image.Image], gap: int = 8) -> Image.Image:
    """Panels in one row on a white background (papers' figures 6/8)."""
    w = sum(p.width for p in panels) + gap * (len(panels) - 1)
    h = max(p.height for p in panels)
    out = Image.new("RGB", (w, h), (255, 255, 255))
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width + gap
    return out


LEGEND = (
    ("box", (230, 30, 30), "red box: the object the question asks about"),
    ("fill", (200, 200, 200), "greyed out: patches dropped (not given to the LLM)"),
    ("outline", (255, 255, 255), "clear, white outline: patches kept"),
)


def legend(width: int, row: int = 18) -> Image.Image:
    """A strip explaining the picture's marks, one per line: red box, grey, kept outline."""
    out = Image.new("RGB", (width, row * len(LEGEND) + 8), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    for k, (kind, colour, text) in enumerate(LEGEND):
        y = 4 + row * k
        swatch = [6, y, 19, y + 13]
        if kind == "box":
            draw.rectangle(swatch, outline=colour, width=2)
        elif kind == "fill":
            draw.rectangle(swatch, fill=colour)
        else:
            draw.rectangle(swatch, fill=(90, 140, 90), outline=colour)
        draw.text((26, y + 1), text, fill=(0, 0, 0), font=font)
    return out


def with_legend(picture: Image.Image) -> Image.Image:
    """``picture`` with the legend strip below it."""
    strip = legend(picture.width)
    out = Image.new("RGB", (picture.width, picture.height + strip.height), (255, 255, 255))
    out.paste(picture, (0, 0))
    out.paste(strip, (0, picture.height))
    return out
