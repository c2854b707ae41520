"""Shared fixtures: offline Hub, tiny random-init CLIPs, tiny data. Nothing here downloads anything."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from clipclean.models import load_clip  # noqa: E402

# Tiny models run 4-5x faster on one thread than on two competing ones (measured on the 2-core CI machine).
torch.set_num_threads(1)


@pytest.fixture
def tiny_clip():
    """A random-init ``clipclean-tiny`` CLIP (32x32 images, embed dim 64), seeded."""
    torch.manual_seed(0)
    return load_clip("clipclean-tiny")
