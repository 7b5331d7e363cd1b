import pytest
import torch

torch.set_num_threads(1)  # tiny models: threading costs more than it gives


@pytest.fixture(scope="session")
def tiny():
    from vlprune.testing import tiny_llava

    return tiny_llava(seed=0, grid=4, layers=4)


@pytest.fixture(scope="session")
def pixels():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 16, 16, generator=g)


@pytest.fixture(scope="session")
def next_t():
    """A tiny random LLaVA-NeXT (tests/test_families.py, tests/test_ragged_batches.py)."""
    from vlprune.testing import tiny_llava_next

    return tiny_llava_next()


@pytest.fixture(scope="session")
def qwen_t():
    """A tiny random Qwen2.5-VL."""
    from vlprune.testing import tiny_qwen2_5_vl

    return tiny_qwen2_5_vl()
