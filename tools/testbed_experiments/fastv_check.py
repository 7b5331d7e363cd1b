"""Is FastV's kept set on the bundled testbed the top-k of the eager model's own attention? (layer=1, so the
last prompt token's head-mean attention in decoder layer 0, over the image tokens)
    python fastv_check.py [N] [K]"""
import sys
import torch, vlprune
from transformers import AutoProcessor, LlavaForConditionalGeneration
from vlprune.testbed import checkpoint_dir, load_split, prompt_for

torch.set_num_threads(2)
n, k = (int(sys.argv[1]) if len(sys.argv) > 1 else 5), (int(sys.argv[2]) if len(sys.argv) > 2 else 16)
model = LlavaForConditionalGeneration.from_pretrained(checkpoint_dir()).eval()
model.set_attn_implementation("eager")
proc = AutoProcessor.from_pretrained(checkpoint_dir())
for sample in load_split("val", n):
    inputs = proc(images=sample.image, text=prompt_for(sample.question), return_tensors="pt")
    with torch.no_grad():
        attn = model(**inputs, output_attentions=True).attentions[0][0].mean(0)[-1]
    image = (inputs["input_ids"][0] == model.config.image_token_id).nonzero()[:, 0]
    eager_top = set(torch.topk(attn[image], k).indices.tolist())
    with vlprune.pruned(model, "fastv", k, layer=1), torch.no_grad():
        model(**inputs)
        kept = set(vlprune.last_selection(model).indices[0].tolist())
    print(f"{sample.question} | kept {len(kept)}, of them in the eager top-{k}: {len(kept & eager_top)}")
