"""Shared by the test modules: the two questions of the left-padded batch and a no-grad forward."""
import torch

QUESTIONS = ["what color is the circle ?", "how many star are there in this image ?"]


@torch.no_grad()
def logits(model, inputs, pixels):
    return model(**inputs, pixel_values=pixels).logits


def assert_batch_equals_per_sample(model, tiny, pixels):
    """A patched model answers a left-padded batch of QUESTIONS exactly as it answers each sample alone."""
    import vlprune

    batch = tiny.prompt_ids(QUESTIONS)
    with torch.no_grad():
        out_b = model.generate(**batch, pixel_values=pixels, max_new_tokens=4, do_sample=False)
        kept_b = vlprune.last_selection(model).indices
        last_b = model(**batch, pixel_values=pixels).logits[:, -1]
        for i, q in enumerate(QUESTIONS):
            single = tiny.prompt_ids([q])
            out_s = model.generate(**single, pixel_values=pixels[i : i + 1], max_new_tokens=4, do_sample=False)
            assert torch.equal(out_s[0, -4:], out_b[i, -4:])
            assert torch.equal(vlprune.last_selection(model).indices[0], kept_b[i])
            last_s = model(**single, pixel_values=pixels[i : i + 1]).logits[:, -1]
            torch.testing.assert_close(last_s[0], last_b[i], rtol=1e-4, atol=1e-4)


def assert_cached_generate_equals_no_cache(model, inputs, pixels, steps: int = 6) -> list:
    """A patched model's cached greedy ``generate`` equals a no-cache loop whose in-LLM stages decide on the prompt
    part only (``decide_on_prompt``): the same tokens, the same stage decisions and kept patches. Returns the
    pruner's history (prompt positions kept at each stage)."""
    import vlprune
    from vlprune.api import _state

    with torch.no_grad():
        cached = model.generate(**inputs, pixel_values=pixels, max_new_tokens=steps, do_sample=False,
                                min_new_tokens=steps)
        kept_cached = [t.clone() for t in vlprune.last_selection(model).indices]
        history = [h.clone() for h in _state(model).pruner.history]
        extra = [0]
        decide_on_prompt(model, extra)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        for _ in range(steps):
            extra[0] = ids.shape[1] - inputs["input_ids"].shape[1]
            out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, use_cache=False)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
            mask = torch.cat([mask, torch.ones_like(nxt)], 1)
            assert all(torch.equal(a, b) for a, b in zip(history, _state(model).pruner.history))
    assert torch.equal(cached, ids)
    for a, b in zip(kept_cached, vlprune.last_selection(model).indices):
        assert torch.equal(a, b)
    return history


def append_tokens(inputs: dict, nxt: torch.Tensor) -> None:
    """Append the next tokens ``nxt`` (B, 1) to a no-cache loop's inputs (ids, mask, Qwen's mm_token_type_ids)."""
    inputs["input_ids"] = torch.cat([inputs["input_ids"], nxt], 1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(nxt)], 1)
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(nxt).int()], 1)


def decide_on_prompt(model, extra):
    """In-LLM stage callbacks (score/select) see only the prompt part of their inputs when a no-cache loop has
    appended ``extra[0]`` tokens: causal attention makes that part identical to the prefill, so the loop decides
    exactly as a cached generate() does (see tests/test_llm_methods.py)."""
    import dataclasses

    from vlprune.api import _state

    def cut(inputs):
        if extra[0] == 0:
            return inputs
        n = inputs.hidden.shape[1] - extra[0]
        mask = inputs.mask[..., :n, :n] if inputs.mask is not None else None
        pr = inputs.prompt  # the LLM input (SparseVLM's raters): its prompt columns
        if pr is not None:
            m = pr.hidden.shape[1] - extra[0]
            pr = type(pr)(pr.hidden[:, :m], pr.is_img[:, :m], pr.pad[:, :m])
        return dataclasses.replace(inputs, hidden=inputs.hidden[:, :n], cos=inputs.cos[..., :n, :],
                                   sin=inputs.sin[..., :n, :], mask=mask, prompt=pr)

    for stage in _state(model).pruner.stages:
        stage.score = (lambda f: lambda inputs: f(cut(inputs)))(stage.score)
        if stage.select is not None:
            stage.select = (lambda f: lambda inputs: f(cut(inputs)))(stage.select)


def write_jsonl(path, rows):
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json(path, obj):
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def llm_call(model, inputs, *keys, **extra):
    """One pass ``model(**inputs, **extra)``: (copies of the keyword arguments ``keys`` of the language model's first
    call, the model's output)."""
    seen = {}

    def hook(module, args, kwargs):
        if not seen:
            seen.update((k, kwargs[k].detach().clone()) for k in keys)

    handle = model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        out = model(**inputs, **extra)
    finally:
        handle.remove()
    return tuple(seen[k] for k in keys), out


def llm_positions(model, inputs, method: str, keep: int):
    """(position_ids the language model receives, last_selection) of one pass of ``model`` patched with
    ``method`` at ``keep`` (unpatched again afterwards)."""
    import vlprune

    vlprune.apply(model, method, keep)
    try:
        with torch.no_grad():
            (pos,), _ = llm_call(model, inputs, "position_ids")
        kept = vlprune.last_selection(model)
    finally:
        vlprune.remove(model)
    return pos, kept
