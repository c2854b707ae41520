"""Folders of images: an imagefolder with ``metadata.jsonl``/``metadata.csv`` (the Hugging Face ``datasets``
convention: ``file_name`` plus a caption column) for image-caption pairs, and a class-per-folder tree (ImageNet style)
for labelled images."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from clipclean.data.classnames import resolve_classnames
from clipclean.data.dataset import ClassificationDataset
from clipclean.data.pixels import DataError
from clipclean.data.rows import Row, RowChecker

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
METADATA_FILENAMES = ("metadata.jsonl", "metadata.csv")


def find_metadata(directory: Path, split: str | None) -> Path | None:
    folders = [directory / split, directory] if split else [directory, directory / "train"]
    for folder in folders:
        for name in METADATA_FILENAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def _list_images(folder: Path) -> Iterator[Path]:
    for root, directories, files in os.walk(folder, followlinks=True):
        directories[:] = sorted(d for d in directories if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                yield Path(root) / name


def class_folder_rows(root: Path) -> tuple[list[str], Iterable[Row]]:
    folders = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))

    def rows() -> Iterator[Row]:
        for label, folder in enumerate(folders):
            for path in _list_images(root / folder):
                yield Row(str(path), str(path), str(path), label=label)

    return folders, rows()


def load_class_folders(
    source: str,
    image_size: int | tuple[int, int] = 32,
    classnames: str | list[str] | None = None,
    split: str | None = None,
    skip_bad: bool = False,
) -> ClassificationDataset:
    """A class-per-folder tree as labelled images (see :func:`clipclean.data.load_classification_dataset`)."""
    root = Path(source).expanduser()
    if not root.is_dir():
        raise DataError(f"{source}: no such directory (expected 'digits[:split]' or a class-per-folder tree)")
    if split is not None and (root / split).is_dir():
        root = root / split
    folders, rows = class_folder_rows(root)
    if not folders:
        raise DataError(f"{root}: the dataset is empty (no class sub-folders)")
    names = resolve_classnames(folders, classnames, str(root))
    checker = RowChecker(str(root), skip_bad, needs_caption=False)
    kept = [row for row in rows if checker.keep(row)]
    if checker.total == 0:
        raise DataError(f"{root}: the dataset is empty (no {'/'.join(IMAGE_EXTENSIONS)} images in the class folders)")
    checker.finish(len(kept))
    return ClassificationDataset(
        [row.image for row in kept],
        [row.label for row in kept],
        names,
        source=str(root),
        image_size=image_size,
        locations=[row.location for row in kept],
    )
