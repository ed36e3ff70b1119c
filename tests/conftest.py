"""Shared by every test."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One intra-op thread for the whole run: on a shared 2-core machine two spinning threads slow
    small models down many times over, and results do not depend on the thread count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance (2 CPUs, a small object store) per test module that asks for it (Ray tests)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -r requirements-ray.txt)")
    pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install -r requirements-ray.txt)")
    ray.init(num_cpus=2, object_store_memory=128 * 1024**2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
