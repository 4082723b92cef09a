import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("HARDNEG_TEST_THREADS", "1")))


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(0)
