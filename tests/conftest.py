"""Test-wide settings: no hub access, caches inside the test session (not the user's home)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models: one thread is much faster than waking an OpenMP pool for every 16x32 matmul.
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _isolated_caches(tmp_path_factory):
    os.environ["SURGERY_CACHE"] = str(tmp_path_factory.mktemp("surgery-cache"))
    os.environ.setdefault("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf-datasets")))
    yield
