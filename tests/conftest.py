"""Test-wide settings: no hub access, and caches inside the test session, not the user's home."""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_caches(tmp_path_factory):
    os.environ["SURGERY_CACHE"] = str(tmp_path_factory.mktemp("surgery-cache"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf-datasets")))
    yield
