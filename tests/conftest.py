"""Fixtures shared by the unit tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Unit tests run tiny models: thread start-up costs more than it saves, and two threads crawl on a busy
    2-core machine. Speed is measured in benchmarks/, not here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
