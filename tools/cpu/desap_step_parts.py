"""DeSAP's pruning step on a CPU, piece by piece (issue 6): process CPU time, 1 thread, fastest of 5, at the
LLaVA-1.5-7B shape (CLIP-L/336 last block, 577 tokens; random weights from ``vlprune.speed``).

    python tools/cpu/desap_step_parts.py
"""
import time

import torch
import torch.nn.functional as F

from vlprune.attention import decoupled_attention, split_heads
from vlprune.speed import build


def timed(name: str, fn, n: int = 5) -> None:
    fn()
    best = float("inf")
    for _ in range(n):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    print(f"{name:36s} {1e3 * best:7.1f} ms")


def main() -> None:
    torch.set_num_threads(1)
    bm = build("llava-1.5-7b", 2, None, torch.bfloat16, torch.device("cpu"))
    tower = bm.model.model.vision_tower
    attn = tower.encoder.layers[-1].self_attn
    normed = tower.encoder.layers[-1].layer_norm1(torch.randn(1, 577, 1024, dtype=torch.bfloat16))
    q = split_heads(attn.q_proj(normed), attn.num_heads)
    v = split_heads(attn.v_proj(normed), attn.num_heads)
    scale = attn.head_dim**-0.5
    question = ["what color is the red circle left of the blue square how many green triangle are there above"]
    with torch.inference_mode():
        timed("q projection (577 x 1024 x 1024)", lambda: attn.q_proj(normed))
        timed("q-q map, explicit softmax", lambda: torch.softmax((q @ q.transpose(-1, -2)).float() * scale, -1)
              .to(v.dtype) @ v)
        timed("q-q map, fused SDPA", lambda: F.scaled_dot_product_attention(q, q, v, scale=scale))
        timed("decoupled attention (eq. 2, all)", lambda: decoupled_attention(attn, normed, "qq"))
        timed("CLIP text tower (question above)", lambda: bm.clip_text.encode(question))


if __name__ == "__main__":
    main()
