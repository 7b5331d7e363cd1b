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
