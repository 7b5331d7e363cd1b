"""The GPU-only fast paths, checked where they can be on a CPU: the computation a CUDA graph would capture, and the
fallback that runs it eagerly. (On a GPU: tools/device/graph_check.py compares replay with eager execution.)"""
import torch

from vlprune.cuda_graph import GraphedCall
from vlprune.testing import tiny_llava
from vlprune.text import QuestionBatch, load_clip_text


def test_graphed_call_runs_fn_eagerly_off_the_gpu_and_keeps_key_out_of_its_arguments():
    seen = []

    def fn(x, *, scale):
        seen.append(scale)
        return x * scale, x + scale

    call = GraphedCall(fn)
    a, b = call(torch.ones(3), scale=2.0, key=("weights", 123))
    assert torch.equal(a, torch.full((3,), 2.0)) and torch.equal(b, torch.full((3,), 3.0))
    assert seen == [2.0]


def test_padded_causal_text_encoding_equals_the_masked_one_on_real_tokens():
    """What the CUDA graph of the CLIP text tower computes: ids right-padded to a multiple of 16, no padding mask.
    Under the causal mask the rows of real tokens and the pooled [EOS] row must be those of the masked call."""
    tl = tiny_llava()
    clip = load_clip_text(tl.clip, tl.clip_tokenizer)
    questions = ["what color is the circle", "is there a red square left of the blue circle", ""]
    tokens, mask, eos = clip.encode(questions)
    ids = clip.tokenizer([q or "." for q in questions], padding=True, return_tensors="pt")["input_ids"]
    assert ids.shape[1] % 16 != 0  # the padding is exercised
    tokens_p, eos_p = clip._encode_graphed(ids, torch.device("cpu"))
    assert tokens_p.shape == tokens.shape
    assert torch.allclose(tokens_p[mask], tokens[mask], atol=1e-5)
    assert torch.allclose(eos_p, eos, atol=1e-5)


def test_question_batch_encodes_once_for_every_image_and_knows_presence_on_the_host():
    calls = []

    class Encoder:
        def encode(self, qs):
            calls.append(list(qs))
            n = len(qs)
            return torch.arange(n * 2 * 3.0).view(n, 2, 3), torch.tensor([[bool(q)] * 2 for q in qs]), torch.zeros(n, 3)

    batch = QuestionBatch(Encoder(), ["a b", "", "c"])
    assert batch.present == [True, False, True] and not batch.any_present(slice(1, 2))
    t0, m0, _ = batch.rows(slice(0, 1), torch.device("cpu"))
    t2, m2, _ = batch.rows(slice(2, 3), torch.device("cpu"))
    assert calls == [["a b", "", "c"]]  # one batched encoding for all images
    assert torch.equal(t2, torch.arange(12, 18.0).view(1, 2, 3)) and m0.all() and m2.all()
