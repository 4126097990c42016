"""Method tests run single-threaded: their tensors are tiny, and on a shared CPU multi-threaded
element-wise ops mostly wait for the other thread."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
