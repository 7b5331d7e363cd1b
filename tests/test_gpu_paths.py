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


def _without_host_reads(fn, *args, **kwargs):
    """Run ``fn`` on fake tensors: shapes flow, values do not, so a host read of a device value (``.item()``, a
    boolean index, ``nonzero``) raises instead of silently synchronising. What passes can be CUDA-graph captured:
    its kernels and output shapes are fixed by the input shapes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
        return fn(*args, **kwargs)


def test_the_host_read_check_can_fail():
    import pytest
    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

    with pytest.raises(DynamicOutputShapeException):
        _without_host_reads(lambda x: x[x > 0], torch.randn(4))
    with pytest.raises(DataDependentOutputException):
        _without_host_reads(lambda x: int(x.argmax()), torch.randn(4))


def test_graphed_selection_steps_never_read_device_values_on_the_host():
    from vlprune.methods.desap import select_from_signals
    from vlprune.methods.vispruner import remove_duplicates
    from vlprune.models.clip_signals import cls_attention_row, decoupled_joint

    tl = tiny_llava()
    clip = load_clip_text(tl.clip, tl.clip_tokenizer)
    tower = tl.model.model.vision_tower
    block = tower.encoder.layers[-1]
    hidden = torch.randn(2, 37, tower.config.hidden_size)
    assert _without_host_reads(cls_attention_row, hidden, block=block).shape == (2, 36)
    for mode in ("qq", "qk", "kk", "vv"):
        joint = _without_host_reads(decoupled_joint, hidden, block=block, post_layernorm=tower.post_layernorm,
                                    projection=clip.visual_projection, mode=mode)
        assert joint.shape == (2, 37, clip.visual_projection.out_features)
    ids = clip.tokenizer(["what color is the circle", "is it red"], padding=True, return_tensors="pt")["input_ids"]
    tokens, eos = _without_host_reads(clip._project_text, ids)
    assert tokens.shape[:2] == ids.shape and eos.shape[0] == 2
    feats, salient = torch.randn(2, 36, 8), torch.rand(2, 36)
    cue = (torch.randn(2, 37, 6), torch.randn(2, 5, 6), torch.tensor([[True] * 5, [True, True] + [False] * 3]),
           torch.randn(2, 6))
    for k1, merge, fcma in ((3, True, True), (3, False, False), (0, True, True)):
        out = _without_host_reads(select_from_signals, feats, salient, *(cue if k1 else ()), k1=k1, k2=8 - k1,
                                  merge=merge, fcma=fcma)
        assert out[0].shape == (2, 8, 8) and out[1].shape == (2, 8) and len(out) == (4 if merge else 3)
    assert _without_host_reads(remove_duplicates, feats, torch.arange(30).expand(2, 30), 10).shape == (2, 10)


def test_graph_keys_follow_module_weights_without_keeping_the_module_alive():
    import gc
    import weakref

    from vlprune.cuda_graph import _static_key, release_graphs

    layer = torch.nn.Linear(4, 4)
    key = _static_key(layer)
    assert key == _static_key(layer) and _static_key(3) == 3
    layer.weight.data = torch.zeros(4, 4)  # new storage: a graph would read the old address
    assert _static_key(layer) != key
    ref = weakref.ref(layer)
    del layer
    gc.collect()
    assert ref() is None  # the key holds ids and addresses, not the module
    call = GraphedCall(lambda x: x + 1)
    call._graphs[("sig",)] = object()
    release_graphs()
    assert not call._graphs
