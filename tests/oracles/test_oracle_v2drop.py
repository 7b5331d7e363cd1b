"""vlprune's V2Drop against the official loop (v2drop_official.py) on the same 32-layer LLM and inputs: the official
code's hard-coded LLaVA-1.5 setting (35 tokens before 576 visual tokens, stages at layers 3/17/22 keeping 0.5, 0.5,
0 of the current visual tokens) is ``keep_ratios=(0.5, 0.5, 0.0)``; the kept patches of every stage and the last
hidden states must be equal."""
from types import SimpleNamespace

import torch

from vlprune.methods import v2drop

from .sources import run_tie_free
from .test_oracle_pdrop import _llama, draw_embeds, run_pruned
from .v2drop_official import v2drop_step

PRE, N, POST = 35, 576, 9


def _official_forward(model, embeds):
    """The official ``V2DropLlamaModel.forward`` loop (prefill, batch 1, original positions gathered)."""
    me = SimpleNamespace(prev_hidden_states=None, image_token_amount_after_selection=0)
    hidden, pos, kept = embeds, torch.arange(embeds.shape[1]).unsqueeze(0), []
    for layer in model.layers:
        hidden, pos, _, keep = v2drop_step(me, layer, hidden, pos, None)
        if keep is not None:
            kept.append(pos[0, PRE: PRE + me.image_token_amount_after_selection])
        out = layer(hidden, position_embeddings=model.rotary_emb(hidden, pos), position_ids=pos)
        hidden = out[0] if isinstance(out, tuple) else out
    return model.norm(hidden), kept


def test_official_loop_equals_vlprune():
    model, _ = _llama(32)
    length = PRE + N + POST
    cfg = v2drop.V2DropConfig(keep_ratios=(0.5, 0.5, 0.0))
    stages = v2drop.plan(100, 32, cfg, N)  # keep_ratios fix the counts; the budget is not used
    assert [(s.layer, s.keep, s.scored_at) for s in stages] == [(3, 288, 2), (17, 144, 16), (22, 1, 21)]

    with torch.no_grad():
        (embeds,), (want, want_kept) = run_tie_free(draw_embeds(length), lambda e: _official_forward(model, e))
        got, kept = run_pruned(model, stages, embeds, PRE, N)
    assert [len(k) for k in want_kept] == [288, 144, 1]
    assert kept == [k.tolist() for k in want_kept]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
