"""Folders written by ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``: an image column (``Image``
feature or paths) and a caption column, images re-read lazily from the arrow files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipclean.data.dataset import ImageCaptionDataset
from clipclean.data.pixels import DataError, ImageReference, describe_image
from clipclean.data.rows import (
    CAPTION_COLUMN_CANDIDATES,
    IMAGE_COLUMN_CANDIDATES,
    Row,
    RowChecker,
    pick_column,
    resolve_path,
)


def is_saved_hf_dataset(directory: Path) -> bool:
    return (directory / "dataset_dict.json").is_file() or (
        (directory / "state.json").is_file() and (directory / "dataset_info.json").is_file()
    )


class _SavedDatasetImages(Sequence):
    """Lazy image references from one column of a ``datasets.Dataset`` (picklable, decoded by clipclean)."""

    def __init__(self, dataset: Any, column: str, base: Path, indices: Sequence[int]) -> None:
        self._dataset = dataset.select_columns([column])
        self._column = column
        self._base = base
        self._indices = list(indices)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int) -> ImageReference:
        return _saved_image_reference(self._dataset[self._indices[index]][self._column], self._base)


def _saved_image_reference(value: Any, base: Path) -> ImageReference | None:
    """A ``datasets`` image value (an undecoded dict or a path string) as an :data:`ImageReference`."""
    if isinstance(value, dict):
        path = value.get("path")
        if not value.get("bytes") and path and not os.path.isabs(path) and not os.path.isfile(path):
            return {"bytes": None, "path": str(base / path)}
        return value
    if isinstance(value, str) and value.strip():
        return resolve_path(value.strip(), base)
    return None


def load_saved_pairs(
    directory: Path,
    image_size: int | tuple[int, int],
    split: str | None,
    skip_bad: bool,
    image_column: str | None,
    caption_column: str | None,
) -> ImageCaptionDataset:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(directory))
    except Exception as exc:  # datasets raises several unrelated types for a damaged folder
        raise DataError(f"{directory}: cannot load the save_to_disk dataset ({type(exc).__name__}: {exc})") from exc
    where = str(directory)
    if isinstance(loaded, datasets.DatasetDict):
        split = split or "train"
        if split not in loaded:
            raise DataError(f"{directory}: no split '{split}' (splits: {list(loaded)})")
        loaded, where = loaded[split], f"{directory}[{split}]"
    features = loaded.features
    columns = list(features)
    if image_column is None:
        typed = [name for name in columns if isinstance(features[name], datasets.Image)]
        image_column = typed[0] if typed else pick_column(columns, None, IMAGE_COLUMN_CANDIDATES, where, "image")
    else:
        image_column = pick_column(columns, image_column, (), where, "image")
    if isinstance(features[image_column], datasets.Image):
        loaded = loaded.cast_column(image_column, datasets.Image(decode=False))
    elif getattr(features[image_column], "dtype", None) not in ("string", "large_string"):
        raise DataError(f"{where}: image column '{image_column}' holds {features[image_column]}, not images or paths")
    caption_column = pick_column(columns, caption_column, CAPTION_COLUMN_CANDIDATES, where, "caption")
    label_column = next(
        (name for name in ("label", "labels") if isinstance(features.get(name), datasets.ClassLabel)), None
    )
    wanted = [image_column, caption_column] + ([label_column] if label_column else [])

    checker = RowChecker(where, skip_bad, needs_caption=True)
    kept: list[Row] = []
    for index, record in enumerate(loaded.select_columns(wanted)):
        image = _saved_image_reference(record[image_column], directory)
        shown = describe_image(image) if image is not None else ""
        label = record[label_column] if label_column else None
        row = Row(f"{where} row {index}", image, shown, record[caption_column], label, index)
        if checker.keep(row):
            row.image = None  # drop embedded bytes; images are re-read lazily from the arrow file
            kept.append(row)
    checker.finish(len(kept))
    return ImageCaptionDataset(
        _SavedDatasetImages(loaded, image_column, directory, [row.index for row in kept]),
        [row.caption.strip() for row in kept],
        labels=[row.label for row in kept] if label_column else None,
        classnames=features[label_column].names if label_column else None,
        source=where,
        image_size=image_size,
        locations=[row.location for row in kept],
    )
