"""shrink_prompt (vectorised) against a per-row reference, on random prompts, budgets and padding."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vlprune.splice import apply_columns, shrink_prompt

IMG = 9


def reference(ids, mask, tokens, kept):
    """Per-row loop: drop placeholders beyond each image's budget, then re-pad on the left (right: only a
    right-padded input)."""
    rows, left = [], not (mask is not None and bool((mask[:, -1] == 0).any()))
    budgets = iter(kept)
    per_image = iter(tokens)
    need = next(per_image, 0)
    budget, seen = next(budgets, 0), 0
    for r in range(ids.shape[0]):
        cols = []
        for c in range(ids.shape[1]):
            if mask is not None and mask[r, c] == 0:
                continue
            if ids[r, c] == IMG:
                seen += 1
                keep = seen <= budget
                if seen == need:
                    need, budget, seen = next(per_image, 0), next(budgets, 0), 0
                if not keep:
                    continue
            cols.append(c)
        rows.append(cols)
    width = max(len(c) for c in rows)
    out = torch.zeros(len(rows), width, dtype=torch.long)
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    for r, c in enumerate(rows):
        sl = slice(width - len(c), width) if left else slice(0, len(c))
        out[r, sl], valid[r, sl] = torch.tensor(c, dtype=torch.long), True
    return out, valid


@st.composite
def prompts(draw):
    b = draw(st.integers(1, 4))
    images = [draw(st.integers(1, 2)) for _ in range(b)]
    sizes = [draw(st.integers(1, 6)) for _ in range(sum(images))]
    kept = [draw(st.integers(0, s)) for s in sizes]
    rows, it = [], iter(sizes)
    for n in images:
        row = []
        for _ in range(n):
            row += [draw(st.integers(10, 20)) for _ in range(draw(st.integers(0, 3)))] + [IMG] * next(it)
        rows.append(row + [draw(st.integers(10, 20))])
    side = draw(st.sampled_from(["left", "right", "none"]))
    width = max(map(len, rows))
    ids = torch.zeros(b, width, dtype=torch.long)
    mask = torch.zeros(b, width, dtype=torch.long)
    for r, row in enumerate(rows):
        sl = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[r, sl], mask[r, sl] = torch.tensor(row), 1
    return ids, (None if side == "none" else mask), sizes, kept


@settings(max_examples=200, deadline=None)
@given(prompts())
def test_shrink_prompt_matches_per_row_reference(case):
    ids, mask, sizes, kept = case
    cols, valid = shrink_prompt(ids, mask, IMG, sizes, kept)
    ref_cols, ref_valid = reference(ids, mask, sizes, kept)
    assert torch.equal(valid, ref_valid)
    assert torch.equal(cols, ref_cols)
    gathered = apply_columns(ids, cols, valid, -1)
    assert int((gathered == IMG).sum()) == sum(kept)
