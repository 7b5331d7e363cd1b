"""A local lmms-eval task pair written by the tests: a tiny random LLaVA on disk and five docs of images,
questions and answers as JSON lines, read by lmms-eval through ``--include_path`` (nothing from the hub)."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

QUESTIONS = ["what color is the circle ?", "how many shapes are there ?", "is the square left of the star ?",
             "describe this picture .", "what shape is above the triangle ?"]
CHOICES = ["red", "green blue", "yes", "one two three"]
MAX_NEW_TOKENS = 4
RIGHT = (0, 1, 3)  # docs whose target is the unpruned model's own answer; the other two get a wrong one
EXPECTED_SCORE = len(RIGHT) / len(QUESTIONS)
KEEP = 8  # of the tiny LLaVA's 4x4 = 16 patches
UNTIL = ["?"]

UTILS = '''
from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc):
    return doc["question"]


def doc_to_choice(doc):
    return doc["choices"]
'''


def task_yaml(task: str, data_file: Path, output_type: str, rest: str) -> str:
    """An lmms-eval task over local JSON lines (``datasets``' json builder: no hub)."""
    return f"""task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data_file}
test_split: test
output_type: {output_type}
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
{rest}"""


GEN_REST = f"""doc_to_target: answer
generation_kwargs:
  until: {json.dumps(UNTIL)}
  max_new_tokens: {MAX_NEW_TOKENS}
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

MC_REST = """doc_to_choice: !function utils.doc_to_choice
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def save_tiny_llava(path: Path) -> Path:
    """The tiny random LLaVA-1.5 of vlprune.testing with its processor, and its CLIP in ``clip/`` (for DeSAP)."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    from vlprune.testing import tiny_llava

    t = tiny_llava(seed=3)
    t.model.save_pretrained(path)
    proc = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
        tokenizer=t.tokenizer, patch_size=4, vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    proc.save_pretrained(path)
    t.clip.save_pretrained(path / "clip")
    t.clip_tokenizer.save_pretrained(path / "clip")
    return path


def write_images(data: Path) -> list[Path]:
    data.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(len(QUESTIONS)):
        img = Image.new("RGB", (16, 16), (40 * i, 200 - 30 * i, 90))
        for x in range(4 * i % 16, 4 * i % 16 + 6):  # a different square on each image
            for y in range(3, 9):
                img.putpixel((x % 16, y), (250, 250, 10 * i))
        paths.append(data / f"img{i}.png")
        img.save(paths[-1])
    return paths


def write_task(root: Path, images: list[Path], gen_answers: list[str], mc_labels: list[int]) -> Path:
    """The two task YAMLs, their utils.py and the JSON lines docs under ``root``; returns the include path."""
    data = root / "data"
    tasks = root / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    (data / "gen.jsonl").write_text("".join(json.dumps({"image": str(p), "question": q, "answer": a}) + "\n"
                                            for p, q, a in zip(images, QUESTIONS, gen_answers)))
    (data / "mc.jsonl").write_text("".join(json.dumps({"image": str(p), "question": q, "choices": CHOICES,
                                                       "label": y}) + "\n"
                                           for p, q, y in zip(images, QUESTIONS, mc_labels)))
    (tasks / "utils.py").write_text(UTILS)
    (tasks / "vlprune_toy_gen.yaml").write_text(task_yaml("vlprune_toy_gen", data / "gen.jsonl", "generate_until",
                                                          GEN_REST))
    (tasks / "vlprune_toy_mc.yaml").write_text(task_yaml("vlprune_toy_mc", data / "mc.jsonl", "multiple_choice",
                                                         MC_REST))
    return tasks
