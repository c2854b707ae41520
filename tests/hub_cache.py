"""Lay out a Hugging Face Hub cache by hand, so ``hf-hub:`` loading is tested offline."""

import shutil
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lay_out_hub_cache(folder: Path, cache: Path, repo_id: str) -> Path:
    """Copy ``folder`` into a huggingface_hub cache as the ``main`` snapshot of ``repo_id``; return the snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot
